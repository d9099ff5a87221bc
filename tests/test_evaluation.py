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
    """Straightforward per-item ranks with pessimistic ties: a true item comes after every negative scored >= it."""
    n_images, n_captions = sims.shape
    i2t = []
    for i in range(n_images):
        negatives = [c for c in range(n_captions) if c // k != i]
        i2t.append(min(sum(1 for c in negatives if sims[i, c] >= sims[i, j]) for j in range(i * k, (i + 1) * k)))
    t2i = []
    for j in range(n_captions):
        t2i.append(sum(1 for i in range(n_images) if i != j // k and sims[i, j] >= sims[j // k, j]))
    return summarise_reference(i2t, t2i)


def summarise_reference(i2t: list[int], t2i: list[int]) -> dict[str, float]:
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


def test_constant_matrix_ranks_every_true_item_after_all_negatives():
    # 3 images x 2 captions, all scores equal: an image ties with its 4 negative captions -> rank 4 (0-based);
    # a caption ties with the 2 other images -> rank 2. Nothing is credited.
    sims = np.zeros((3, 6))
    assert image_to_text_ranks(sims, 2).tolist() == [4, 4, 4]
    assert text_to_image_ranks(sims, 2).tolist() == [2] * 6
    m = evaluate(sims, captions_per_image=2)
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 0.0 and m["i2t_r5"] == 100.0 and m["t2i_medr"] == 3.0
    # The collapsed model of a 100-image test set: i2t rank 495, t2i rank 99 -> every recall 0.
    m = evaluate(torch.zeros(100, 500), 5)
    assert m["rsum"] == 0.0 and m["i2t_medr"] == 496.0 and m["t2i_meanr"] == 100.0


def test_true_item_tied_with_three_negatives_ranks_after_them():
    # Image->text, 5 images x 2 captions. Image 0's best true caption (0.7) ties with negatives 2, 5, 9 and
    # nothing is higher -> rank 3: an R@1 miss, an R@5 hit.
    sims = np.full((5, 10), 0.1)
    sims[0, [0, 1]] = [0.7, 0.2]
    sims[0, [2, 5, 9]] = 0.7
    # Image 1: both true captions tie with each other (0.6) and with 3 negatives: the other true caption does not
    # count against it -> rank 3, not 4.
    sims[1, [2, 3]] = 0.6
    sims[1, [0, 4, 6]] = 0.6
    # Image 2: its true caption strictly above everything -> rank 0. Image 3: true captions tied with each other
    # above all negatives -> rank 0. Image 4: everything 0.1 -> all 8 negatives tie -> rank 8.
    sims[2, 4] = 0.9
    sims[3, [6, 7]] = 0.8
    assert image_to_text_ranks(sims, 2).tolist() == [3, 3, 0, 0, 8]
    m = evaluate(sims, 2)
    assert m["i2t_r1"] == pytest.approx(40.0) and m["i2t_r5"] == pytest.approx(80.0)

    # Text->image, 5 images x 1 caption. Caption 0's true image 0 (0.5) ties with images 1, 2, 3; image 4 is
    # lower -> rank 3. Caption 1: image 1 strictly highest -> rank 0. Caption 2: image 2 below one image and tied
    # with one -> rank 2. Caption 3: image 3 lowest of all -> rank 4. Caption 4: all tied -> rank 4.
    sims = np.array([
        [0.5, 0.1, 0.3, 0.9, 0.0],
        [0.5, 0.8, 0.1, 0.8, 0.0],
        [0.5, 0.1, 0.2, 0.8, 0.0],
        [0.5, 0.1, 0.1, 0.1, 0.0],
        [0.4, 0.1, 0.2, 0.7, 0.0],
    ])
    assert text_to_image_ranks(sims, 1).tolist() == [3, 0, 2, 4, 4]
    m = evaluate(sims, 1)
    assert m["t2i_r1"] == pytest.approx(20.0) and m["t2i_r5"] == 100.0 and m["t2i_medr"] == 4.0


def sgraf_reference(sims: np.ndarray, k: int) -> dict[str, float]:
    """SGRAF's evaluation.py i2t / t2i loops (position in argsort(...)[::-1]); equal to ours without ties."""
    n_images = sims.shape[0]
    i2t = []
    for index in range(n_images):
        inds = np.argsort(sims[index])[::-1]
        i2t.append(min(np.where(inds == i)[0][0] for i in range(k * index, k * index + k)))
    t2i = []
    for j in range(sims.shape[1]):
        inds = np.argsort(sims[:, j])[::-1]
        t2i.append(np.where(inds == j // k)[0][0])
    return summarise_reference(i2t, t2i)


@pytest.mark.parametrize("k", [1, 5])
def test_equals_sgraf_evaluation_without_ties(k):
    sims = np.random.default_rng(10 + k).standard_normal((31, 31 * k))  # continuous: no ties
    got, want = evaluate(sims, k), sgraf_reference(sims, k)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key]), key
    # SGRAF breaks ties by position: on a constant matrix only the last image is ranked first, so its R@1 is 1/n.
    assert sgraf_reference(np.zeros((31, 31 * k)), k)["t2i_r1"] == pytest.approx(100 / 31)


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
    # Captions 5..7 belong to image 1, which scores 0 on them while image 0 scores 3, 2, 1 and image 2 ties at 0
    # -> rank 2 (0-based).
    assert text_to_image_ranks(sims, k)[5:8].tolist() == [2, 2, 2]


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
    assert evaluate(sims.to(torch.bfloat16), 1)["rsum"] == 600.0
    # float64 is kept: the true scores are above the negatives by less than float32 can resolve.
    sims = torch.ones(3, 3, dtype=torch.float64) + 1e-12 * torch.eye(3, dtype=torch.float64)
    assert evaluate(sims, 1)["rsum"] == 600.0
    rounded = evaluate(sims.float(), 1)  # rounded to float32: all tied, no true item ranks first
    assert rounded["i2t_r1"] == 0.0 and rounded["t2i_r1"] == 0.0


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


def test_folds_rank_ties_pessimistically():
    # A constant matrix, 5 folds of 2 images x 2 captions: an image ties with its 2 negative captions (rank 2), a
    # caption with the other image (rank 1): R@1 misses, R@5 and R@10 hit in both directions -> rsum 400.
    result = evaluate_folds(np.zeros((10, 20)), captions_per_image=2, folds=5)
    assert result["i2t_r1"] == 0.0 and result["t2i_r1"] == 0.0 and result["i2t_medr"] == 3.0
    assert result["rsum"] == 400.0 and all(fold["rsum"] == 400.0 for fold in result["folds"])


def test_fold_rsum_is_not_the_vsepp_formula():
    # Per fold: image->text perfect (300), text->image all wrong at R@1..R@10 impossible with 2 images,
    # so build folds where i2t recalls differ from t2i recalls.
    k = 2
    fold = np.array([
        # image 0 best on its caption 0; image 1 best on its caption 3 -> i2t all rank 1
        [1.0, 0.0, 0.9, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    # t2i: caption 1 (image 0): 0 vs 0 tie -> rank 2 (pessimistic); caption 2 (image 1): 0 vs 0.9 -> rank 2.
    sims = np.zeros((4, 8))
    sims[:2, :4] = fold
    sims[2:, 4:] = fold
    result = evaluate_folds(sims, k, folds=2)
    i2t = result["i2t_r1"] + result["i2t_r5"] + result["i2t_r10"]
    t2i = result["t2i_r1"] + result["t2i_r5"] + result["t2i_r10"]
    assert i2t == 300.0
    assert t2i == pytest.approx(50 + 100 + 100)
    assert result["rsum"] == pytest.approx(550.0)
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


# ---- a variable number of captions per image (caption -> image index) ------------------------------------

VARIABLE_OWNER = np.array([0, 0, 1, 2, 2])
VARIABLE_SIMS = np.array([[0.9, 0.1, 0.5, 0.95, 0.2],
                          [0.3, 0.3, 0.3, 0.1, 0.0],
                          [0.0, 0.2, 0.1, 0.4, 0.8]])


def test_variable_layout_ranks_worked_by_hand():
    # image 0: best own 0.9, caption 3 (0.95) above -> 1; image 1: own 0.3 tied with captions 0 and 1 -> 2;
    # image 2: own best 0.8, nothing above -> 0.
    assert image_to_text_ranks(VARIABLE_SIMS, VARIABLE_OWNER).tolist() == [1, 2, 0]
    # caption 1 (image 0, 0.1) has images 1 (0.3) and 2 (0.2) above; captions 2 and 3 one image each.
    assert text_to_image_ranks(VARIABLE_SIMS, VARIABLE_OWNER).tolist() == [0, 2, 1, 1, 0]
    metrics = evaluate(VARIABLE_SIMS, VARIABLE_OWNER)
    assert metrics["i2t_r1"] == pytest.approx(100 / 3) and metrics["t2i_r1"] == pytest.approx(40.0)
    # The fixed layout is the special case owner = j // k.
    sims = np.random.default_rng(0).standard_normal((4, 8))
    assert evaluate(sims, 2) == evaluate(sims, np.arange(8) // 2)


def test_variable_layout_folds_and_chance():
    owner = np.array([0, 1, 1, 1, 2, 3, 3])
    sims = np.random.default_rng(3).standard_normal((4, 7))
    folds = evaluate_folds(sims, owner, 2)
    first = evaluate(sims[:2, :4], owner[:4])
    second = evaluate(sims[2:, 4:], owner[4:] - 2)
    assert folds["folds"] == [first, second]
    # Chance: image->text of an image with n true captions among 7 at cutoff K is 1 - C(7-n, K)/C(7, K).
    from math import comb

    def hit(n, k):
        return 1.0 if k >= 7 - n + 1 else 1 - comb(7 - n, k) / comb(7, k)

    i2t = np.mean([sum(hit(n, k) for k in (1, 5, 10)) for n in (1, 3, 1, 2)])
    t2i = sum(min(k, 4) / 4 for k in (1, 5, 10))
    assert chance_rsum(4, owner) == pytest.approx(100 * (i2t + t2i))
    with pytest.raises(ValueError, match="image 2 has no caption"):
        evaluate(np.zeros((3, 3)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="3 caption->image entries for 4 captions"):
        evaluate(np.zeros((3, 4)), np.array([0, 1, 2]))
