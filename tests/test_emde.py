"""Classic EMDE against independent computations: hand-packed codes, bincounts, a loop geometric mean."""
import math

import numpy as np
import pytest
import torch

from temde import TEMDE
from temde.emde import DLSH, l1_normalize_rows, l2_normalize_rows, score, sketch


@pytest.fixture
def data():
    return torch.randn(600, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 5, 16) + 3.0


def test_codes_match_hand_packed_bits(data):
    dlsh = DLSH(n_partitions=5, n_bits=3, seed=7).fit(data)
    proj = dlsh.project(data).numpy()
    assert proj.shape == (600, 15)
    codes = dlsh.codes(data).numpy()
    for p in range(5):
        expected = np.zeros(600, dtype=np.int64)
        for k in range(3):  # most significant bit first
            expected = expected * 2 + (proj[:, p * 3 + k] > 0)
        np.testing.assert_array_equal(codes[:, p], expected)
    assert codes.min() >= 0 and codes.max() < 8


def test_each_hyperplane_splits_the_fitting_data_in_half(data):
    dlsh = DLSH(n_partitions=8, n_bits=4).fit(data)
    above = (dlsh.project(data) > 0).float().mean(0)
    assert torch.all(above == 0.5)  # even count, midpoint median: exactly half on each side
    odd = data[:301]
    above = (DLSH(8, 4).fit(odd).project(odd) > 0).sum(0)
    assert torch.all((above == 150) | (above == 151))


def test_float64_fit_and_codes_equal_float32(data):
    # fit computes in float32, so a float64 copy of the same float32 data must give the same buckets.
    expected = DLSH(5, 3, seed=2).fit(data).codes(data)
    dlsh = DLSH(5, 3, seed=2).fit(data.double())
    assert dlsh.project(data.double()).dtype == torch.float32
    assert torch.equal(dlsh.codes(data.double()), expected)
    assert torch.equal(dlsh.codes(data.reshape(20, 30, 16).double()).reshape(600, 5), expected)


def test_fit_is_deterministic_per_seed_and_keeps_leading_axes(data):
    a = DLSH(3, 2, seed=1).fit(data).codes(data)
    b = DLSH(3, 2, seed=1).fit(data).codes(data)
    c = DLSH(3, 2, seed=2).fit(data).codes(data)
    assert torch.equal(a, b) and not torch.equal(a, c)
    batched = DLSH(3, 2, seed=1).fit(data).codes(data.reshape(20, 30, 16))
    assert torch.equal(batched.reshape(600, 3), a)


def test_sketch_equals_per_partition_bincount():
    codes = torch.randint(0, 16, (4, 9, 3), generator=torch.Generator().manual_seed(0))
    s = sketch(codes, n_bits=4)
    assert s.shape == (4, 3, 16)
    for b in range(4):
        for p in range(3):
            np.testing.assert_array_equal(s[b, p].numpy(), np.bincount(codes[b, :, p].numpy(), minlength=16))


def test_weighted_sketch_with_time_decay():
    codes = torch.tensor([[0, 1], [0, 3], [2, 1]])  # 3 tokens, 2 partitions, 2 bits
    weights = torch.tensor([0.95 ** 2, 0.95, 1.0])
    s = sketch(codes, n_bits=2, weights=weights)
    expected = torch.zeros(2, 4)
    for token in range(3):
        for p in range(2):
            expected[p, codes[token, p]] += weights[token]
    torch.testing.assert_close(s, expected)


def test_sketch_is_additive():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 8, (5, 4), generator=g), torch.randint(0, 8, (7, 4), generator=g)
    torch.testing.assert_close(sketch(torch.cat([a, b]), 3), sketch(a, 3) + sketch(b, 3))


def test_score_is_geometric_mean_of_bucket_values():
    g = torch.Generator().manual_seed(4)
    sk = torch.rand(3, 8, generator=g) + 0.1  # 3 partitions, width 8
    items = torch.randint(0, 8, (5, 3), generator=g)
    got = score(sk, items)
    for m in range(5):
        values = [sk[p, items[m, p]].item() for p in range(3)]
        assert got[m].item() == pytest.approx(math.prod(values) ** (1 / 3), rel=1e-5)
    sk[1, items[2, 1]] = 0.0  # one empty bucket zeroes the item's density
    assert score(sk, items)[2].item() == 0.0


def test_score_with_eps_is_geometric_mean_of_eps_plus_values():
    sk = torch.tensor([[2.0, 0.0, 1.0, 0.0],  # 3 partitionings, width 4, with empty buckets
                       [0.0, 3.0, 0.0, 1.0],
                       [1.0, 1.0, 0.0, 2.0]])
    items = torch.tensor([[0, 1, 3],  # values 2, 3, 2: no empty bucket
                          [1, 1, 3],  # 0, 3, 2
                          [1, 0, 2],  # 0, 0, 0
                          [3, 0, 0]])  # 0, 0, 1
    values = [[2, 3, 2], [0, 3, 2], [0, 0, 0], [0, 0, 1]]
    assert score(sk, items).tolist() == pytest.approx([12 ** (1 / 3), 0, 0, 0])  # default: exact, empty -> 0
    for eps in (0.5, 1e-3):
        got = score(sk, items, eps=eps)
        for m in range(4):
            assert got[m].item() == pytest.approx(math.prod(eps + v for v in values[m]) ** (1 / 3), rel=1e-5)
        # the items with empty buckets no longer tie at 0: fewer empty buckets score higher
        assert got[0] > got[1] > got[3] > got[2]
    for eps in (-1e-3, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="eps"):
            score(sk, items, eps=eps)


def test_row_normalisations():
    s = torch.tensor([[[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(l1_normalize_rows(s), torch.tensor([[[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(l2_normalize_rows(s)[0, 0], torch.tensor([1.0, 3.0, 0.0]) / math.sqrt(10))


def test_bad_arguments_raise_value_errors(data):
    with pytest.raises(ValueError, match="n_bits"):
        DLSH(2, 0)
    with pytest.raises(RuntimeError, match="not fitted"):
        DLSH(2, 2).codes(data)
    dlsh = DLSH(2, 2).fit(data)
    with pytest.raises(ValueError, match="features"):
        dlsh.codes(torch.randn(3, 5))
    with pytest.raises(ValueError, match="floating"):
        dlsh.codes(data.long())
    with pytest.raises(ValueError, match="codes"):
        sketch(torch.tensor([[4]]), n_bits=2)
    with pytest.raises(ValueError, match="weights"):
        sketch(torch.zeros(3, 2, dtype=torch.long), n_bits=2, weights=torch.ones(4))


def test_soft_codes_hard_limit_off_and_on_a_plane():
    # Fit on an odd, symmetric set: the zero vector is the mean (standardised to exactly 0) and the median of every
    # plane's projections {-p_b, -p_a, 0, p_a, p_b}, so the bias is 0 and it lies on all 12 planes.
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, -1.0, 1.0])
    odd = torch.stack([a, b, torch.zeros(3), -a, -b])
    dlsh = DLSH(4, 3, seed=5).fit(odd)
    proj = dlsh.project(odd)
    assert (proj[2] == 0).all() and (proj[[0, 1, 3, 4]] != 0).all()
    hard = dlsh.codes(odd)
    assert (hard[2] == 0).all()  # codes() packs project > 0: a point on every plane gets bit 0 everywhere
    for temperature in (1.0, 1e-6):
        soft = TEMDE.from_dlsh(dlsh, temperature=temperature).assignments(odd)  # [5, 4 partitions, 8 buckets]
        # On the planes: sigmoid(0) = 1/2 per bit at every temperature, i.e. 1/8 in each of the 8 buckets.
        torch.testing.assert_close(soft[2], torch.full((4, 8), 1 / 8))
    # Off the planes the limit is the hard code: one-hot on codes() for the other four points.
    expected = torch.nn.functional.one_hot(hard[[0, 1, 3, 4]], 8).float()
    torch.testing.assert_close(soft[[0, 1, 3, 4]], expected, atol=1e-6, rtol=0)

    # One more vector makes the set even: the bias is the midpoint of two distinct projections, no fit point lies
    # on a plane, and the limit equals codes() for all six.
    even = torch.cat([odd, torch.tensor([[0.5, 1.0, -2.0]])])
    dlsh = DLSH(4, 3, seed=5).fit(even)
    assert (dlsh.project(even) != 0).all()
    soft = TEMDE.from_dlsh(dlsh, temperature=1e-6).assignments(even)
    torch.testing.assert_close(soft, torch.nn.functional.one_hot(dlsh.codes(even), 8).float(), atol=1e-6, rtol=0)
