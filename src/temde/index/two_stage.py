"""Two-stage retrieval: cosine of the pooled global vectors picks a short list, the full model re-scores it.

The host heads compare globals as Linear((g_i - g_c)^2), not by inner product, but every pool L2-normalises its
output, so cosine = inner product is the natural first stage (FAISS-searchable). The second stage is the model's
own `score` on the short list only: for one query and a short list of K items that is K pairs instead of the
whole gallery.

Evaluation (`two_stage_scores`, `evaluate_two_stage`, `two_stage_evaluate`) builds one score matrix per direction:
text->image re-scores the top-K images of every caption, image->text the top-K captions of every image. Items
outside a short list keep their first-stage order, shifted below every re-ranked score: the ranking a two-stage
system really returns, so R@k, medr and meanr are all meaningful. With K >= the gallery size both matrices equal
the full score matrix.

`Searcher` answers single queries against an index directory built by `build_index` (`temde search`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from temde.data.precomp import PrecompSplit, load_split
from temde.errors import CheckpointError, DataError, TemdeError
from temde.index.store import (IndexDirectory, IndexOptions, VectorIndex, load_index_directory, model_fingerprint,
                               normalize_rows, read_meta, save_index_directory)
from temde.models.encoders import Encoded
from temde.scoring import CAPTION_BLOCK, IMAGE_BLOCK, evaluating


class QueryError(TemdeError, ValueError):
    """A search query that cannot be answered (empty text, unknown image id, k/rerank out of range)."""


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ first stage

def global_similarities(img_global: torch.Tensor, cap_global: torch.Tensor, device: torch.device | str | None = None,
                        block: int = 4096) -> torch.Tensor:
    """Cosine of every (image, caption) pair of globals: `[n_images, n_captions]` float32 on the CPU.

    Rows are re-normalised (pools already L2-normalise; this keeps the first stage a true cosine regardless).
    Computed in caption blocks on `device` so the GPU holds only one block of the result.
    """
    device = torch.device(device) if device is not None else img_global.device
    img = nn.functional.normalize(img_global.float(), dim=-1).to(device)
    cap = nn.functional.normalize(cap_global.float(), dim=-1)
    out = torch.empty(len(img), len(cap), dtype=torch.float32)
    for start in range(0, len(cap), block):
        out[:, start:start + block] = (img @ cap[start:start + block].to(device).T).cpu()
    return out


# ------------------------------------------------------------------ second stage

def rerank_captions_queries(model: nn.Module, img: Encoded, cap: Encoded, shortlists: torch.Tensor,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Model scores of each caption j against its short-listed images `shortlists[j]` -> `[n_cap, K]` (CPU).

    `model.score` is all-pairs, so each caption is scored alone against its K images: batching captions would
    score the cross product of their short lists (up to K x captions-per-batch wasted pairs).
    """
    if shortlists.dim() != 2 or len(shortlists) != len(cap):
        raise ValueError(f"shortlists must be [n_captions={len(cap)}, K], got {tuple(shortlists.shape)}")
    device = _device_of(model, device)
    out = torch.empty(shortlists.shape, dtype=torch.float32)
    with evaluating(model):
        img_on_device = img.to(device)
        shortlists_on_device = shortlists.to(device)
        for j in range(len(cap)):
            query = cap[j:j + 1].trim().to(device)
            out[j] = model.score(img_on_device[shortlists_on_device[j]], query)[:, 0].float().cpu()
    return out


def rerank_images_queries(model: nn.Module, img: Encoded, cap: Encoded, shortlists: torch.Tensor,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Model scores of each image i against its short-listed captions `shortlists[i]` -> `[n_img, K]` (CPU)."""
    if shortlists.dim() != 2 or len(shortlists) != len(img):
        raise ValueError(f"shortlists must be [n_images={len(img)}, K], got {tuple(shortlists.shape)}")
    device = _device_of(model, device)
    out = torch.empty(shortlists.shape, dtype=torch.float32)
    with evaluating(model):
        cap_on_device = cap.to(device)
        shortlists_on_device = shortlists.to(device)
        for i in range(len(img)):
            candidates = cap_on_device[shortlists_on_device[i]].trim()
            out[i] = model.score(img[i:i + 1].to(device), candidates)[0].float().cpu()
    return out


# ------------------------------------------------------------------ evaluation

@dataclass
class TwoStageScores:
    """Per-direction score matrices `[n_images, n_captions]` and what produced them."""

    i2t: np.ndarray  # image->text: each row re-ranks its top-K captions
    t2i: np.ndarray  # text->image: each column re-ranks its top-K images
    i2t_shortlists: torch.Tensor  # [n_images, K_i2t] caption indices
    t2i_shortlists: torch.Tensor  # [n_captions, K_t2i] image indices
    first_stage_seconds: float
    rerank_seconds: float

    @property
    def seconds(self) -> float:
        return self.first_stage_seconds + self.rerank_seconds


def _place(first_stage: torch.Tensor, reranked: torch.Tensor, index: torch.Tensor, dim: int) -> np.ndarray:
    """First-stage scores (consumed) shifted below every re-ranked score, then the re-ranked scores scattered in.

    Under the evaluation's pessimistic ties (a true item ranks after every negative scored >= it): an outside item
    is strictly below the whole short list, so it never counts against a short-listed true item, and an outside
    true item has all K short-listed items above it: never credited inside the list. A -inf re-ranked score makes
    the shift -inf: every outside item becomes -inf, tied with it, and the ties still put an outside true item
    after the whole list. The float32 shift can merge first-stage scores closer than its rounding into ties; those
    are among outside items only, so they can cost an outside true item a place, never credit one.
    """
    shift = float(reranked.min()) - 1.0 - float(first_stage.max()) if reranked.numel() else 0.0
    matrix = first_stage.add_(shift)  # in place; every value <= min(reranked) - 1: outside items rank last
    matrix.scatter_(dim, index, reranked)
    return matrix.numpy()


def two_stage_scores(model: nn.Module, img: Encoded, cap: Encoded, rerank: int,
                     device: torch.device | str | None = None) -> TwoStageScores:
    """Both directions' two-stage score matrices for encoded images and captions (see the module docstring)."""
    if not isinstance(rerank, int) or rerank < 1:
        raise ValueError(f"rerank must be a positive integer, got {rerank!r}")
    device = _device_of(model, device)
    n_img, n_cap = len(img), len(cap)
    _sync(device)
    start = time.perf_counter()
    cosine = global_similarities(img.global_, cap.global_, device)
    t2i_lists = cosine.topk(min(rerank, n_img), dim=0).indices.T.contiguous()  # [n_cap, K]
    i2t_lists = cosine.topk(min(rerank, n_cap), dim=1).indices  # [n_img, K]
    first_stage = time.perf_counter() - start
    start = time.perf_counter()
    t2i_scores = rerank_captions_queries(model, img, cap, t2i_lists, device)
    i2t_scores = rerank_images_queries(model, img, cap, i2t_lists, device)
    _sync(device)
    rerank_time = time.perf_counter() - start
    t2i = _place(cosine.clone(), t2i_scores.T.contiguous(), t2i_lists.T.contiguous(), dim=0)
    i2t = _place(cosine, i2t_scores, i2t_lists, dim=1)
    return TwoStageScores(i2t, t2i, i2t_lists, t2i_lists, first_stage, rerank_time)


def shortlist_recall(scores: TwoStageScores, captions_per_image: int | np.ndarray) -> dict[str, float]:
    """Percent of queries whose true item made the short list (the ceiling two-stage recall can reach).

    Membership of the list that was re-ranked: no scores are compared, so there are no ties to rank (cosine ties at
    the K-th place were settled by `topk`, as the re-ranking saw them)."""
    n_cap = len(scores.t2i_shortlists)
    from temde.evaluation import caption_images

    owner = torch.from_numpy(caption_images(captions_per_image, len(scores.i2t_shortlists), n_cap))
    true_image = owner
    t2i_hit = (scores.t2i_shortlists == true_image[:, None]).any(1)
    i2t_hit = (owner[scores.i2t_shortlists] == torch.arange(len(scores.i2t_shortlists))[:, None]).any(1)
    return {"i2t_shortlist_recall": 100.0 * float(i2t_hit.float().mean()),
            "t2i_shortlist_recall": 100.0 * float(t2i_hit.float().mean())}


def evaluate_two_stage(scores: TwoStageScores, captions_per_image: int | np.ndarray = 5) -> dict[str, float]:
    """Metrics with the keys of `evaluation.evaluate`: image->text from the i2t matrix, text->image from t2i."""
    from temde.evaluation import METRIC_KEYS, RECALL_KS, evaluate

    i2t = evaluate(scores.i2t, captions_per_image)
    t2i = evaluate(scores.t2i, captions_per_image)
    metrics = {key: (i2t if key.startswith("i2t") else t2i)[key] for key in METRIC_KEYS if key != "rsum"}
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return {key: metrics[key] for key in METRIC_KEYS}


def _evaluate_encoded(model: nn.Module, img: Encoded, cap: Encoded, k: int, rerank: int, device: torch.device,
                      compare_full: bool, image_block: int, caption_block: int) -> dict[str, Any]:
    from temde.evaluation import evaluate
    from temde.scoring import score_matrix

    scores = two_stage_scores(model, img, cap, rerank, device)
    result: dict[str, Any] = evaluate_two_stage(scores, k)
    result.update(first_stage_seconds=scores.first_stage_seconds, rerank_seconds=scores.rerank_seconds,
                  two_stage_seconds=scores.seconds, **shortlist_recall(scores, k))
    if compare_full:
        del scores  # two dense matrices less while the full one is built
        _sync(device)
        start = time.perf_counter()
        full = score_matrix(model, img, cap, image_block, caption_block, device)
        _sync(device)
        result["full_seconds"] = time.perf_counter() - start
        result["full"] = evaluate(full, k)
    return result


def two_stage_evaluate(model: nn.Module, split: PrecompSplit, vocab, rerank: int,
                       device: torch.device | str | None = None, batch_size: int = 128, compare_full: bool = True,
                       folds: int | None = None, image_block: int = IMAGE_BLOCK,
                       caption_block: int = CAPTION_BLOCK) -> dict[str, Any]:
    """Evaluate `split` with two-stage retrieval (short lists of `rerank`) and, with `compare_full`, time the full
    score matrix on the same encodings. `folds` (COCO 1K: 5): evaluate each block of consecutive images alone and
    average the metrics, as `evaluation.evaluate_folds` does; times are summed over the folds.

    Returns the keys of `evaluation.evaluate` (two-stage metrics) plus: rerank, n_images, n_captions,
    encode_seconds, first_stage_seconds, rerank_seconds, two_stage_seconds, i2t/t2i_shortlist_recall (percent of
    queries whose true item is in the short list), and with `compare_full` also full_seconds, speedup
    (full / two-stage, encoding excluded from both) and full (the full-scoring metrics); with `folds`, "folds"
    holds the per-fold dicts.
    """
    from temde.evaluation import METRIC_KEYS
    from temde.scoring import encode_split

    if not isinstance(rerank, int) or rerank < 1:
        raise ValueError(f"rerank must be a positive integer, got {rerank!r}")
    device = _device_of(model, device)
    k = split.captions_per_image
    n_folds = folds or 1
    if n_folds < 1 or split.n_images % n_folds:
        raise ValueError(f"folds: {split.n_images} images do not split into {folds} equal folds")
    if split.caption_images is not None:  # 1..n captions per image: one fold, the caption->image index as layout
        if n_folds > 1:
            raise ValueError("folds: two-stage evaluation in folds needs k captions per image (no cap2img index)")
        k = split.caption_images
    start = time.perf_counter()
    img, cap = encode_split(model, split, vocab, batch_size, device)
    encode_seconds = time.perf_counter() - start
    size = split.n_images // n_folds
    per_fold = [_evaluate_encoded(model, img[f * size:(f + 1) * size], cap if n_folds == 1 else
                                  cap[f * size * k:(f + 1) * size * k], k,
                                  rerank, device, compare_full, image_block, caption_block) for f in range(n_folds)]
    averaged = [*METRIC_KEYS, "i2t_shortlist_recall", "t2i_shortlist_recall"]
    result: dict[str, Any] = {key: float(np.mean([r[key] for r in per_fold])) for key in averaged}
    for key in ("first_stage_seconds", "rerank_seconds", "two_stage_seconds"):
        result[key] = sum(r[key] for r in per_fold)
    result.update(rerank=rerank, n_images=len(img), n_captions=len(cap), encode_seconds=encode_seconds)
    if compare_full:
        result["full_seconds"] = sum(r["full_seconds"] for r in per_fold)
        result["speedup"] = result["full_seconds"] / max(result["two_stage_seconds"], 1e-12)
        result["full"] = {key: float(np.mean([r["full"][key] for r in per_fold])) for key in METRIC_KEYS}
    if folds:
        result["folds"] = per_fold
    return result


# ------------------------------------------------------------------ building an index

def _encode_image_rows(model: nn.Module, images: np.ndarray, rows: np.ndarray, batch_size: int,
                       device: torch.device) -> Encoded:
    """Encode images `rows` of a (memory-mapped) feature array; rows are read in sorted order, output in `rows`
    order."""
    from temde.scoring import encode_images

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    encoded = encode_images(model, np.asarray(images[rows[order]]), batch_size, device)
    inverse = torch.as_tensor(np.argsort(order, kind="stable"))
    return encoded[inverse]


def _encode_caption_texts(model: nn.Module, texts: list[str], vocab, batch_size: int,
                          device: torch.device) -> Encoded:
    from temde.data.batches import encode_captions as tokenize_captions
    from temde.scoring import encode_captions

    tokens, lengths = tokenize_captions(texts, vocab)
    return encode_captions(model, tokens, lengths, batch_size, device)


def encode_globals(model: nn.Module, split: PrecompSplit, vocab, batch_size: int = 128,
                   device: torch.device | str | None = None, captions: bool = True,
                   chunk_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-norm global vectors of every image (and caption) of a split, float32 numpy. Reads ~`chunk_bytes` of
    features at a time and keeps only the globals, so memory stays ~ n x dim (a split's locals can be GBs)."""
    device = _device_of(model, device)
    images = split.images if split.images is not None else split.open_images()
    chunk = max(batch_size, chunk_bytes // max(1, int(np.prod(images.shape[1:])) * 4))
    image_parts = [_encode_image_rows(model, images, np.arange(s, min(s + chunk, len(images))), batch_size,
                                      device).global_ for s in range(0, len(images), chunk)]
    img = normalize_rows(torch.cat(image_parts).float().numpy())
    if not captions:
        return img, None
    caption_parts = [_encode_caption_texts(model, split.captions[s:s + 8192], vocab, batch_size, device).global_
                     for s in range(0, split.n_captions, 8192)]
    return img, normalize_rows(torch.cat(caption_parts).float().numpy())


def build_index(checkpoint_path: str | os.PathLike, data_dir: str | os.PathLike, split_name: str,
                out: str | os.PathLike, options: IndexOptions | None = None, device: str | None = None,
                batch_size: int = 128, captions: bool = True, force: bool = False, log=print) -> IndexDirectory:
    """`temde index build`: encode a split with a checkpoint's model and write an index directory.

    `out` follows the output-folder policy (temde.outputs): a folder holding something else is refused, an index
    built there with another model, data or options needs `force`, the same request rebuilds it."""
    from temde.outputs import claim_folder
    from temde.training.checkpoint import load_checkpoint, restore_model, restore_vocab

    options = options or IndexOptions()
    checkpoint = load_checkpoint(checkpoint_path)
    fingerprint = model_fingerprint(checkpoint)
    request = {"checkpoint": str(Path(checkpoint_path).resolve()), "model_sha256": fingerprint,
               "data": str(Path(data_dir).resolve()), "split": split_name, "captions": captions,
               **options.to_dict()}
    claim = claim_folder(out, "index build", request, force=force, legacy=_older_index,
                         names={"model_sha256": "the checkpoint's weights", "captions": "--no-captions"})
    if claim.state == "same":
        log(f"{out}: built before from the same request; rebuilding it")
    model = restore_model(checkpoint, device or "cpu")
    vocab = restore_vocab(checkpoint)
    split = load_split(data_dir, split_name)
    start = time.perf_counter()
    img, cap = encode_globals(model, split, vocab, batch_size, device or "cpu", captions)
    log(f"encoded {split.n_images} images" + (f" and {split.n_captions} captions" if captions else "")
        + f" in {time.perf_counter() - start:.1f}s (global dim {img.shape[1]})")
    start = time.perf_counter()
    parts = {"images": VectorIndex.build(img, options=options)}
    if cap is not None:
        parts["captions"] = VectorIndex.build(cap, options=options)
    log(f"built {options.kind} index in {time.perf_counter() - start:.1f}s")
    meta = {
        "checkpoint": str(Path(checkpoint_path).resolve()), "model_sha256": fingerprint,
        "model_config": checkpoint["config"], "data_dir": str(Path(data_dir).resolve()), "split": split_name,
        "counts": {"images": split.n_images, "captions": split.n_captions},
        "captions_per_image": split.captions_per_image, "image_shape": list(split.images.shape[1:]),
        "kind": options.kind, "similarity": "cosine of L2-normalised global vectors",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_index_directory(out, parts, meta)
    return IndexDirectory(Path(out), read_meta(out), parts)


def _older_index(folder: Path) -> dict | None:
    """An index directory written before output records existed: recognised by its meta.json; what it was built
    with is not compared (temde.outputs), so replacing it needs --force."""
    return {} if (folder / "meta.json").is_file() else None


# ------------------------------------------------------------------ single queries

@dataclass
class Hit:
    """One search result: `item` is an image id (text query) or a caption id (image query) of the split."""

    rank: int
    item: int
    score: float  # the model's score when re-ranked, else the cosine
    cosine: float  # first-stage score
    reranked: bool


def unknown_words(text: str, vocab) -> list[str]:
    return [word for word in vocab.tokenize(text) if word not in vocab]  # split as the query will be encoded


class Searcher:
    """Answers text->image and image->text queries from an index directory, optionally re-ranking with the model.

    The model must be the one that built the index (checked by fingerprint). Re-ranking and image queries read the
    split's features from the data folder recorded in the index (or `data_dir`), which must still match it.
    """

    def __init__(self, index: IndexDirectory, model: nn.Module, vocab, device: torch.device | str,
                 data_dir: str | os.PathLike | None = None, batch_size: int = 128):
        self.index = index
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.data_dir = Path(data_dir) if data_dir is not None else Path(index.meta["data_dir"])
        self.batch_size = batch_size
        self._split: PrecompSplit | None = None

    @classmethod
    def open(cls, index_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             data_dir: str | os.PathLike | None = None, device: str | None = None, verify: bool = True) -> "Searcher":
        from temde.training.checkpoint import load_checkpoint, restore_model, restore_vocab

        index = load_index_directory(index_path, verify=verify)
        if checkpoint is None:
            checkpoint = index.meta.get("checkpoint")
            if not checkpoint or not Path(checkpoint).is_file():
                raise CheckpointError(f"{checkpoint}: the checkpoint recorded in {index.path / 'meta.json'} is gone; "
                                      f"pass the model's checkpoint explicitly")
        payload = load_checkpoint(checkpoint)
        index.check_model(model_fingerprint(payload), checkpoint)
        device = device or "cpu"
        return cls(index, restore_model(payload, device), restore_vocab(payload), device, data_dir)

    @property
    def split(self) -> PrecompSplit:
        """The indexed split, read on first use; it must still have the indexed counts."""
        if self._split is None:
            name, counts = self.index.meta["split"], self.index.meta["counts"]
            split = load_split(self.data_dir, name, validate=False)
            if (split.n_images, split.n_captions) != (counts["images"], counts["captions"]):
                raise DataError(f"{split.image_path}: split {name!r} now has {split.n_images} images and "
                                f"{split.n_captions} captions, the index was built on {counts['images']} and "
                                f"{counts['captions']}; rebuild the index")
            self._split = split
        return self._split

    def _part(self, name: str) -> VectorIndex:
        if name not in self.index.parts:
            raise QueryError(f"{self.index.path}: this index holds no {name} (built without them)")
        return self.index.parts[name]

    def _check_same_features(self, encoded: torch.Tensor, ids: np.ndarray) -> None:
        """The re-encoded images must be the indexed ones: a changed data folder would re-rank other images."""
        if "images" not in self.index.parts:
            return
        stored = torch.as_tensor(self.index.images.vectors_by_id(ids))
        cosine = (nn.functional.normalize(encoded.float(), dim=-1) * stored).sum(-1)
        if bool((cosine < 0.99).any()):
            raise DataError(f"{self.split.image_path}: features of image {int(ids[int(cosine.argmin())])} differ "
                            f"from those the index was built from; rebuild the index")

    def encode_images(self, ids: np.ndarray) -> Encoded:
        encoded = _encode_image_rows(self.model, self.split.images, ids, self.batch_size, self.device)
        self._check_same_features(encoded.global_, ids)
        return encoded

    def encode_text(self, text: str) -> Encoded:
        if not isinstance(text, str) or not self.vocab.tokenize(text):
            raise QueryError(f"empty query {text!r}: give at least one word")
        return _encode_caption_texts(self.model, [text], self.vocab, 1, self.device)

    @staticmethod
    def _check_sizes(k: int, rerank: int) -> None:
        if k < 1:
            raise QueryError(f"-k must be >= 1, got {k}")
        if rerank < 0 or (rerank and rerank < k):
            raise QueryError(f"--rerank must be 0 (no re-ranking) or >= k={k}, got {rerank}")

    def _hits(self, cosine: np.ndarray, ids: np.ndarray, model_scores: torch.Tensor | None, k: int) -> list[Hit]:
        keep = ids >= 0
        cosine, ids = cosine[keep], ids[keep]
        if model_scores is None:
            return [Hit(r + 1, int(i), float(c), float(c), False) for r, (i, c) in enumerate(zip(ids[:k], cosine))]
        scores = model_scores.numpy()[keep]
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(r + 1, int(ids[o]), float(scores[o]), float(cosine[o]), True) for r, o in enumerate(order)]

    def search_text(self, text: str, k: int = 10, rerank: int = 0) -> list[Hit]:
        """Top images for a caption: cosine short list of max(k, rerank), re-scored by the model if `rerank`."""
        self._check_sizes(k, rerank)
        images = self._part("images")
        query = self.encode_text(text)
        cosine, ids = images.search(query.global_.float().numpy(), max(k, rerank))
        cosine, ids = cosine[0], ids[0]
        model_scores = None
        if rerank:
            found = ids[ids >= 0]
            with evaluating(self.model):
                scored = self.model.score(self.encode_images(found).to(self.device), query.to(self.device))
            model_scores = torch.full((len(ids),), -np.inf)
            model_scores[torch.as_tensor(ids >= 0)] = scored[:, 0].float().cpu()
        return self._hits(cosine, ids, model_scores, k)

    def search_image(self, image_id: int, k: int = 10, rerank: int = 0) -> list[Hit]:
        """Top captions for image `image_id` of the indexed split."""
        self._check_sizes(k, rerank)
        captions = self._part("captions")
        n_images = self.index.meta["counts"]["images"]
        if not 0 <= image_id < n_images:
            raise QueryError(f"--image must be an image id in [0, {n_images}), got {image_id}")
        query = self.encode_images(np.array([image_id]))
        cosine, ids = captions.search(query.global_.float().numpy(), max(k, rerank))
        cosine, ids = cosine[0], ids[0]
        model_scores = None
        if rerank:
            found = ids[ids >= 0]
            texts = [self.split.captions[i] for i in found]
            candidates = _encode_caption_texts(self.model, texts, self.vocab, self.batch_size, self.device)
            with evaluating(self.model):
                scored = self.model.score(query.to(self.device), candidates.to(self.device))
            model_scores = torch.full((len(ids),), -np.inf)
            model_scores[torch.as_tensor(ids >= 0)] = scored[0].float().cpu()
        return self._hits(cosine, ids, model_scores, k)
