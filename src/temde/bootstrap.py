"""Confidence intervals for retrieval metrics: a paired bootstrap over test queries, seeds pooled.

A model's rsum on a test split is a mean over queries (images for image->text, captions for text->image), and a
comparison of two models on the same split is paired: both answer the same queries. The interval of a
difference therefore resamples the *test images* with replacement (an image carries its own image->text query and
the text->image queries of its captions, so the two directions stay together), applies the same resample to both
models, and averages each model over its seeds first. With seeds pooled, the interval covers the query noise of
the split and the seed-to-seed spread that survives averaging; it says nothing about other data.

A comparison reads "ahead" or "behind" only when the whole 95% interval of the difference is on one side of 0,
"level" otherwise: never from the point estimate alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from temde.evaluation import RECALL_KS, caption_images

DEFAULT_RESAMPLES = 2000
# Resamples drawn per step: bounds the [resamples, n_images] count matrix to ~64 MB of float64.
_CELLS = 1 << 23


@dataclass(frozen=True)
class Ranks:
    """One model's 0-based ranks on one split: image->text per image, text->image per caption."""

    i2t: np.ndarray
    t2i: np.ndarray


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the test split as it is
    low: float
    high: float
    level: float = 0.95

    def verdict(self) -> str:
        """"ahead" (interval above 0), "behind" (below 0) or "level" (it contains 0)."""
        if self.low > 0:
            return "ahead"
        if self.high < 0:
            return "behind"
        return "level"

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "verdict": self.verdict()}


def _hits(ranks: np.ndarray) -> np.ndarray:
    """Per query, how many of R@1, R@5, R@10 it counts for (0..3): rsum = 100 x mean of these per direction."""
    ranks = np.asarray(ranks)
    return sum((ranks < k).astype(np.float64) for k in RECALL_KS)


def _per_image(runs: Sequence[Ranks], owner: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged (image->text hits per image, sum of text->image hits over each image's captions)."""
    if not runs:
        raise ValueError("need the ranks of at least one seed")
    i2t = np.mean([_hits(r.i2t) for r in runs], axis=0)
    t2i = np.mean([np.bincount(owner, weights=_hits(r.t2i), minlength=n_images) for r in runs], axis=0)
    if i2t.shape != (n_images,):
        raise ValueError(f"image->text ranks: expected {n_images} per seed, got {i2t.shape}")
    return i2t, t2i


def rsum_of(i2t_hits: np.ndarray, t2i_sums: np.ndarray, captions: np.ndarray, weights: np.ndarray | None = None):
    """rsum from per-image parts; `weights [B, n_images]` (resample counts) gives one rsum per row."""
    if weights is None:
        return 100.0 * (i2t_hits.mean() + t2i_sums.sum() / captions.sum())
    return 100.0 * (weights @ i2t_hits / weights.sum(1) + weights @ t2i_sums / (weights @ captions))


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """`[resamples, n_images]`: how often each test image is drawn in each bootstrap resample (n draws each)."""
    rng = np.random.default_rng(seed)
    counts = np.empty((resamples, n_images))
    step = max(1, _CELLS // n_images)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        draws = rng.integers(0, n_images, size=(rows, n_images))
        flat = (np.arange(rows)[:, None] * n_images + draws).ravel()
        counts[start:start + rows] = np.bincount(flat, minlength=rows * n_images).reshape(rows, n_images)
    return counts


def rsum_difference(a: Sequence[Ranks], b: Sequence[Ranks], layout: Any, resamples: int = DEFAULT_RESAMPLES,
                    level: float = 0.95, seed: int = 0) -> Interval:
    """Paired bootstrap interval of rsum(a) - rsum(b), each averaged over its seeds (a and b may have different
    numbers of seeds); `layout` is the split's caption layout (k or the caption->image array)."""
    n_images = len(np.asarray(a[0].i2t)) if a else 0
    owner = caption_images(layout, n_images)
    captions = np.bincount(owner, minlength=n_images).astype(np.float64)
    a_i2t, a_t2i = _per_image(a, owner, n_images)
    b_i2t, b_t2i = _per_image(b, owner, n_images)
    d_i2t, d_t2i = a_i2t - b_i2t, a_t2i - b_t2i
    estimate = float(rsum_of(d_i2t, d_t2i, captions))
    return _percentile_interval(estimate, rsum_of(d_i2t, d_t2i, captions, resample_counts(n_images, resamples,
                                                                                           seed)), level)


def rsum_interval(runs: Sequence[Ranks], layout: Any, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                  seed: int = 0) -> Interval:
    """Bootstrap interval of one model's seed-averaged rsum."""
    n_images = len(np.asarray(runs[0].i2t)) if runs else 0
    owner = caption_images(layout, n_images)
    captions = np.bincount(owner, minlength=n_images).astype(np.float64)
    i2t, t2i = _per_image(runs, owner, n_images)
    estimate = float(rsum_of(i2t, t2i, captions))
    return _percentile_interval(estimate, rsum_of(i2t, t2i, captions, resample_counts(n_images, resamples, seed)),
                                level)


def _percentile_interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), level)
