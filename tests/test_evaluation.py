"""Metrics against hand-made score matrices and a plain loop reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temde.evaluation import (
    METRIC_KEYS,
    chance_rsum,
    evaluate,
    evaluate_folds,
    format_metrics,
    image_to_text_ranks,
    text_to_image_ranks,
)


def loop_reference(sims: np.ndarray, k: int) -> dict[str, float]:
    """Straightforward per-item ranks: sort, find the true item, optimistic ties resolved by hand."""
    n_images, n_captions = sims.shape
    i2t = []
    for i in range(n_images):
        best = min(sum(1 for s in sims[i] if s > sims[i, j]) for j in range(i * k, (i + 1) * k))
        i2t.append(best)
    t2i = []
    for j in range(n_captions):
        t2i.append(sum(1 for s in sims[:, j] if s > sims[j // k, j]))
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for cut in (1, 5, 10):
            out[f"{name}_r{cut}"] = 100.0 * sum(r < cut for r in ranks) / len(ranks)
        out[f"{name}_medr"] = math.floor(np.median(ranks)) + 1
        out[f"{name}_meanr"] = ranks.mean() + 1
    out["rsum"] = sum(out[f"{d}_r{c}"] for d in ("i2t", "t2i") for c in (1, 5, 10))
    return out


def test_perfect_diagonal_k1():
    sims = np.eye(4) + 0.0
    m = evaluate(sims, captions_per_image=1)
    assert list(m) == list(METRIC_KEYS)
    for d in ("i2t", "t2i"):
        assert m[f"{d}_r1"] == 100.0 and m[f"{d}_medr"] == 1.0 and m[f"{d}_meanr"] == 1.0
    assert m["rsum"] == 600.0


def test_hand_made_k1():
    # Image 0: its caption 0 scores 0.5 and caption 1 scores 0.9 -> rank 2 (0-based 1).
    # Image 1: caption 1 best -> rank 1. Image 2: caption 2 lowest of 3 -> rank 3.
    sims = np.array([
        [0.5, 0.9, 0.1],
        [0.2, 0.8, 0.3],
        [0.6, 0.7, 0.4],
    ])
    m = evaluate(sims, captions_per_image=1)
    assert m["i2t_r1"] == pytest.approx(100 / 3)
    assert m["i2t_r5"] == 100.0
    assert m["i2t_medr"] == 2.0
    assert m["i2t_meanr"] == pytest.approx((2 + 1 + 3) / 3)
    # Columns: caption 0 true image 0 (0.5 vs 0.2, 0.6) -> rank 2; caption 1 image 1 (0.8 vs 0.9, 0.7) -> rank 2;
    # caption 2 image 2 (0.4 vs 0.1, 0.3) -> rank 1.
    assert m["t2i_r1"] == pytest.approx(100 / 3)
    assert m["t2i_meanr"] == pytest.approx(5 / 3)
    assert m["t2i_medr"] == 2.0
    assert m["rsum"] == pytest.approx(100 / 3 + 100 + 100 + 100 / 3 + 100 + 100)


def test_ties_are_optimistic():
    # Everything tied: every true item has no strictly greater competitor -> rank 1 everywhere.
    sims = np.zeros((3, 6))
    m = evaluate(sims, captions_per_image=2)
    assert m["i2t_r1"] == 100.0 and m["t2i_r1"] == 100.0
    # A true caption tied with one negative and beaten by another -> rank 2, not 3.
    sims = np.array([[0.5, 0.5, 0.9], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert image_to_text_ranks(sims, 1).tolist() == [1, 0, 0]


def test_k5_best_of_five_captions():
    n, k = 3, 5
    sims = np.zeros((n, n * k))
    # Image 0: its 3rd caption (column 2) is the 4th best overall; captions of other images above it.
    sims[0] = np.linspace(0, -1, n * k)  # column order = rank order
    sims[0, [5, 6, 7]] = [3.0, 2.0, 1.0]
    sims[0, 2] = 0.5
    sims[0, [0, 1, 3, 4]] = -5.0
    ranks = image_to_text_ranks(sims, k)
    assert ranks[0] == 3
    # Text->image: caption 2's true image 0 scores 0.5 against 0 for images 1, 2 -> rank 0.
    assert text_to_image_ranks(sims, k)[2] == 0
    # Captions 5..7 belong to image 1, which scores 0 on them while image 0 scores 3, 2, 1 -> rank 1 (0-based).
    assert text_to_image_ranks(sims, k)[5:8].tolist() == [1, 1, 1]


@pytest.mark.parametrize("k", [1, 5])
def test_matches_loop_reference_random_with_ties(k):
    rng = np.random.default_rng(k)
    n = 23
    sims = rng.integers(0, 6, size=(n, n * k)).astype(np.float32)  # coarse values: many ties
    got = evaluate(sims, k)
    want = loop_reference(sims, k)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key]), key


def test_chunked_computation_matches(monkeypatch):
    import temde.evaluation as ev

    rng = np.random.default_rng(0)
    sims = rng.standard_normal((37, 74))
    whole = evaluate(sims, 2)
    monkeypatch.setattr(ev, "_CHUNK_CELLS", 50)  # forces chunks of 1-2 rows / columns
    assert evaluate(sims, 2) == whole


def test_accepts_torch_tensor():
    sims = torch.eye(5)
    assert evaluate(sims, 1)["rsum"] == 600.0


def test_folds_average_each_fold_and_rsum():
    rng = np.random.default_rng(3)
    n, k, folds = 20, 2, 4
    sims = rng.standard_normal((n, n * k))
    result = evaluate_folds(sims, captions_per_image=k, folds=folds)
    size = n // folds
    fold_metrics = [
        loop_reference(sims[f * size:(f + 1) * size, f * size * k:(f + 1) * size * k], k) for f in range(folds)
    ]
    assert len(result["folds"]) == folds
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(np.mean([m[key] for m in fold_metrics])), key
    # Off-diagonal blocks must not matter: scramble them and nothing changes.
    scrambled = sims.copy()
    scrambled[:size, size * k:] = 100.0
    assert evaluate_folds(scrambled, k, folds)["rsum"] == pytest.approx(result["rsum"])


def test_fold_rsum_is_not_the_vsepp_formula():
    # Per fold: image->text perfect (300), text->image all wrong at R@1..R@10 impossible with 2 images,
    # so build folds where i2t recalls differ from t2i recalls.
    k = 2
    fold = np.array([
        # image 0 best on its caption 0; image 1 best on its caption 3 -> i2t all rank 1
        [1.0, 0.0, 0.9, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    # t2i: caption 1 (image 0): 0 vs 0 tie -> rank 1; caption 2 (image 1): 0 vs 0.9 -> rank 2.
    sims = np.zeros((4, 8))
    sims[:2, :4] = fold
    sims[2:, 4:] = fold
    result = evaluate_folds(sims, k, folds=2)
    i2t = result["i2t_r1"] + result["i2t_r5"] + result["i2t_r10"]
    t2i = result["t2i_r1"] + result["t2i_r5"] + result["t2i_r10"]
    assert i2t == 300.0
    assert t2i == pytest.approx(75 + 100 + 100)
    assert result["rsum"] == pytest.approx(575.0)
    buggy = 6 * (i2t / 3)  # VSE++ printed mean_metrics[10] * 6 = 6 x the mean image->text recall
    assert buggy == 600.0 and result["rsum"] != buggy


def test_chance_rsum_closed_forms_and_simulation():
    # k = 1: every recall@K is K / n.
    assert chance_rsum(100, 1) == pytest.approx(2 * 100 * (1 + 5 + 10) / 100)
    # Tiny cases where every recall is certain.
    assert chance_rsum(1, 1) == pytest.approx(600.0)
    # 2 images x 5 captions: i2t R@1 = 5/10, R@5 = 1 - C(5,5)/C(10,5) = 1 - 1/252, R@10 = 1; t2i 1/2, 1, 1.
    assert chance_rsum(2, 5) == pytest.approx(100 * (0.5 + (1 - 1 / 252) + 1 + 0.5 + 1 + 1))
    # Monte Carlo with random scores.
    rng = np.random.default_rng(7)
    n, k, trials = 30, 5, 300
    mc = np.mean([evaluate(rng.random((n, n * k)), k)["rsum"] for _ in range(trials)])
    assert mc == pytest.approx(chance_rsum(n, k), rel=0.05)


@pytest.mark.parametrize(
    "sims, k, match",
    [
        (np.zeros(5), 1, "sims"),
        (np.zeros((3, 7)), 2, "sims"),
        (np.zeros((0, 0)), 1, "sims"),
        (np.zeros((3, 3)), 0, "captions_per_image"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), 1, "sims"),
    ],
)
def test_bad_shapes_raise_value_error(sims, k, match):
    with pytest.raises(ValueError, match=match):
        evaluate(sims, k)


def test_bad_folds():
    with pytest.raises(ValueError, match="folds"):
        evaluate_folds(np.zeros((10, 10)), 1, folds=3)
    with pytest.raises(ValueError, match="n_images"):
        chance_rsum(0, 5)


def test_format_metrics():
    text = format_metrics(evaluate(np.eye(3), 1))
    assert "rsum: 600.0" in text and "R@1 100.0" in text
