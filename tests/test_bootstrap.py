"""Paired bootstrap intervals: estimates against evaluate(), each resample against an explicit loop over the
drawn images and their captions, and the ahead / behind / level verdicts on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from temde.bootstrap import Interval, Ranks, resample_counts, rsum_difference, rsum_interval, rsum_of
from temde.evaluation import evaluate, image_to_text_ranks, text_to_image_ranks

# 6 images with 1..3 captions each (a variable caption layout).
OWNER = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])


def ranks_of(sims, layout=OWNER) -> Ranks:
    return Ranks(image_to_text_ranks(sims, layout), text_to_image_ranks(sims, layout))


def noisy(seed: int, signal: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((6, len(OWNER)))
    sims[OWNER, np.arange(len(OWNER))] += signal
    return sims


def test_estimate_is_the_difference_of_seed_averaged_rsums():
    a = [noisy(s, 1.5) for s in (0, 1)]
    b = [noisy(s, 0.5) for s in (10, 11, 12)]
    result = rsum_difference([ranks_of(m) for m in a], [ranks_of(m) for m in b], OWNER, resamples=200)
    expected = np.mean([evaluate(m, OWNER)["rsum"] for m in a]) - np.mean([evaluate(m, OWNER)["rsum"] for m in b])
    assert result.estimate == pytest.approx(expected)
    assert result.low <= result.estimate <= result.high
    single = rsum_interval([ranks_of(m) for m in a], OWNER, resamples=200)
    assert single.estimate == pytest.approx(np.mean([evaluate(m, OWNER)["rsum"] for m in a]))


def test_every_resample_equals_a_loop_over_the_drawn_queries():
    runs = [ranks_of(noisy(s, 1.0)) for s in (3, 4)]
    counts = resample_counts(6, 40, seed=7)
    assert (counts.sum(1) == 6).all()
    assert np.array_equal(counts, resample_counts(6, 40, seed=7))  # reproducible from the seed
    i2t = np.mean([sum((r.i2t < k) for k in (1, 5, 10)) for r in runs], axis=0)
    t2i_hits = np.mean([sum((r.t2i < k) for k in (1, 5, 10)) for r in runs], axis=0)
    t2i = np.array([t2i_hits[OWNER == i].sum() for i in range(6)])
    captions = np.bincount(OWNER).astype(float)
    vectorised = rsum_of(i2t, t2i, captions, counts)
    for row, value in zip(counts, vectorised):
        drawn = [image for image in range(6) for _ in range(int(row[image]))]  # with repetition
        image_queries = [i2t[image] for image in drawn]
        caption_queries = [t2i_hits[c] for image in drawn for c in np.flatnonzero(OWNER == image)]
        assert value == pytest.approx(100 * np.mean(image_queries) + 100 * np.mean(caption_queries))


def test_verdicts_follow_the_interval():
    k = 2
    n = 40
    perfect = np.eye(n).repeat(k, axis=1) + 0.01 * np.random.default_rng(0).standard_normal((n, n * k))
    weak = np.random.default_rng(1).standard_normal((n, n * k))
    better = rsum_difference([ranks_of(perfect, k)], [ranks_of(weak, k)], k, resamples=500)
    assert better.verdict() == "ahead" and better.low > 0
    worse = rsum_difference([ranks_of(weak, k)], [ranks_of(perfect, k)], k, resamples=500)
    assert worse.verdict() == "behind" and worse.high < 0
    same = rsum_difference([ranks_of(weak, k)], [ranks_of(weak, k)], k, resamples=500)
    assert (same.estimate, same.low, same.high, same.verdict()) == (0.0, 0.0, 0.0, "level")
    assert Interval(1.0, -0.5, 2.0).verdict() == "level"
    assert Interval(1.0, 0.5, 2.0).to_dict()["verdict"] == "ahead"


def test_bad_inputs():
    runs = [ranks_of(noisy(0, 1.0))]
    with pytest.raises(ValueError, match="level"):
        rsum_interval(runs, OWNER, level=1.5)
    with pytest.raises(ValueError, match="at least one seed"):
        rsum_difference(runs, [], OWNER)
    with pytest.raises(ValueError, match="caption layout"):
        rsum_interval(runs, OWNER[:-1] + 10)
