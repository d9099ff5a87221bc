"""T-EMDE: a trainable, differentiable EMDE sketch of a set of tokens.

Every token is hashed *softly* into the buckets of `n_partitions` partitionings, each cut by `n_bits`
hyperplanes. For plane k of partitioning n the token's scaled signed distance is
    z = (standardise(x) . w_nk - b_nk) / temperature
and the probability of bucket code c (bits c_k, signs s_k = 2 c_k - 1) is
    p(c) = prod_k sigmoid(s_k z_k) = softmax_c(1/2 sum_k s_k z_k),
so as temperature -> 0 it becomes the one-hot code of classic EMDE (DLSH.codes). The sketch of a token set is
the masked sum of p over tokens: an `[n_partitions, 2**n_bits]` histogram, each row L2-normalised, flattened,
and optionally projected to `out_dim`. Cost is linear in the number of tokens: O(L d NK + L N 2^K).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from temde.sketch.emde import DLSH, bit_weights
from temde.sketch.validation import check_tokens, masked_mean

RELAXATIONS = ("sigmoid", "gumbel", "straight_through")
TOKEN_STATS = ("fixed", "batch")
SKETCH_NORMS = ("none", "batch")
TOKEN_WEIGHTS = ("none", "gate", "norm")


def code_signs(n_bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """`[2**n_bits, n_bits]` matrix of +-1: row c holds the signs of code c's bits, most significant first."""
    codes = torch.arange(2 ** n_bits, device=device)
    bits = (codes.unsqueeze(-1) // bit_weights(n_bits, device)) % 2
    return (2 * bits - 1).to(dtype)


def expand_bits(bits: torch.Tensor) -> torch.Tensor:
    """Per-bit probabilities `[..., K]` -> code probabilities `[..., 2**K]`, most significant bit first.

    p(c) = prod_k a_k^c_k (1 - a_k)^(1 - c_k), with no exponential (a softmax over 2**K logits costs 2**K of
    them). The histogram of the sigmoid relaxation never needs these per token (TEMDE._factorised_histogram);
    they serve `TEMDE.assignments`.
    """
    return _code_factor(bits.movedim(-1, 0)).movedim(0, -1)


def _code_factor(bits: torch.Tensor) -> torch.Tensor:
    """Per-bit probabilities `[k, ...]` -> code probabilities `[2**k, ...]` (most significant bit first), with the
    code axis first so each product runs over the long contiguous trailing axes."""
    out = torch.stack([1 - bits[0], bits[0]])
    for bit in bits[1:]:
        out = (out.unsqueeze(1) * torch.stack([1 - bit, bit]).unsqueeze(0)).flatten(0, 1)
    return out


def _code_factor_backward(bits: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of `sum_c grad[c] * _code_factor(bits)[c]` with respect to `bits` `[k, ...]`.

    Code c's probability is a product of one factor per bit (a_j or 1 - a_j), so its derivative in a_j is
    +-(product of the other bits' factors): the difference of the two halves of `grad` split on bit j, weighted
    by the codes of the other k - 1 bits. No division by a factor, so it stays exact where a factor is 0.
    """
    k, rest = bits.shape[0], grad.shape[1:]
    halves = grad.view((2,) * k + tuple(rest))
    out = []
    for j in range(k):
        diff = halves.select(j, 1) - halves.select(j, 0)  # [2] * (k - 1) + rest
        if k == 1:
            out.append(diff)
        else:
            others = _code_factor(torch.cat([bits[:j], bits[j + 1:]]))  # [2**(k-1), ...]
            out.append((diff.reshape((-1,) + tuple(rest)) * others).sum(0))
    return torch.stack(out)


class SigmoidHistogram(torch.autograd.Function):
    """Masked, weighted sum over tokens of the sigmoid-product code probabilities, factorised, with a
    hand-written backward.

    `apply(z [B, L, N, K], weights [B, L], high) -> counts [B, N, 2**K]`, where z are the scaled plane distances
    and `high` the number of high bits of the factorisation. A code's probability factorises over its high and
    low bits, p(c) = p_high(h) p_low(l), so the sum over tokens is a matrix product per (set, partitioning):
    counts[h, l] = sum_t w_t p_high_t(h) p_low_t(l) = (P_high^T diag(w) P_low)[h, l], factors of 2**(K/2)
    columns built with the tokens as the innermost (contiguous) axis.

    Autograd would keep every intermediate factor and its permuted copies. This backward keeps only the bit
    probabilities `sigmoid(z)` ([K, B, N, L], the size of z) and the weights, and rebuilds the two factors:
        dL/d(w p_high) = G P_low^T,  dL/dp_low = G^T (w p_high),  dL/dw_t = sum_{n,h} dL/d(w p_high) p_high,
    then through each factor's product of bits (`_code_factor_backward`) and the sigmoid, a (1 - a).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, weights: torch.Tensor, high: int) -> torch.Tensor:
        bits = torch.sigmoid(z).permute(3, 0, 2, 1).contiguous()  # [K, B, N, L]: tokens innermost
        p_high = _code_factor(bits[:high]) * weights[None, :, None, :]  # [2**high, B, N, L]
        p_low = _code_factor(bits[high:])  # [2**(K - high), B, N, L]
        counts = torch.matmul(p_high.permute(1, 2, 0, 3), p_low.permute(1, 2, 3, 0))  # [B, N, 2**high, 2**low]
        ctx.save_for_backward(bits, weights)
        ctx.high = high
        return counts.flatten(2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        bits, weights = ctx.saved_tensors
        high = ctx.high
        n_bits, batch, parts, _ = bits.shape
        grad = grad.reshape(batch, parts, 2 ** high, 2 ** (n_bits - high))
        p_high = _code_factor(bits[:high])  # [Hc, B, N, L], unweighted
        p_low = _code_factor(bits[high:])  # [Lc, B, N, L]
        w = weights[None, :, None, :]
        grad_high_w = torch.matmul(grad, p_low.permute(1, 2, 0, 3))  # [B, N, Hc, L]: d/d(w p_high)
        grad_weights = grad_z = None
        if ctx.needs_input_grad[1]:
            grad_weights = (grad_high_w * p_high.permute(1, 2, 0, 3)).sum((1, 2))
        if ctx.needs_input_grad[0]:
            grad_low = torch.matmul(grad.transpose(-1, -2), (p_high * w).permute(1, 2, 0, 3))  # [B, N, Lc, L]
            del p_high, p_low
            grad_bits = torch.cat([
                _code_factor_backward(bits[:high], grad_high_w.permute(2, 0, 1, 3) * w),
                _code_factor_backward(bits[high:], grad_low.permute(2, 0, 1, 3)),
            ])  # [K, B, N, L]
            # Back to z's layout, contiguous: the plane product's backward (two matrix products over every token)
            # falls off the fast BLAS path with permuted strides, 3-5x slower on a CPU.
            grad_z = (grad_bits * bits * (1 - bits)).permute(1, 3, 2, 0).contiguous()  # [B, L, N, K]
            # Flush subnormal values to zero: a token far from a plane (|z| > ~87 in float32) gets a gradient below
            # the smallest normal number, and subnormal operands make the next matrix products 10-30x slower on
            # x86 CPUs. Nothing of that size survives the sum over tokens anyway.
            grad_z.masked_fill_(grad_z.abs() < torch.finfo(grad_z.dtype).tiny, 0.0)
        return grad_z, grad_weights, None


class TEMDE(nn.Module):
    """Trainable EMDE pooling: `forward(x [B, L, dim], mask [B, L]) -> [B, out_dim]`, L2-normalised rows.

    Args:
        dim: features per token.
        n_partitions: independent partitionings N (sketch depth).
        n_bits: hyperplanes per partitioning K; each partitioning has 2**K buckets (sketch width).
        temperature: softness of the bucket assignment; -> 0 gives EMDE's hard codes.
        relaxation: "sigmoid" (product of per-bit sigmoids), "gumbel" (Gumbel-softmax while training, the
            sigmoid product in eval) or "straight_through" (hard one-hot forward, sigmoid-product gradient).
        learn_planes: train the hyperplanes and biases (False keeps the DLSH partitioning fixed; the sketch is
            still differentiable with respect to the tokens).
        out_dim: if set, a Linear from the flattened sketch (N * 2**K) to out_dim; else out_dim = N * 2**K.
        residual: output mean(tokens) + g * proj(sketch), with out_dim = dim and a learned scalar g that starts
            at 0. The output lives in the token space, as attention pooling's does (a weighted mean of the
            tokens); the sketch adds the shape of the set's density on top of its centroid, and starting silent
            it is only weighted in as far as training finds it useful.
        token_weights: how much each token adds to the counts. "none" (or False): 1 per real token, so every
            token, background regions and stop words included, owns the same mass. "gate" (or True): a learned
            gate sigmoid(x . u) (still linear in the tokens). "norm": the token's length |x|, the weight the
            masked mean gives a token implicitly: an encoder can silence a token by shrinking it, as it does
            under mean pooling (scaling every weight alike cancels in the row normalisation).
        power: counts ** power before the row normalisation (0.5: square-root, the usual remedy for bursty
            histograms, where one dominant bucket flattens the rest after L2); 1 keeps the plain counts.
        token_stats: how tokens are standardised before the planes. "fixed": the mean and spread measured once
            (init_from_tokens), DLSH's. "batch": while training, the mean and spread of the batch's real tokens
            (a BatchNorm without affine, running averages kept for evaluation). An encoder trained under the
            sketch changes the scale of its tokens (the BiGRU's spread grows ~1.7x in a few hundred steps), and
            with fixed statistics that sharpens every soft code towards a hard one; batch statistics keep the
            temperature in units of the tokens' current spread (in the dual encoder: saturated bits 32% -> 14%,
            the same rsum; docs/ablations.md section 6).
        sketch_norm: "batch" standardises each sketch feature over the batch (BatchNorm without affine, running
            averages for evaluation) before the projection and the final L2: every histogram shares a large
            common shape (the density of all tokens), which otherwise dominates the cosine of two sketches;
            the standardised sketch compares deviations from it. "none" keeps the row-normalised counts.
        stats_momentum: weight of the newest batch in the running averages of both "batch" options.
        mean_weight: w in [0, 1): output the concatenation [sqrt(w) mean(tokens)/|.|, sqrt(1 - w) sketch/|.|],
            so the cosine of two pooled sets is w cos(means) + (1 - w) cos(sketches): the centroid and the
            shape of the density side by side, each with a fixed share of the score (unlike `residual`, whose
            learned gain can leave the sketch out). out_dim grows by dim. 0 (default): the sketch alone.
        seed: seed of the random hyperplane directions.
    """

    def __init__(
        self,
        dim: int,
        n_partitions: int = 16,
        n_bits: int = 6,
        temperature: float = 1.0,
        relaxation: str = "sigmoid",
        learn_planes: bool = True,
        out_dim: int | None = None,
        residual: bool = False,
        token_weights: bool | str = "none",
        power: float = 1.0,
        token_stats: str = "fixed",
        sketch_norm: str = "none",
        stats_momentum: float = 0.1,
        mean_weight: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        if not 1 <= n_bits <= 12:
            raise ValueError(f"n_bits must be in [1, 12] (2**n_bits buckets per partitioning), got {n_bits}")
        if n_partitions < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if residual and out_dim not in (None, dim):
            raise ValueError(f"residual=True adds the sketch to the token mean: out_dim must be dim ({dim}), got {out_dim}")
        if not 0 < power <= 1:
            raise ValueError(f"power must be in (0, 1], got {power}")
        if token_stats not in TOKEN_STATS:
            raise ValueError(f"token_stats must be one of {TOKEN_STATS}, got {token_stats!r}")
        if sketch_norm not in SKETCH_NORMS:
            raise ValueError(f"sketch_norm must be one of {SKETCH_NORMS}, got {sketch_norm!r}")
        if not 0 < stats_momentum <= 1:
            raise ValueError(f"stats_momentum must be in (0, 1], got {stats_momentum}")
        token_weights = {False: "none", True: "gate"}.get(token_weights, token_weights)
        if token_weights not in TOKEN_WEIGHTS:
            raise ValueError(f"token_weights must be one of {TOKEN_WEIGHTS}, got {token_weights!r}")
        if not 0 <= mean_weight < 1:
            raise ValueError(f"mean_weight must be in [0, 1), got {mean_weight}")
        if residual and mean_weight:
            raise ValueError("residual=True and mean_weight > 0 both add the token mean: choose one")
        if residual:
            out_dim = dim
        self.dim = dim
        self.mean_weight = float(mean_weight)
        self.power = float(power)
        self.residual = residual
        self.n_partitions = n_partitions
        self.n_bits = n_bits
        self.relaxation = relaxation
        self.learn_planes = learn_planes
        self.token_stats = token_stats
        self.stats_momentum = float(stats_momentum)
        self.seed = seed
        self.sketch_dim = n_partitions * 2 ** n_bits
        self.out_dim = (out_dim if out_dim is not None else self.sketch_dim) + (dim if mean_weight else 0)

        # Random directions: for unit-norm tokens x . w ~ N(0, 1), so the temperature has a meaning even before
        # the data-driven initialisation (init_from_tokens) sets median biases and per-plane scales.
        generator = torch.Generator().manual_seed(seed)
        planes = torch.randn(dim, n_partitions * n_bits, generator=generator)
        bias = torch.zeros(n_partitions * n_bits)
        if learn_planes:
            self.planes = nn.Parameter(planes)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("planes", planes)
            self.register_buffer("bias", bias)
        # Per-feature standardisation of the tokens (DLSH's); identity until init_from_tokens/from_dlsh.
        self.register_buffer("in_mean", torch.zeros(dim))
        self.register_buffer("in_std", torch.ones(dim))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("signs", code_signs(n_bits), persistent=False)
        self.sketch_norm = (nn.BatchNorm1d(self.sketch_dim, affine=False, momentum=stats_momentum)
                            if sketch_norm == "batch" else None)
        self.proj = nn.Linear(self.sketch_dim, out_dim) if out_dim is not None else None
        # No bias: scaling every token's weight alike cancels in the row normalisation, so a bias would have no
        # gradient at the start. Zero weights start the gate as a uniform 1/2 per token.
        self.sketch_gain = nn.Parameter(torch.zeros(())) if residual else None
        self.token_weights = token_weights
        self.gate = nn.Linear(dim, 1, bias=False) if token_weights == "gate" else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)

    # ---- initialisation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def load_dlsh(self, dlsh: DLSH) -> "TEMDE":
        """Take a fitted DLSH's partitioning. Each plane is scaled by the spread of its projections on the
        fitting data, so z is in units of that spread and the temperature is comparable across planes."""
        if not dlsh.fitted:
            raise ValueError("dlsh must be fitted before it initialises a TEMDE")
        if (dlsh.n_partitions, dlsh.n_bits) != (self.n_partitions, self.n_bits):
            raise ValueError(
                f"dlsh has {dlsh.n_partitions}x{dlsh.n_bits} planes, TEMDE has {self.n_partitions}x{self.n_bits}")
        if dlsh.directions.shape[0] != self.dim:
            raise ValueError(f"dlsh was fitted on {dlsh.directions.shape[0]} features, TEMDE has dim={self.dim}")
        scale = dlsh.proj_std.clamp_min(1e-6)
        self.in_mean.copy_(dlsh.mean)
        self.in_std.copy_(dlsh.std)
        self.planes.copy_(dlsh.directions / scale)
        self.bias.copy_(dlsh.bias / scale)
        return self

    @classmethod
    def from_dlsh(cls, dlsh: DLSH, temperature: float = 1.0, **kwargs) -> "TEMDE":
        """A TEMDE with `dlsh`'s planes: as temperature -> 0 its soft codes become `dlsh.codes` for every point
        off the planes (a point on a plane, such as the median point of an odd-sized fit set, stays split between
        its two buckets; docs/method.md, "Hard limit")."""
        module = cls(dlsh.directions.shape[0], dlsh.n_partitions, dlsh.n_bits, temperature=temperature,
                     seed=dlsh.seed, **kwargs)
        return module.to(dlsh.directions.device).load_dlsh(dlsh)  # on the device the DLSH lives on

    @torch.no_grad()
    def init_from_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> "TEMDE":
        """Data-driven initialisation (DLSH on real tokens): standardise, Gaussian directions, median biases.

        x: `[M, dim]` tokens, or `[B, L, dim]` with an optional `[B, L]` mask of the real ones.
        """
        if x.dim() == 3:
            x = x[check_tokens(x, mask, self.dim)]
        elif x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [tokens, {self.dim}] or [batch, tokens, {self.dim}], got {tuple(x.shape)}")
        dlsh = DLSH(self.n_partitions, self.n_bits, seed=self.seed).fit(x.detach().float())
        return self.load_dlsh(dlsh.to(self.planes.device))

    def set_temperature(self, value: float) -> None:
        if value <= 0:
            raise ValueError(f"temperature must be > 0, got {value}")
        self.temperature.fill_(float(value))

    # ---- forward --------------------------------------------------------------------------------------------
    def token_statistics(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, spread) `[dim]` that standardise the tokens: the stored ones, or with token_stats="batch" in
        training mode those of the real tokens of `x` (differentiable), folded into the running averages."""
        if self.token_stats != "batch" or not self.training:
            return self.in_mean, self.in_std
        weights = (torch.ones(x.shape[:-1], device=x.device, dtype=x.dtype) if mask is None
                   else mask.to(x.dtype)).unsqueeze(-1)
        count = weights.sum().clamp_min(1.0)
        mean = (x * weights).sum(tuple(range(x.dim() - 1))) / count
        var = (((x - mean) ** 2) * weights).sum(tuple(range(x.dim() - 1))) / count
        std = (var + 1e-5).sqrt()
        with torch.no_grad():
            self.in_mean.lerp_(mean.detach().to(self.in_mean.dtype), self.stats_momentum)
            self.in_std.lerp_(std.detach().to(self.in_std.dtype), self.stats_momentum)
        return mean, std

    def plane_distances(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z = (standardise(x) . w - b) / temperature, `[..., N, K]` (`mask`: the real tokens, whose statistics
        standardise a training batch when token_stats="batch").

        The standardisation and temperature are folded into a [dim, NK] matrix first: that is a few thousand
        operations instead of two extra passes over every token.
        """
        mean, std = self.token_statistics(x, mask)
        scale = std.unsqueeze(-1) * self.temperature
        planes = self.planes / scale
        bias = (self.bias + (mean / std) @ self.planes) / self.temperature
        return (x @ planes.to(x.dtype) - bias.to(x.dtype)).unflatten(-1, (self.n_partitions, self.n_bits))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket logits `[..., N, 2**K]`: 1/2 sum_k s_k z_k, whose softmax is the product of bit sigmoids."""
        return self._code_logits(self.plane_distances(x))

    def _code_logits(self, z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z @ self.signs.to(z.dtype).t()

    def assignments(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Soft (or straight-through hard) bucket assignment of each token: `[..., N, 2**K]`, rows sum to 1."""
        z = self.plane_distances(x, mask)
        if self.relaxation == "sigmoid":
            return expand_bits(torch.sigmoid(z))
        logits = self._code_logits(z)
        if self.relaxation == "gumbel" and not self.training:
            return logits.softmax(-1)  # no sampling noise at evaluation: the sigmoid product
        if self.relaxation == "gumbel":
            return F.gumbel_softmax(logits, tau=1.0, hard=False, dim=-1)
        soft = logits.softmax(-1)
        hard = F.one_hot(logits.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard + soft - soft.detach()

    def histogram(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised soft counts `[B, N, 2**K]`: the (weighted) masked sum of the tokens' bucket assignments."""
        mask = check_tokens(x, mask, self.dim)
        weights = mask.to(x.dtype)
        if self.gate is not None:
            weights = weights * torch.sigmoid(self.gate(x).squeeze(-1)).to(x.dtype)
        elif self.token_weights == "norm":
            weights = weights * x.norm(dim=-1)
        if self.relaxation == "sigmoid" and self.n_bits >= 2:
            return self._factorised_histogram(x, mask, weights)
        p = self.assignments(x, mask)  # [B, L, N, W]
        # A [B, 1, L] x [B, L, N*W] product: one pass over p, and padded tokens get weight 0.
        counts = torch.bmm(weights.to(p.dtype).unsqueeze(1), p.flatten(2))
        return counts.view(x.shape[0], self.n_partitions, -1)

    def _factorised_histogram(self, x: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The sigmoid-product histogram without materialising the `[B, L, N, 2**K]` assignments, with a
        hand-written backward (`SigmoidHistogram`) that keeps only the bit probabilities and the token weights."""
        z = self.plane_distances(x, mask)
        return SigmoidHistogram.apply(z, weights.to(z.dtype), self.n_bits // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled sketch `[B, out_dim]`, L2-normalised. A row with no real token is the sketch of the empty set
        (a zero histogram): zeros without projection, the normalised projection bias with one. Never NaN."""
        mask = check_tokens(x, mask, self.dim)
        counts = self.histogram(x, mask)
        if self.power != 1.0:  # the floor keeps the gradient of counts ** power finite near empty buckets
            counts = torch.where(counts > 0, counts.clamp_min(1e-6) ** self.power, torch.zeros_like(counts))
        sketch = F.normalize(counts, p=2, dim=-1).flatten(1)
        if self.sketch_norm is not None:
            sketch = self.sketch_norm(sketch)
        if self.proj is not None:
            sketch = self.proj(sketch)
        if self.residual:
            sketch = masked_mean(x, mask) + self.sketch_gain * sketch
        if self.mean_weight:
            return torch.cat([math.sqrt(self.mean_weight) * F.normalize(masked_mean(x, mask), p=2, dim=-1),
                              math.sqrt(1 - self.mean_weight) * F.normalize(sketch, p=2, dim=-1)], dim=-1)
        return F.normalize(sketch, p=2, dim=-1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_partitions={self.n_partitions}, n_bits={self.n_bits}, "
                f"temperature={float(self.temperature):g}, relaxation={self.relaxation!r}, "
                f"learn_planes={self.learn_planes}, out_dim={self.out_dim}, residual={self.residual}, "
                f"token_weights={self.token_weights!r}, power={self.power:g}, token_stats={self.token_stats!r}, "
                f"sketch_norm={'batch' if self.sketch_norm is not None else 'none'!r}, mean_weight={self.mean_weight:g}")


def default_temperature_schedule(start: float, end: float, steps: int, step: int) -> float:
    """Geometric annealing from `start` to `end` over `steps` (for temperature-annealing experiments)."""
    if steps <= 0 or step >= steps:
        return end
    return start * math.exp(math.log(end / start) * step / steps)
