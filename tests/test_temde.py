"""Trainable T-EMDE: hard limit equals DLSH, soft codes equal the product of bit sigmoids, set semantics."""
import itertools

import pytest
import torch

from temde import DLSH, TEMDE
from temde.sketch import RELAXATIONS


def tokens(b=4, l=7, d=12, seed=0):
    return torch.randn(b, l, d, generator=torch.Generator().manual_seed(seed))


def test_zero_temperature_gives_dlsh_codes_exactly():
    x = torch.randn(400, 12, generator=torch.Generator().manual_seed(2))
    dlsh = DLSH(6, 4, seed=3).fit(x)
    module = TEMDE.from_dlsh(dlsh, temperature=1e-6)
    assign = module.assignments(x)
    assert torch.equal(assign.argmax(-1), dlsh.codes(x))
    torch.testing.assert_close(assign.max(-1).values, torch.ones(400, 6))
    # and the histogram is the hard EMDE sketch
    from temde.emde import sketch
    hist = module.histogram(x.unsqueeze(0))
    torch.testing.assert_close(hist[0], sketch(dlsh.codes(x), 4), atol=1e-4, rtol=0)


def test_soft_codes_are_products_of_bit_sigmoids():
    module = TEMDE(5, n_partitions=2, n_bits=3, temperature=0.7)
    x = torch.randn(9, 5)
    module.init_from_tokens(torch.randn(50, 5) * 3 + 1)  # non-trivial standardisation
    p = module.assignments(x)  # [9, 2, 8]
    z = (((x - module.in_mean) / module.in_std) @ module.planes - module.bias) / 0.7
    z = z.reshape(9, 2, 3)
    torch.testing.assert_close(module.logits(x).softmax(-1), p, atol=1e-6, rtol=1e-5)  # = softmax of 1/2 sum s z
    for code, bits in enumerate(itertools.product([0, 1], repeat=3)):  # most significant bit first
        expected = torch.ones(9, 2)
        for k, bit in enumerate(bits):
            expected = expected * torch.sigmoid((2 * bit - 1) * z[..., k])
        torch.testing.assert_close(p[..., code], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones(9, 2))


def test_init_from_tokens_uses_only_real_tokens_and_splits_them_in_half():
    x, mask = tokens(8, 10, 12), torch.rand(8, 10, generator=torch.Generator().manual_seed(1)) > 0.3
    x = x.masked_fill(~mask.unsqueeze(-1), 1e3)  # padding with absurd values must not move the medians
    module = TEMDE(12, n_partitions=4, n_bits=3).init_from_tokens(x, mask)
    real = x[mask]
    z = ((real - module.in_mean) / module.in_std) @ module.planes - module.bias
    frac = (z > 0).float().mean(0)
    assert torch.all((frac - 0.5).abs() <= 1 / real.shape[0] + 1e-6)


def test_histogram_is_masked_sum_of_assignments_and_permutation_invariant():
    module = TEMDE(12, n_partitions=3, n_bits=2, out_dim=6)
    x, mask = tokens(), torch.tensor([[1, 1, 1, 1, 0, 0, 0]] * 4, dtype=torch.bool)
    hist = module.histogram(x, mask)
    torch.testing.assert_close(hist, module.assignments(x[:, :4]).sum(1))
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(module(x[:, perm], mask[:, perm]), module(x, mask))


def test_padding_changes_nothing():
    module = TEMDE(12, n_partitions=4, n_bits=3).eval()
    x = tokens(2, 5, 12)
    padded = torch.cat([x, torch.randn(2, 6, 12) * 100], 1)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[:, :5] = True
    torch.testing.assert_close(module(padded, mask), module(x))


def test_output_shape_normalisation_and_projection():
    x = tokens()
    plain = TEMDE(12, n_partitions=3, n_bits=4)
    assert plain(x).shape == (4, 48) and plain.out_dim == 48
    projected = TEMDE(12, n_partitions=3, n_bits=4, out_dim=10)
    y = projected(x)
    assert y.shape == (4, 10)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("n_bits", [2, 3, 5, 6])
def test_factorised_histogram_equals_the_sum_of_assignments(n_bits):
    x = tokens(b=3, l=9, d=12, seed=n_bits)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2] = False
    module = TEMDE(12, n_partitions=4, n_bits=n_bits, temperature=0.5).init_from_tokens(x, mask)
    p = module.assignments(x)  # [B, L, N, W], checked against bit sigmoids elsewhere
    expected = torch.zeros(3, 4, 2 ** n_bits)
    for b in range(3):
        for t in range(9):
            if mask[b, t]:
                expected[b] += p[b, t]
    torch.testing.assert_close(module.histogram(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_residual_adds_the_projected_sketch_to_the_token_mean():
    x = tokens()
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 3:] = False
    module = TEMDE(12, n_partitions=3, n_bits=2, residual=True)
    assert module.out_dim == 12
    mean = torch.stack([x[b, mask[b]].mean(0) for b in range(4)])
    # the sketch starts silent: the output is the normalised token mean
    torch.testing.assert_close(module(x, mask), mean / mean.norm(dim=-1, keepdim=True))
    with torch.no_grad():
        module.sketch_gain.fill_(0.7)
    # independent computation: per-token sigmoid products summed over the real tokens, row-normalised, projected
    z = torch.sigmoid(module.plane_distances(x))  # [B, L, N, K]
    p = torch.stack([(1 - z[..., 0]) * (1 - z[..., 1]), (1 - z[..., 0]) * z[..., 1],
                     z[..., 0] * (1 - z[..., 1]), z[..., 0] * z[..., 1]], dim=-1)
    hist = (p * mask[..., None, None]).sum(1)
    hist = hist / hist.norm(dim=-1, keepdim=True)
    expected = 0.7 * module.proj(hist.flatten(1)) + mean
    torch.testing.assert_close(module(x, mask), expected / expected.norm(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="out_dim"):
        TEMDE(12, residual=True, out_dim=5)


def test_token_weights_and_power_follow_a_loop_reference():
    x = tokens()
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[2, 4:] = False
    mask[3] = False  # an empty set stays the zero sketch
    module = TEMDE(12, n_partitions=2, n_bits=3, token_weights=True, power=0.5)
    with torch.no_grad():
        module.gate.weight.normal_(generator=torch.Generator().manual_seed(5))
    p = module.assignments(x)  # [B, L, N, W], checked against bit sigmoids elsewhere
    rows = []
    for b in range(4):
        counts = torch.zeros(2, 8)
        for t in range(7):
            if mask[b, t]:
                counts += torch.sigmoid(x[b, t] @ module.gate.weight[0]) * p[b, t]
        counts = counts.sqrt()
        norms = counts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        row = (counts / norms).flatten()
        rows.append(row / row.norm().clamp_min(1e-12))
    torch.testing.assert_close(module(x, mask), torch.stack(rows))
    assert module(x, mask)[3].abs().sum() == 0
    with pytest.raises(ValueError, match="power"):
        TEMDE(12, power=0)


@pytest.mark.parametrize("relaxation", RELAXATIONS)
@pytest.mark.parametrize("learn_planes", [True, False])
def test_every_parameter_and_the_input_get_a_gradient(relaxation, learn_planes):
    module = TEMDE(12, n_partitions=3, n_bits=3, relaxation=relaxation, learn_planes=learn_planes, out_dim=8,
                   token_weights=True, power=0.5)
    residual = TEMDE(12, n_partitions=3, n_bits=3, relaxation=relaxation, learn_planes=learn_planes, residual=True)
    residual.train()
    (residual(tokens()) * torch.randn(4, 12)).sum().backward()
    assert residual.sketch_gain.grad.abs() > 0  # a zero gain still learns
    module.train()
    x = tokens().requires_grad_()
    (module(x) * torch.randn(4, 8)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert ("planes" in dict(module.named_parameters())) == learn_planes


def test_straight_through_forward_is_hard():
    module = TEMDE(12, n_partitions=3, n_bits=3, relaxation="straight_through")
    p = module.assignments(tokens())
    hard = torch.nn.functional.one_hot(p.argmax(-1), 8).float()
    torch.testing.assert_close(p, hard, atol=1e-6, rtol=0)  # one-hot up to float rounding of soft - soft


def test_all_padded_rows_give_zeros_not_nan():
    module = TEMDE(12, n_partitions=3, n_bits=3)
    mask = torch.zeros(4, 7, dtype=torch.bool)
    mask[0, :2] = True
    x = tokens().requires_grad_()
    y = module(x, mask)
    assert not torch.isnan(y).any()
    assert torch.all(y[1:] == 0)
    y.sum().backward()
    assert not torch.isnan(x.grad).any()


def test_bad_shapes_and_types_name_the_argument():
    module = TEMDE(12, n_partitions=2, n_bits=2)
    with pytest.raises(ValueError, match="x must be"):
        module(torch.randn(4, 12))
    with pytest.raises(ValueError, match="12"):
        module(torch.randn(2, 3, 11))
    with pytest.raises(ValueError, match="mask"):
        module(tokens(), torch.ones(4, 7))
    with pytest.raises(ValueError, match="mask"):
        module(tokens(), torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="relaxation"):
        TEMDE(12, relaxation="bogus")
    with pytest.raises(ValueError, match="temperature"):
        TEMDE(12, temperature=0)


def test_state_dict_round_trip_keeps_temperature_and_standardisation():
    a = TEMDE(12, n_partitions=2, n_bits=3, temperature=0.3).init_from_tokens(tokens())
    b = TEMDE(12, n_partitions=2, n_bits=3)
    b.load_state_dict(a.state_dict())
    x = tokens(seed=9)
    torch.testing.assert_close(a(x), b(x))


# ---- the hand-written backward of the factorised histogram -------------------------------------------------------

def per_token_histogram(module, x, mask, weights):
    """The autograd path the hand-written backward replaces: the weighted sum of every token's [N, 2**K] code
    probabilities (expand_bits of the bit sigmoids, checked against the product formula above)."""
    return torch.einsum("bl,blnc->bnc", weights, module.assignments(x, mask))


@pytest.mark.parametrize("n_bits", [2, 3, 5, 6])
def test_sigmoid_histogram_passes_gradcheck(n_bits):
    from temde.sketch.temde import SigmoidHistogram, expand_bits

    gen = torch.Generator().manual_seed(n_bits)
    z = (2 * torch.randn(3, 5, 2, n_bits, generator=gen, dtype=torch.float64)).requires_grad_()
    w = torch.rand(3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, w: SigmoidHistogram.apply(z, w, n_bits // 2), (z, w))
    expected = torch.einsum("bl,blnc->bnc", w, expand_bits(torch.sigmoid(z)))
    torch.testing.assert_close(SigmoidHistogram.apply(z, w, n_bits // 2), expected)


VARIANTS = {
    "plain": {},
    "gate+power+proj": dict(token_weights=True, power=0.5, out_dim=5),
    "residual": dict(residual=True),
    "batch-stats+norm-weights+mean": dict(token_stats="batch", sketch_norm="batch", token_weights="norm",
                                          mean_weight=0.4),
}


@pytest.mark.parametrize("n_bits", [3, 4])  # odd: unequal high/low factors; even: equal
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_module_gradients_pass_gradcheck_and_equal_the_autograd_path(n_bits, variant, monkeypatch):
    module = TEMDE(6, n_partitions=2, n_bits=n_bits, temperature=0.7, **VARIANTS[variant]).double()
    x = tokens(3, 5, 6, seed=n_bits).double()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)  # holes, not a prefix
    module.init_from_tokens(x, mask)
    with torch.no_grad():
        if module.gate is not None:
            module.gate.weight.normal_(generator=torch.Generator().manual_seed(1))
        if module.sketch_gain is not None:
            module.sketch_gain.fill_(0.8)
    names = [name for name, _ in module.named_parameters()]
    inputs = (x.requires_grad_(), *[p.detach().clone().requires_grad_() for p in module.parameters()])

    def pooled(x, *values):
        return torch.func.functional_call(module, dict(zip(names, values)), (x, mask))

    assert torch.autograd.gradcheck(pooled, inputs)
    direction = torch.randn(3, module.out_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = torch.autograd.grad((pooled(*inputs) * direction).sum(), inputs)
    monkeypatch.setattr(TEMDE, "_factorised_histogram", per_token_histogram)
    expected = torch.autograd.grad((pooled(*inputs) * direction).sum(), inputs)
    for name, a, b in zip(["x", *names], got, expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=name)


def test_backward_keeps_only_the_bits_and_weights(monkeypatch):
    """Memory autograd keeps beyond the input and the parameters: the hand-written backward stores the bit
    probabilities ([B, L, N, K]) and the weights, where autograd kept every factor of the product."""
    from temde.bench.timing import saved_for_backward_bytes

    module = TEMDE(32, n_partitions=16, n_bits=6).train()
    x = tokens(8, 64, 32).requires_grad_()
    module.init_from_tokens(x)
    exclude = [x, *module.parameters()]
    ours = saved_for_backward_bytes(lambda: module(x), exclude)
    bits = 8 * 64 * 16 * 6 * 4
    sketch_sized = 8 * 16 * 64 * 4  # the histogram and its row-normalised copy
    assert ours <= bits + 8 * 64 * 4 + 4 * sketch_sized + 32 * 96 * 4 * 2
    monkeypatch.setattr(TEMDE, "_factorised_histogram", per_token_histogram)
    assert ours < saved_for_backward_bytes(lambda: module(x), exclude) / 4


def test_far_from_every_plane_the_gradient_has_no_subnormal_numbers():
    from temde.sketch.temde import SigmoidHistogram

    z = torch.tensor([[[[95.0, -95.0, 3.0, -100.0]]]], requires_grad=True)  # sigmoid'(95) < float32's tiny
    counts = SigmoidHistogram.apply(z, torch.ones(1, 1), 2)
    grad, = torch.autograd.grad((counts * torch.arange(16.0)).sum(), z)
    tiny = torch.finfo(torch.float32).tiny
    assert torch.isfinite(grad).all() and not ((grad != 0) & (grad.abs() < tiny)).any()
    assert grad[0, 0, 0, 2] != 0  # the plane it is near still gets its gradient


def bit_products(z: torch.Tensor) -> torch.Tensor:
    """Code probabilities `[..., N, 2**K]` from plane distances `[..., N, K]` by a loop over the codes (most
    significant bit first): the product of sigmoid(+-z_k)."""
    k = z.shape[-1]
    codes = []
    for bits in itertools.product([0, 1], repeat=k):
        p = torch.ones(z.shape[:-1], dtype=z.dtype)
        for j, bit in enumerate(bits):
            p = p * torch.sigmoid((2 * bit - 1) * z[..., j])
        codes.append(p)
    return torch.stack(codes, dim=-1)


def test_batch_token_statistics_standardise_by_the_real_tokens_and_keep_running_averages():
    x = tokens(3, 6, 12) * 4 + 2
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    x = x.masked_fill(~mask.unsqueeze(-1), 1e4)  # padding must not enter the statistics
    module = TEMDE(12, n_partitions=2, n_bits=3, temperature=0.5, token_stats="batch", stats_momentum=0.25)
    module.init_from_tokens(tokens(5, 9, 12, seed=4))
    stored_mean, stored_std = module.in_mean.clone(), module.in_std.clone()
    real = x[mask]  # [n, 12]
    mean, std = real.mean(0), (real.var(0, unbiased=False) + 1e-5).sqrt()
    module.train()
    z = module.plane_distances(x, mask)
    expected = (((x - mean) / std) @ module.planes - module.bias) / 0.5
    torch.testing.assert_close(z[mask], expected[mask].unflatten(-1, (2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(module.in_mean, 0.75 * stored_mean + 0.25 * mean)
    torch.testing.assert_close(module.in_std, 0.75 * stored_std + 0.25 * std)
    module.eval()  # evaluation standardises with the running averages and leaves them alone
    running = module.in_mean.clone(), module.in_std.clone()
    z = module.plane_distances(x, mask)
    expected = (((x - running[0]) / running[1]) @ module.planes - module.bias) / 0.5
    torch.testing.assert_close(z, expected.unflatten(-1, (2, 3)), atol=1e-4, rtol=1e-4)
    assert torch.equal(module.in_mean, running[0])
    with pytest.raises(ValueError, match="token_stats"):
        TEMDE(12, token_stats="bogus")


def test_batch_sketch_norm_standardises_each_sketch_feature_over_the_batch():
    x = tokens(5, 7, 12)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2, 3:] = False
    module = TEMDE(12, n_partitions=2, n_bits=2, sketch_norm="batch").train()
    z = module.plane_distances(x)
    counts = (bit_products(z) * mask[..., None, None]).sum(1)  # [B, N, 4]
    rows = (counts / counts.norm(dim=-1, keepdim=True)).flatten(1)
    standard = (rows - rows.mean(0)) / (rows.var(0, unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(module(x, mask), standard / standard.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-4)
    module.eval()  # then the running averages: one batch at momentum 0.1 from (0, 1)
    mean, var = 0.1 * rows.mean(0), 0.9 + 0.1 * rows.var(0, unbiased=True)
    standard = (rows - mean) / (var + 1e-5).sqrt()
    torch.testing.assert_close(module(x, mask), standard / standard.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="sketch_norm"):
        TEMDE(12, sketch_norm="layer")


def test_norm_token_weights_count_each_token_by_its_length():
    x = tokens(2, 5, 12)
    x[0, 1] = 0.0  # a silenced token adds nothing
    mask = torch.ones(2, 5, dtype=torch.bool)
    module = TEMDE(12, n_partitions=2, n_bits=3, token_weights="norm")
    p = bit_products(module.plane_distances(x))  # [B, L, N, 8]
    expected = torch.zeros(2, 2, 8)
    for b in range(2):
        for t in range(5):
            expected[b] += torch.linalg.vector_norm(x[b, t]) * p[b, t]
    torch.testing.assert_close(module.histogram(x, mask), expected, atol=1e-5, rtol=1e-5)
    assert module.gate is None
    assert TEMDE(12, token_weights=True).token_weights == "gate"  # the boolean form of the earlier versions
    with pytest.raises(ValueError, match="token_weights"):
        TEMDE(12, token_weights="idf")


def test_mean_weight_splits_the_cosine_between_the_means_and_the_sketches():
    a, b = tokens(3, 6, 12, seed=1), tokens(3, 4, 12, seed=2)
    mask_a = torch.ones(3, 6, dtype=torch.bool)
    mask_a[1, 2:] = False
    module = TEMDE(12, n_partitions=2, n_bits=3, mean_weight=0.7)
    plain = TEMDE(12, n_partitions=2, n_bits=3)
    assert module.out_dim == plain.out_dim + 12
    out_a, out_b = module(a, mask_a), module(b)
    torch.testing.assert_close(out_a.norm(dim=-1), torch.ones(3))
    mean_a = torch.stack([a[i, mask_a[i]].mean(0) for i in range(3)])
    mean_b = b.mean(1)
    cos_means = torch.nn.functional.cosine_similarity(mean_a[:, None], mean_b[None], dim=-1)
    cos_sketches = plain(a, mask_a) @ plain(b).t()  # the same seed: the same planes
    torch.testing.assert_close(out_a @ out_b.t(), 0.7 * cos_means + 0.3 * cos_sketches)
    with pytest.raises(ValueError, match="mean_weight"):
        TEMDE(12, mean_weight=1.0)
    with pytest.raises(ValueError, match="choose one"):
        TEMDE(12, mean_weight=0.5, residual=True)
