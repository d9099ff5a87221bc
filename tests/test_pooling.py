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
