"""Leakage-free train/dev/test splits: near-identical images or captions never straddle two splits.

A random split by image leaks on real collections: the same title or an almost identical drawing shows up in
train and in test, and the test score measures memory, not retrieval (BRIEF §5: on openclipart rsum fell from
~250-285 to ~100 once such groups were kept together). Images are therefore grouped (union-find) when

- one of their texts is identical after `normalise_text` (lower case, digits and punctuation removed), or
- their mean-pooled, L2-normalised features have cosine >= `threshold` (near-duplicate pictures),

and whole groups are dealt to test, dev and train in an order drawn from `seed`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NEAR_DUPLICATE_COSINE = 0.95
# Rows of the similarity matrix computed at once: block x n floats (512 x 10k = 20 MB), never n x n.
_BLOCK = 512
_NOT_LETTERS = re.compile(r"[\W\d_]+")


def normalise_text(text: str) -> str:
    """Lower case, digits/punctuation/underscores replaced by spaces, whitespace collapsed: the grouping key."""
    return " ".join(_NOT_LETTERS.sub(" ", text.lower()).split())


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)  # the smallest index is the root: labels are deterministic
        return True

    def roots(self) -> np.ndarray:
        """Root of every element, vectorised (pointer jumping until nothing moves)."""
        labels = self.parent.copy()
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                return labels
            labels = jumped


def pooled_features(features: np.ndarray) -> np.ndarray:
    """[n, R, D] region features -> [n, D] mean over regions, L2-normalised (zero rows stay zero)."""
    pooled = np.asarray(features, dtype=np.float32).mean(axis=1)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


@dataclass
class LeakageGroups:
    labels: np.ndarray          # [n] group id of each image = smallest image index in its group
    text_unions: int            # merges caused by identical normalised texts
    feature_unions: int         # merges caused by near-duplicate features (after the text merges)
    key_unions: int = 0         # merges caused by equal keys (e.g. one concept drawn by several vendors), first

    @property
    def n_groups(self) -> int:
        return int(len(np.unique(self.labels)))

    @property
    def merged_groups(self) -> int:
        """Groups holding more than one image."""
        return int((np.bincount(self.labels, minlength=len(self.labels)) > 1).sum())

    @property
    def images_in_merged_groups(self) -> int:
        counts = np.bincount(self.labels, minlength=len(self.labels))
        return int(counts[counts > 1].sum())


def leakage_groups(texts: Sequence[Sequence[str]], pooled: np.ndarray,
                   threshold: float = NEAR_DUPLICATE_COSINE, keys: Sequence | None = None) -> LeakageGroups:
    """Group images i and j when texts[i] and texts[j] share a normalised text, or pooled[i]·pooled[j] >= threshold.

    texts: per image, its captions (and any other text that identifies it, e.g. a title).
    pooled: [n, D] L2-normalised image vectors (see `pooled_features`). Memory stays O(block x n).
    keys: optional, per image, a hashable key compared exactly (not normalised): images with equal keys are
    joined first (a concept drawn by several vendors); None joins nothing.
    """
    n = len(texts)
    pooled = np.asarray(pooled, dtype=np.float32)
    if pooled.ndim != 2 or len(pooled) != n:
        raise ValueError(f"pooled must be [n_images={n}, D], got shape {pooled.shape}")
    if keys is not None and len(keys) != n:
        raise ValueError(f"keys must have one entry per image ({n}), got {len(keys)}")
    sets = _UnionFind(n)
    text_unions = feature_unions = key_unions = 0
    first_with_key: dict = {}
    for image, key in enumerate(keys if keys is not None else ()):
        if key is not None:
            key_unions += sets.union(first_with_key.setdefault(key, image), image)
    first_with: dict[str, int] = {}
    for image, image_texts in enumerate(texts):
        for text in image_texts:
            key = normalise_text(text)
            if not key:  # a text of digits/punctuation only says nothing; it must not glue images together
                continue
            other = first_with.setdefault(key, image)
            text_unions += sets.union(other, image)
    for start in range(0, n, _BLOCK):
        block = pooled[start:start + _BLOCK] @ pooled[start:].T  # only columns >= start: each pair once
        rows, cols = np.nonzero(block >= threshold)
        rows, cols = rows + start, cols + start
        keep = rows < cols
        if not keep.any():
            continue
        # Map pairs to their current roots and drop the ones already joined: the Python loop below then runs
        # at most once per merge, not once per similar pair (a set of 1,000 near-identical stars has ~500k).
        labels = sets.roots()
        pairs = np.unique(np.stack([labels[rows[keep]], labels[cols[keep]]], axis=1), axis=0)
        for a, b in pairs[pairs[:, 0] != pairs[:, 1]]:
            feature_unions += sets.union(int(a), int(b))
    return LeakageGroups(sets.roots(), text_unions, feature_unions, key_unions)


@dataclass
class GroupedSplit:
    """Image indices (ascending) of each split, and the grouping they were dealt from."""
    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray
    groups: LeakageGroups = field(repr=False)
    seed: int = 0

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "dev": self.dev, "test": self.test}


def assign_groups(labels: np.ndarray, n_dev: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Deal whole groups to test, then dev, then train, in a random order drawn from `seed`.

    A group goes to test if it still fits in the n_test images left there, else to dev if it fits there, else
    to train. Small groups fill the last places, so test and dev get exactly n_test / n_dev images whenever
    the group sizes allow; a group bigger than what is left (a large set of near-identical icons) ends up in
    train. Returns (train, dev, test) sorted image indices.
    """
    labels = np.asarray(labels)
    group_ids, sizes = np.unique(labels, return_counts=True)  # sorted ids: the order does not depend on input
    order = np.random.default_rng(seed).permutation(len(group_ids))
    room = {"test": n_test, "dev": n_dev}
    destination = np.empty(len(group_ids), dtype=np.int8)  # 0 train, 1 dev, 2 test
    for g in order:
        if sizes[g] <= room["test"]:
            room["test"] -= sizes[g]
            destination[g] = 2
        elif sizes[g] <= room["dev"]:
            room["dev"] -= sizes[g]
            destination[g] = 1
        else:
            destination[g] = 0
    per_image = destination[np.searchsorted(group_ids, labels)]
    return tuple(np.flatnonzero(per_image == d) for d in (0, 1, 2))  # type: ignore[return-value]


def grouped_split(texts: Sequence[Sequence[str]], features: np.ndarray, n_dev: int, n_test: int, seed: int = 0,
                  threshold: float = NEAR_DUPLICATE_COSINE) -> GroupedSplit:
    """Leakage-free split of n images: group (see `leakage_groups`) then deal groups (see `assign_groups`).

    features: [n, R, D] region features or [n, D] vectors; mean-pooled and L2-normalised here.
    """
    if n_dev < 0 or n_test < 0:
        raise ValueError(f"dev and test sizes must be >= 0, got {n_dev} and {n_test}")
    if n_dev + n_test >= len(texts):
        raise ValueError(f"dev {n_dev} + test {n_test} images leave no training images out of {len(texts)}")
    features = np.asarray(features)
    pooled = pooled_features(features) if features.ndim == 3 else pooled_features(features[:, None, :])
    groups = leakage_groups(texts, pooled, threshold)
    train, dev, test = assign_groups(groups.labels, n_dev, n_test, seed)
    return GroupedSplit(train, dev, test, groups, seed)
