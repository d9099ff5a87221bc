"""Classic EMDE: density-dependent LSH (DLSH), additive sketches and their decoding.

A DLSH draws `n_partitions` independent partitionings of the space, each cut by `n_bits` hyperplanes with
Gaussian directions. Vectors are standardised per feature and every bias is the median projection of the
fitting data, so each hyperplane splits that data about 50/50: dense regions get finer buckets (the
"density-dependent" part). A set of vectors becomes, per partitioning, a histogram over its 2**n_bits buckets.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn
import torch.nn.functional as F


def bit_weights(n_bits: int, device=None) -> torch.Tensor:
    """Place values of the bits of a bucket code, most significant first: [2**(K-1), ..., 2, 1]."""
    return 2 ** torch.arange(n_bits - 1, -1, -1, device=device)


def _check_float(name: str, x: torch.Tensor, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")


class DLSH(nn.Module):
    """Density-dependent locality-sensitive hashing.

    Hyperplane `k` of partitioning `p` is column `p * n_bits + k` of `project()`.
    """

    def __init__(self, n_partitions: int, n_bits: int, seed: int = 0):
        super().__init__()
        if n_partitions < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        if not 1 <= n_bits <= 30:
            raise ValueError(f"n_bits must be in [1, 30], got {n_bits}")
        self.n_partitions = n_partitions
        self.n_bits = n_bits
        self.seed = seed
        # Filled by fit(); empty buffers keep state_dict/.to() working before and after.
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))
        self.register_buffer("directions", torch.empty(0))
        self.register_buffer("bias", torch.empty(0))
        self.register_buffer("proj_std", torch.empty(0))  # spread of each plane's projections on the fit data

    @property
    def n_planes(self) -> int:
        return self.n_partitions * self.n_bits

    @property
    def width(self) -> int:
        return 2 ** self.n_bits

    @property
    def fitted(self) -> bool:
        return self.directions.numel() > 0

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "DLSH":
        """Fit standardisation and median biases on vectors `x [..., dim]` (all leading axes are samples)."""
        _check_float("x", x, min_dim=1)
        flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if flat.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 vectors to fit DLSH, got {flat.shape[0]}")
        dim = flat.shape[1]
        self.mean = flat.mean(0)
        # Constant features would divide by zero; they carry no information, so leave them unscaled.
        self.std = flat.std(0).clamp_min(1e-6)
        generator = torch.Generator().manual_seed(self.seed)
        self.directions = torch.randn(dim, self.n_planes, generator=generator).to(flat.device)
        projections = ((flat - self.mean) / self.std) @ self.directions
        # Midpoint of the two middle projections: with an even number of vectors (and two distinct middle
        # projections) no vector lies on a plane, so every plane splits the fitting data exactly in half and the
        # soft T-EMDE codes' hard limit agrees with codes() on all of it. With an odd number the median is one
        # vector's projection: that vector lies on the plane (up to rounding), where the soft codes give 1/2 at
        # every temperature instead of codes()' bit 0 (docs/method.md).
        n = projections.shape[0]
        low = projections.kthvalue((n + 1) // 2, dim=0).values
        high = projections.kthvalue(n // 2 + 1, dim=0).values
        self.bias = (low + high) / 2
        self.proj_std = projections.std(0)
        return self

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Signed distance (up to scale) of each vector to each hyperplane: `[..., n_partitions * n_bits]`."""
        if not self.fitted:
            raise RuntimeError("DLSH is not fitted: call .fit(x) first")
        _check_float("x", x)
        if x.shape[-1] != self.directions.shape[0]:
            raise ValueError(f"x has {x.shape[-1]} features, DLSH was fitted on {self.directions.shape[0]}")
        # In the buffers' dtype (float32 after fit, as the fit itself computed): a float64 input gets the codes of
        # its float32 values, the same as fit assigned them, and a half input is not rounded further.
        x = x.to(self.directions.dtype)
        return ((x - self.mean) / self.std) @ self.directions - self.bias

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket of each vector in each partitioning: LongTensor `[..., n_partitions]` in `[0, 2**n_bits)`."""
        bits = (self.project(x) > 0).reshape(*x.shape[:-1], self.n_partitions, self.n_bits)
        return (bits.long() * bit_weights(self.n_bits, x.device)).sum(-1)


def sketch(codes: torch.Tensor, n_bits: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum members into per-partitioning bucket histograms.

    codes: LongTensor `[..., L, N]` (the token axis is the one before the partition axis).
    weights: optional `[..., L]` non-negative weights (counts, amounts, time decay); default 1 per token.
    Returns `[..., N, 2**n_bits]` float. Additive: the sketch of a union is the sum of the sketches.
    """
    if codes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.dim() < 2:
        raise ValueError(f"codes must be [..., L, n_partitions], got shape {tuple(codes.shape)}")
    width = 2 ** n_bits
    if codes.numel() and (codes.min() < 0 or codes.max() >= width):
        raise ValueError(f"codes must lie in [0, {width}) for n_bits={n_bits}")
    if weights is None:
        weights = torch.ones(codes.shape[:-1], dtype=torch.float32, device=codes.device)
    elif weights.shape != codes.shape[:-1]:
        raise ValueError(f"weights must have shape {tuple(codes.shape[:-1])}, got {tuple(weights.shape)}")
    index = codes.long().transpose(-1, -2)  # [..., N, L]
    src = weights.unsqueeze(-2).expand(index.shape).to(torch.float32 if not weights.is_floating_point() else weights.dtype)
    out = torch.zeros(*index.shape[:-1], width, dtype=src.dtype, device=codes.device)
    return out.scatter_add_(-1, index, src)


def score(sketch_: torch.Tensor, codes: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Decode a sketch: geometric mean over partitionings of `eps` + the sketch value at each item's bucket,
    exp(mean_n log(eps + x_n)).

    sketch_: `[..., N, W]`; codes: `[..., M, N]` (items to score, broadcast against the sketch's leading axes).
    Returns `[..., M]`. The default eps=0 is the exact geometric mean: an item that falls in an empty bucket of
    any partitioning scores 0 (Count-Min-like), so on a sparse sketch most items tie at 0. eps > 0 smooths as
    EMDE's authors' notebook does (log(eps + x) over partitionings; the mean ranks as their sum does): an item
    with some empty buckets still scores by its other ones. Every score is then >= eps; choose eps below the
    smallest non-zero bucket value that should matter (one member's weight, or 1 / members for L1-normalised
    rows), since it sets how much one empty bucket costs.
    """
    if sketch_.dim() < 2 or codes.dim() < 2 or codes.shape[-1] != sketch_.shape[-2]:
        raise ValueError(f"codes [..., M, N] must match sketch [..., N, W]: got {tuple(codes.shape)} and {tuple(sketch_.shape)}")
    if not (isinstance(eps, numbers.Real) and 0 <= eps < math.inf):  # NaN fails both comparisons
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    values = torch.gather(
        sketch_.unsqueeze(-3).expand(*codes.shape[:-1], *sketch_.shape[-2:]),
        -1,
        codes.long().unsqueeze(-1),
    ).squeeze(-1)  # [..., M, N]
    return (values.clamp_min(0) + eps).log().mean(-1).exp()


def l1_normalize_rows(sketch_: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each partitioning row sums to 1 (a distribution): EMDE's target normalisation. Empty rows stay 0."""
    return F.normalize(sketch_, p=1, dim=-1, eps=eps)


def l2_normalize_rows(sketch_: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each partitioning row has unit L2 norm: EMDE's input normalisation. Empty rows stay 0."""
    return F.normalize(sketch_, p=2, dim=-1, eps=eps)
