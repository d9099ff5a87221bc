"""Score matrices for evaluation and re-ranking: encode each modality once, then score every (image, caption)
pair in memory-bounded blocks with the model's batched `score`.

`loop_score_matrix` is the *reference*: the same math written the way SGRAF's code runs it (one caption at a
time, its padding sliced off, its global recomputed alone). Tests and benchmarks compare against it; evaluation
never uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from temde.models.encoders import Encoded
from temde.models.heads import SAFHead, SGRHead
from temde.models.retrieval import RetrievalModel

# Default score blocks: 64 images x 32 captions. A block materialises [images, captions, words, embed] tensors;
# ~2k pairs keep them in a CPU's cache. The demo's dev evaluation of saf-small (500 x 500 pairs, 2 CPU threads)
# took 3.7 s per epoch with these blocks against 8.8 s with 64 x 128 (docs/benchmarks.md). On a GPU larger
# blocks are faster: pass them.
IMAGE_BLOCK = 64
CAPTION_BLOCK = 32


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """eval mode and no autograd for the duration, then the model's previous mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def encode_images(model: RetrievalModel, images: np.ndarray | torch.Tensor, batch_size: int = 128,
                  device: torch.device | str | None = None, image_mask: torch.Tensor | None = None) -> Encoded:
    """Region features `[N, R, img_dim]` (a memory map is read one batch at a time) -> Encoded, on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, device)
    dtype = model.image_encoder.fc.weight.dtype  # float32 features feed a float64 model too (tests)
    parts = []
    with evaluating(model):
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            chunk = torch.as_tensor(np.array(chunk, dtype=np.float32) if isinstance(chunk, np.ndarray) else chunk)
            mask = None if image_mask is None else image_mask[start:start + batch_size].to(device)
            parts.append(model.encode_images(chunk.to(device, dtype), mask).to("cpu"))
    return Encoded.cat(parts)


def encode_captions(model: RetrievalModel, tokens: torch.Tensor, lengths: torch.Tensor, batch_size: int = 128,
                    device: torch.device | str | None = None) -> Encoded:
    """Token ids `[N, T]` + lengths `[N]` -> Encoded, on the CPU (token axis padded to the longest caption)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, device)
    lengths = torch.as_tensor(lengths)
    parts = []
    with evaluating(model):
        for start in range(0, len(tokens), batch_size):
            batch_lengths = lengths[start:start + batch_size]
            batch_tokens = tokens[start:start + batch_size, :int(batch_lengths.max())]
            parts.append(model.encode_captions(batch_tokens.to(device), batch_lengths.to(device)).to("cpu"))
    return Encoded.cat(parts)


def encode_split(model: RetrievalModel, split, vocab, batch_size: int = 128,
                 device: torch.device | str | None = None) -> tuple[Encoded, Encoded]:
    """Encode every image and caption of a PrecompSplit with `vocab`: (images, captions), on the CPU."""
    from temde.data.batches import encode_captions as tokenize_captions

    tokens, lengths = tokenize_captions(split.captions, vocab)
    images = split.images if split.images is not None else split.open_images()
    return (encode_images(model, images, batch_size, device),
            encode_captions(model, tokens, lengths, batch_size, device))


def score_matrix(model: RetrievalModel, img: Encoded, cap: Encoded, image_block: int = IMAGE_BLOCK,
                 caption_block: int = CAPTION_BLOCK, device: torch.device | str | None = None,
                 dtype: np.dtype | type = np.float32) -> np.ndarray:
    """All scores `[n_images, n_captions]` (float32 unless `dtype` says), computed block by block.

    The encoded images go to `device` once; captions go block by block, grouped by length so each block is
    trimmed to its own longest caption. Peak memory of a block ~ image_block * caption_block * words * embed * 4
    bytes times a few intermediates. Blocks change speed and memory, never the scores.
    """
    if image_block < 1 or caption_block < 1:
        raise ValueError(f"image_block and caption_block must be >= 1, got {image_block}, {caption_block}")
    device = _model_device(model, device)
    scores = np.empty((len(img), len(cap)), dtype=dtype)
    order = torch.argsort(cap.mask.sum(1).cpu(), stable=True)
    with evaluating(model):
        img_on_device = img.to(device)
        for c_start in range(0, len(cap), caption_block):
            columns = order[c_start:c_start + caption_block]
            cap_block = cap[columns.to(cap.mask.device)].trim().to(device)
            for i_start in range(0, len(img), image_block):
                block = model.score(img_on_device[i_start:i_start + image_block], cap_block)
                scores[i_start:i_start + image_block, columns.numpy()] = block.double().cpu().numpy()
    return scores


# ---- reference implementation (SGRAF's per-caption loop); not used for evaluation -----------------------------

def _sgraf_l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def _sgraf_scan_attention(query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                          smooth: float) -> torch.Tensor:
    """SGRAF's SCAN_attention for one caption repeated over the images: query [I, n, d], context [I, R, d]."""
    attn = torch.bmm(context, query.transpose(1, 2))  # [I, R, n]
    attn = nn.functional.leaky_relu(attn, 0.1)
    attn = _sgraf_l2norm(attn, dim=2)
    attn = (attn * smooth).transpose(1, 2)  # [I, n, R]
    attn = attn.masked_fill(~context_mask.unsqueeze(1), float("-inf"))  # SGRAF has no padded regions
    attn = torch.softmax(attn, dim=2)
    return _sgraf_l2norm(torch.bmm(attn, context), dim=-1)


def _sgraf_sgr(head: SGRHead, sim_emb: torch.Tensor) -> torch.Tensor:
    for step in head.steps:
        edges = torch.softmax(torch.bmm(step.query(sim_emb), step.key(sim_emb).permute(0, 2, 1)), dim=-1)
        sim_emb = torch.relu(step.update(torch.bmm(edges, sim_emb)))
    return sim_emb[:, 0, :]


def _sgraf_saf(head: SAFHead, sim_emb: torch.Tensor) -> torch.Tensor:
    gates = torch.sigmoid(head.bn(head.gate(sim_emb).permute(0, 2, 1)))  # [I, 1, n+1]
    gates = gates / (gates.abs().sum(dim=-1, keepdim=True) + 1e-8)
    return _sgraf_l2norm(torch.matmul(gates, sim_emb).squeeze(1), dim=-1)


def loop_score_matrix(model: RetrievalModel, img: Encoded, cap: Encoded,
                      device: torch.device | str | None = None, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """REFERENCE ONLY: the score matrix computed as SGRAF does, one caption at a time in a Python loop.

    Each caption is sliced to its real words, its global vector is pooled from those words alone, and SCAN,
    the similarity nodes and the head run on `[n_images, n_words (+1), ...]` without any mask (and the optional
    global cosine term is a per-image dot product). Same weights, independent code path: `score_matrix` must
    agree with it.
    """
    device = _model_device(model, device)
    caption_pool = model.pools[1]
    sim, head = model.similarity, model.head
    columns = []
    with evaluating(model):
        img = img.to(device)
        n_img = len(img)
        for i in range(len(cap)):
            n_words = int(cap.mask[i].sum())
            words = cap.local[i:i + 1, :n_words].to(device)
            words_expand = words.repeat(n_img, 1, 1)
            cap_global = caption_pool(words, torch.ones(1, n_words, dtype=torch.bool, device=device))
            context = _sgraf_scan_attention(words_expand, img.local, img.mask, sim.lambda_softmax)
            sim_loc = _sgraf_l2norm(sim.local_w(torch.pow(context - words_expand, 2)))
            sim_glo = _sgraf_l2norm(sim.global_w(torch.pow(img.global_ - cap_global, 2)))
            sim_emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
            vec = _sgraf_sgr(head, sim_emb) if isinstance(head, SGRHead) else _sgraf_saf(head, sim_emb)
            column = torch.sigmoid(head.out(vec))
            if model.config.global_score:  # cosine of each image's global with this caption's, one at a time
                cosine = torch.stack([torch.dot(_sgraf_l2norm(g), _sgraf_l2norm(cap_global[0])) for g in img.global_])
                column = column + model.config.global_score * cosine.unsqueeze(1)
            columns.append(column)
    return torch.cat(columns, 1).double().cpu().numpy().astype(dtype)
