"""Pooling peers that exist only for comparison: a linear-attention pool built on a PyPI implementation.

Nystromformer (Xiong et al. 2021, package `nystrom-attention`) approximates softmax attention with landmarks in
O(L); it is the linear-attention peer of the speed record. Installed with `pip install temde[peers]`.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from temde.sketch.validation import check_tokens, masked_mean


class NystromPool(nn.Module):
    """y = LayerNorm(x + NystromAttention(x)), masked mean, L2 — the MHA pool with linear attention inside."""

    def __init__(self, dim: int, heads: int = 8, landmarks: int = 64):
        super().__init__()
        try:
            from nystrom_attention import NystromAttention
        except ImportError as exc:  # optional dependency of the benchmark only
            raise ImportError("the nystrom peer needs `pip install nystrom-attention` (temde[peers])") from exc
        self.dim = self.out_dim = dim
        self.attention = NystromAttention(dim, dim_head=dim // heads, heads=heads, num_landmarks=landmarks,
                                          residual=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, local: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = check_tokens(local, mask, self.dim)
        attended = self.attention(local, mask=mask)
        return F.normalize(masked_mean(self.norm(local + attended), mask), p=2, dim=-1)


def peer_available(name: str) -> bool:
    if name != "nystrom":
        return False
    try:
        import nystrom_attention  # noqa: F401
    except ImportError:
        return False
    return True
