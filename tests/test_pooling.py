"""Every pool behind make_pool: forward/backward, masking, no NaN, and the attention pool against SGRAF's math."""
import math

import pytest
import torch
import torch.nn.functional as F

from temde.pooling import AttentionPool, list_pools, make_pool


def batch(b=4, l=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    return x, mask


@pytest.mark.parametrize("kind", list_pools())
def test_forward_backward_every_parameter_gets_a_gradient(kind):
    pool = make_pool(kind, 16, **({"heads": 4} if kind == "mha" else {}))
    pool.train()
    x, mask = batch()
    x.requires_grad_()
    y = pool(x, mask)
    assert y.shape == (4, pool.out_dim)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(4))
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, param in pool.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("kind", list_pools())
def test_padding_is_ignored_and_order_does_not_matter(kind):
    pool = make_pool(kind, 16, **({"heads": 4} if kind == "mha" else {})).eval()
    x, mask = batch()
    garbage = x.masked_fill(~mask.unsqueeze(-1), 50.0)
    torch.testing.assert_close(pool(garbage, mask), pool(x, mask))
    perm = torch.tensor([5, 0, 4, 1, 3, 2])
    # rows 0 and 3 are fully real, so permuting their tokens must not change their pooled vector
    torch.testing.assert_close(pool(x[:, perm], mask[:, perm])[[0, 3]], pool(x, mask)[[0, 3]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list_pools())
def test_all_padded_row_is_finite(kind):
    pool = make_pool(kind, 16, **({"heads": 4} if kind == "mha" else {}))
    x, mask = batch()
    mask[3] = False
    x.requires_grad_()
    y = pool(x, mask)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_attention_pool_matches_sgraf_text_sa_loop():
    """TextSA as SGRAF runs it: one caption at a time, only its real words, no mask needed."""
    pool = AttentionPool(16, batchnorm=False, dropout=0.0).eval()
    x, mask = batch()
    got = pool(x, mask)
    for i in range(4):
        words = x[i, mask[i]].unsqueeze(0)
        mean = words.mean(1)
        l_emb = torch.tanh(pool.local_linear(words))
        g_emb = torch.tanh(pool.global_linear(mean)).unsqueeze(1).repeat(1, words.shape[1], 1)
        weights = torch.softmax(pool.score(l_emb * g_emb).squeeze(2), dim=1)
        expected = F.normalize((weights.unsqueeze(2) * words).sum(1), dim=-1)
        torch.testing.assert_close(got[i], expected[0], atol=1e-6, rtol=1e-5)


def test_mean_pool_and_sgraf_initialisation():
    x, mask = batch()
    y = make_pool("mean", 16)(x, mask)
    torch.testing.assert_close(y[2], F.normalize(x[2, 0], dim=0))
    bound = math.sqrt(6) / math.sqrt(32)
    assert AttentionPool(16).local_linear.weight.abs().max() <= bound


def test_make_pool_rejects_unknown_kind_and_option():
    with pytest.raises(ValueError, match="pooling kind"):
        make_pool("bogus", 16)
    with pytest.raises(ValueError, match="mean"):
        make_pool("mean", 16, heads=2)


# ---- GPO (VSE-infinity) and max against per-set loops ------------------------------------------------------------

def gpo_reference(pool, x, mask):
    """GPO as VSE-infinity runs it on one set: its real tokens only (no packing, no mask), the rank encodings
    written out from the sinusoid formula, both GRU directions averaged, softmax(score / 0.1) over the n ranks."""
    d_pe, hidden = pool.gru.input_size, pool.gru.hidden_size
    rows = []
    for b in range(len(x)):
        real = x[b, mask[b]]
        n = len(real)
        if n == 0:
            rows.append(torch.zeros(x.shape[-1], dtype=x.dtype))
            continue
        pe = torch.zeros(n, d_pe, dtype=x.dtype)
        for r in range(n):
            for i in range(0, d_pe, 2):
                angle = r / 10000 ** (i / d_pe)
                pe[r, i], pe[r, i + 1] = math.sin(angle), math.cos(angle)
        out, _ = pool.gru(pe.unsqueeze(0))
        out = (out[..., :hidden] + out[..., hidden:]) / 2
        weights = torch.softmax(pool.linear(out)[0, :, 0] / 0.1, dim=0)
        ranked = real.sort(dim=0, descending=True).values  # per feature, largest first
        rows.append(F.normalize((weights[:, None] * ranked).sum(0), dim=0))
    return torch.stack(rows)


def interleaved_batch(d=16, seed=1):
    """Sets of 7, 4, 1 and 0 real tokens with the padding between real tokens, not only at the end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 7, d, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 1, 0, 0], [0] * 7],
                        dtype=torch.bool)
    return x, mask


def test_gpo_matches_a_per_set_loop_and_ignores_where_the_padding_sits():
    pool = make_pool("gpo", 16).double()
    with torch.no_grad():  # weights of a spread that makes the rank weights far from uniform
        for param in pool.parameters():
            param.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    x, mask = interleaved_batch()
    expected = gpo_reference(pool, x, mask)
    for mode in (True, False):
        pool.train(mode)
        torch.testing.assert_close(pool(x, mask), expected, atol=1e-10, rtol=1e-10)
    garbage = x.masked_fill(~mask.unsqueeze(-1), 1e6)  # padding larger than every real value still sorts last
    torch.testing.assert_close(pool(garbage, mask), expected, atol=1e-10, rtol=1e-10)
    compact = torch.zeros_like(x)  # the same sets packed to the front
    for b in range(4):
        compact[b, :int(mask[b].sum())] = x[b, mask[b]]
    prefix = torch.arange(7) < mask.sum(1, keepdim=True)
    torch.testing.assert_close(pool(compact, prefix), expected, atol=1e-10, rtol=1e-10)


def test_gpo_rank_weights_sum_to_one_over_the_real_ranks():
    pool = make_pool("gpo", 8)
    sizes = torch.tensor([5, 2, 0, 5, 1])
    weights = pool.rank_weights(sizes, 6)
    assert weights.shape == (5, 6)
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    assert (weights[torch.arange(6) >= sizes.unsqueeze(1)] == 0).all()
    torch.testing.assert_close(weights[0], weights[3])  # the weights depend on the set size alone
    assert weights[4, 0] == 1.0


def test_max_pool_matches_a_per_set_loop():
    x, mask = interleaved_batch()
    got = make_pool("max", 16)(x, mask)
    for b in range(3):
        torch.testing.assert_close(got[b], F.normalize(x[b, mask[b]].max(0).values, dim=0))
    assert (got[3] == 0).all()
