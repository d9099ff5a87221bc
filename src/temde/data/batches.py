"""Padded batches with masks: one item per caption, paired with its image.

SGRAF's loader sorted each batch by caption length for packed GRUs and never used its worker processes; here
batches keep their order (image_ids/caption_ids say who is who), masks carry the padding, and
`make_loader` honours num_workers and a seed.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from temde.data.precomp import PrecompSplit
from temde.data.vocab import PAD, Vocabulary


@dataclass
class Batch:
    images: torch.Tensor       # [B, R, D] float32, zero where image_mask is False
    image_mask: torch.Tensor   # [B, R] bool, True = real region
    tokens: torch.Tensor       # [B, T] long, <start> ... <end> then PAD (0)
    token_mask: torch.Tensor   # [B, T] bool, True = real token (<start>/<end> included)
    lengths: torch.Tensor      # [B] long, token count including <start>/<end>
    image_ids: torch.Tensor    # [B] long, index of the image in its split
    caption_ids: torch.Tensor  # [B] long, index of the caption in its split

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this on custom batch types.
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return len(self.caption_ids)


def pad_sequences(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (tokens [N, T] long padded with PAD, lengths [N] long), T = longest length."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max()) if len(sequences) else 0
    tokens = torch.full((len(sequences), width), PAD, dtype=torch.long)
    mask = torch.arange(width) < lengths[:, None]
    # One scatter for the whole batch: row-major order of mask matches the concatenated sequences.
    tokens[mask] = torch.tensor(list(itertools.chain.from_iterable(sequences)), dtype=torch.long)
    return tokens, lengths


def encode_captions(captions: Sequence[str], vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions (e.g. of a split, for evaluation) -> (tokens [N, T] long, lengths [N] long)."""
    return pad_sequences([vocab.encode(c) for c in captions])


class CaptionDataset(Dataset):
    """Item j = (image [R, D] float32, token ids, image id, caption id) for caption j of `split`.

    The memory map is not pickled into worker processes (that would copy the whole array under the spawn or
    forkserver start methods); each worker reopens the file instead.
    """

    def __init__(self, split: PrecompSplit, vocab: Vocabulary):
        self.split = split
        self.vocab = vocab
        self._images: np.ndarray | None = split.images
        self._image_ids = split.image_ids()

    def __len__(self) -> int:
        return self.split.n_captions

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.split.image_path is not None:
            state["_images"] = None
            state["split"] = dataclasses.replace(self.split, images=None)  # reopened by open_images()
        return state

    def __getitem__(self, index: int) -> tuple[np.ndarray, list[int], int, int]:
        if self._images is None:  # first item in a worker process
            self._images = self.split.open_images()
            self.split = dataclasses.replace(self.split, images=self._images)
        image_id = int(self._image_ids[index])
        image = np.array(self._images[image_id], dtype=np.float32)  # copy out of the memory map
        return image, self.vocab.encode(self.split.captions[index]), image_id, index


def collate(items: Sequence[tuple[np.ndarray, Sequence[int], int, int]]) -> Batch:
    """Stack items into a Batch. Images may differ in region count: shorter ones are zero-padded and masked."""
    images, token_ids, image_ids, caption_ids = zip(*items)
    regions = torch.tensor([len(im) for im in images], dtype=torch.long)
    width = int(regions.max())
    if bool((regions == width).all()):  # the precomp case: one stack, no padding
        image_tensor = torch.from_numpy(np.stack(images))
    else:
        image_tensor = torch.zeros(len(images), width, images[0].shape[-1], dtype=torch.float32)
        for row, image in enumerate(images):
            image_tensor[row, :len(image)] = torch.from_numpy(np.asarray(image))
    tokens, lengths = pad_sequences(token_ids)
    return Batch(
        images=image_tensor.float(),
        image_mask=torch.arange(width) < regions[:, None],
        tokens=tokens,
        token_mask=torch.arange(tokens.shape[1]) < lengths[:, None],
        lengths=lengths,
        image_ids=torch.tensor(image_ids, dtype=torch.long),
        caption_ids=torch.tensor(caption_ids, dtype=torch.long),
    )


def make_loader(split: PrecompSplit, vocab: Vocabulary, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False, sampler: Sampler | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader of Batches over the captions of `split`.

    The shuffled order comes from a torch.Generator seeded with `seed`: the same seed gives the same sequence
    of epochs. With a `sampler` (e.g. DistributedSampler) the order is the sampler's and `shuffle` is ignored.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    dataset = CaptionDataset(split, vocab)
    if sampler is None:
        # The order has its own generator: DataLoader also draws worker seeds from its generator, so sharing one
        # would make the second epoch's order depend on num_workers.
        sampler = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
                   else SequentialSampler(dataset))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
