"""Retrieval metrics on a score matrix: R@1/5/10, median and mean rank in both directions, rsum.

`sims[i, j]` is the score of image `i` against caption `j`. Which image a caption belongs to is given by the
*caption layout*, the second argument of every function here: an integer k (caption `j` belongs to image
`j // k`: k consecutive captions per image, the SCAN precomp layout of Flickr30K / COCO), or an int array
`[n_captions]` naming each caption's image (`{split}_cap2img.npy`: 1..n captions per image).

Ranks are 1-based in medr/meanr (the rank functions return them 0-based). Ties are ranked pessimistically:
the 0-based rank of a true item is the number of negatives scored >= it, so a true item tied with negatives is
placed after all of them. Image->text ranks an image by its best true caption, and only negative captions count:
the image's other true captions never push it down, tied with it or not. Text->image counts the other images
scored >= the one true image. Why pessimistic: a collapsed model (every score equal) or scores rounded to low
precision must not look good; counting only strictly greater scores gave a constant matrix rsum 600. SGRAF's
evaluation.py ranks by position in `np.argsort(...)[::-1]`, which breaks ties by the sort's order of equal
elements (on a constant row numpy returns index order, so the highest index comes first): the credit a tie gets
depends on where the true item happens to sit. On real-valued scores without ties the metrics equal SGRAF's
evaluation.py exactly. The median rank follows the VSE++ family: floor(median of 0-based ranks) + 1.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

RECALL_KS = (1, 5, 10)
METRIC_KEYS = tuple(
    f"{direction}_{name}"
    for direction in ("i2t", "t2i")
    for name in ("r1", "r5", "r10", "medr", "meanr")
) + ("rsum",)

# Bound the temporary boolean matrices of the rank computation to about this many cells.
_CHUNK_CELLS = 1 << 24


def _as_matrix(sims: Any) -> np.ndarray:
    if hasattr(sims, "detach"):  # a torch tensor, on any device
        import torch  # already loaded: a tensor was passed

        sims = sims.detach().cpu()
        # Only the half types, which numpy lacks (bfloat16), are up-cast (exactly). Rounding float64 down to
        # float32 could merge distinct scores into ties, and ties count against the true item.
        if sims.dtype in (torch.float16, torch.bfloat16):
            sims = sims.float()
        sims = sims.numpy()
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise ValueError(f"sims: expected a 2-D matrix [n_images, n_captions], got shape {sims.shape}")
    if not np.issubdtype(sims.dtype, np.floating) and not np.issubdtype(sims.dtype, np.integer):
        raise ValueError(f"sims: expected a numeric matrix, got dtype {sims.dtype}")
    return sims


Layout = "int | np.ndarray"  # k captions per image, or the image of every caption


def caption_images(layout: Any, n_images: int, n_captions: int | None = None) -> np.ndarray:
    """The image of every caption, int64 `[n_captions]`, from a caption layout; checked against the counts."""
    if isinstance(layout, (int, np.integer)) and not isinstance(layout, bool):
        if layout < 1:
            raise ValueError(f"captions_per_image: expected a positive integer, got {layout!r}")
        if n_captions is not None and n_captions != n_images * layout:
            raise ValueError(f"sims: {n_captions} captions do not match captions_per_image={layout} "
                             f"(expected {n_images * layout} columns for {n_images} images)")
        return np.arange(n_images * layout, dtype=np.int64) // layout
    index = np.asarray(layout)
    if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) and index.dtype != bool):
        raise ValueError(f"caption layout: expected an integer k or a 1-D integer array, got {layout!r:.60}")
    if n_captions is not None and len(index) != n_captions:
        raise ValueError(f"caption layout: {len(index)} caption->image entries for {n_captions} captions")
    if len(index) and (index.min() < 0 or index.max() >= n_images):
        raise ValueError(f"caption layout: image ids must be in [0, {n_images}), got {index.min()}..{index.max()}")
    if len(np.unique(index)) != n_images:
        missing = int(np.setdiff1d(np.arange(n_images), index)[0])
        raise ValueError(f"caption layout: image {missing} has no caption")
    return index.astype(np.int64, copy=False)


def _check_layout(sims: np.ndarray, layout: Any) -> np.ndarray:
    n_images, n_captions = sims.shape
    if n_images == 0:
        raise ValueError("sims: the matrix has no images (0 rows)")
    return caption_images(layout, n_images, n_captions)


def _finite_block(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block)  # comparisons are exact in the input dtype: no up-cast needed
    if np.isnan(block).any():  # NaN compares false both ways: a NaN true score would silently rank first
        raise ValueError("sims: the matrix contains NaN scores")
    return block


def image_to_text_ranks(sims: Any, captions_per_image: Layout = 5) -> np.ndarray:
    """0-based rank of each image's best true caption: the number of negative captions scored >= it (pessimistic
    ties), shape [n_images]."""
    sims = _as_matrix(sims)
    owner = _check_layout(sims, captions_per_image)
    n_images, n_captions = sims.shape
    ranks = np.empty(n_images, dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_CELLS // n_captions)
    for start in range(0, n_images, rows_per_chunk):
        block = _finite_block(sims[start:start + rows_per_chunk])
        rows = start + np.arange(block.shape[0])
        own = owner[None, :] == rows[:, None]  # [rows, n_captions]: the image's true captions
        best = np.where(own, block, -np.inf).max(axis=1)
        # Negative captions scored >= the best true caption: the image's own captions never count against it,
        # tied or not.
        ranks[rows] = ((block >= best[:, None]) & ~own).sum(axis=1)
    return ranks


def text_to_image_ranks(sims: Any, captions_per_image: Layout = 5) -> np.ndarray:
    """0-based rank of each caption's true image: the number of other images scored >= it (pessimistic ties),
    shape [n_captions]."""
    sims = _as_matrix(sims)
    owner = _check_layout(sims, captions_per_image)
    n_images, n_captions = sims.shape
    ranks = np.empty(n_captions, dtype=np.int64)
    cols_per_chunk = max(1, _CHUNK_CELLS // n_images)
    for start in range(0, n_captions, cols_per_chunk):
        block = _finite_block(sims[:, start:start + cols_per_chunk])
        cols = np.arange(block.shape[1])
        true_score = block[owner[start + cols], cols]
        ranks[start:start + len(cols)] = (block >= true_score[None, :]).sum(axis=0) - 1  # less the true image
    return ranks


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in RECALL_KS}
    out[f"{prefix}_medr"] = float(math.floor(np.median(ranks)) + 1)
    out[f"{prefix}_meanr"] = float(ranks.mean() + 1)
    return out


def evaluate(sims: Any, captions_per_image: Layout = 5) -> dict[str, float]:
    """All metrics of one score matrix; recalls in percent, rsum = sum of the six recalls."""
    return metrics_from_ranks(image_to_text_ranks(sims, captions_per_image),
                              text_to_image_ranks(sims, captions_per_image))


def metrics_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """The metrics of 0-based ranks (image->text per image, text->image per caption)."""
    metrics = _summarise(np.asarray(i2t_ranks), "i2t")
    metrics.update(_summarise(np.asarray(t2i_ranks), "t2i"))
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return {key: metrics[key] for key in METRIC_KEYS}


def evaluate_folds(sims: Any, captions_per_image: Layout = 5, folds: int = 5) -> dict[str, Any]:
    """COCO-1K style: split the images into `folds` equal consecutive blocks, evaluate each diagonal
    block alone, and average every metric (rsum included) over the folds.

    Returns the mean metrics plus "folds": the list of per-fold metric dicts.
    """
    sims = _as_matrix(sims)
    owner = _check_layout(sims, captions_per_image)
    if not isinstance(folds, (int, np.integer)) or folds < 1:
        raise ValueError(f"folds: expected a positive integer, got {folds!r}")
    n_images = sims.shape[0]
    if n_images % folds:
        raise ValueError(f"folds: {n_images} images do not split into {folds} equal folds")
    size = n_images // folds
    per_fold = []
    for f in range(folds):  # a fold: its images and the captions that belong to them
        columns = np.flatnonzero(owner // size == f)
        per_fold.append(evaluate(sims[f * size:(f + 1) * size][:, columns], owner[columns] - f * size))
    # Averaging rsum per fold equals summing the averaged recalls; the VSE++ family instead printed
    # 6 x the mean image->text recall, which is not rsum.
    result: dict[str, Any] = {key: float(np.mean([m[key] for m in per_fold])) for key in METRIC_KEYS}
    result["folds"] = per_fold
    return result


def _chance_best_of_k(n_items: int, n_true: int, cutoff: int) -> float:
    """P(at least one of n_true items lands in the top `cutoff` of a random order of n_items)."""
    if cutoff >= n_items - n_true + 1:
        return 1.0
    miss = 1.0  # all `cutoff` top slots go to negatives: hypergeometric, as a running product
    for i in range(cutoff):
        miss *= (n_items - n_true - i) / (n_items - i)
    return 1.0 - miss


def chance_rsum(n_images: int, captions_per_image: Layout = 5) -> float:
    """Expected rsum (percent) when every score is drawn i.i.d. from a continuous distribution."""
    if n_images < 1:
        raise ValueError(f"n_images: expected a positive integer, got {n_images!r}")
    owner = caption_images(captions_per_image, n_images)
    n_captions = len(owner)
    # Image->text: an image with n true captions among all captions; averaged over the images' caption counts.
    counts, images = np.unique(np.bincount(owner, minlength=n_images), return_counts=True)
    i2t = sum(share * _chance_best_of_k(n_captions, int(n), k)
              for n, share in zip(counts, images / n_images) for k in RECALL_KS)
    t2i = sum(_chance_best_of_k(n_images, 1, k) for k in RECALL_KS)
    return 100.0 * (i2t + t2i)


def format_metrics(metrics: dict[str, Any]) -> str:
    """Two human-readable lines: image->text, text->image, and rsum."""
    lines = []
    for direction, label in (("i2t", "image->text"), ("t2i", "text->image")):
        r = [metrics[f"{direction}_r{k}"] for k in RECALL_KS]
        lines.append(
            f"{label}: R@1 {r[0]:.1f}  R@5 {r[1]:.1f}  R@10 {r[2]:.1f}  "
            f"medr {metrics[f'{direction}_medr']:.1f}  meanr {metrics[f'{direction}_meanr']:.1f}"
        )
    lines.append(f"rsum: {metrics['rsum']:.1f}")
    return "\n".join(lines)
