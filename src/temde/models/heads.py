"""SGRAF's two similarity heads over the nodes of every pair: `(nodes [I, C, N, S], node_mask [C, N]) -> [I, C]`.

SGR reasons over the fully connected graph of similarity nodes and reads out the global node; SAF filters the
nodes with sigmoid attention and sums them. Both end with sigmoid(Linear_{S->1}). Padded nodes are masked, so a
caption's score does not depend on how much padding its block carries.
"""
from __future__ import annotations

import torch
from torch import nn

from temde.models.encoders import l2norm, xavier_linear


class GraphReasoning(nn.Module):
    """One step of SGR: edges = softmax_j(q_i . k_j) over real nodes j; x_i <- ReLU(W (sum_j e_ij x_j))."""

    def __init__(self, sim_dim: int):
        super().__init__()
        self.query = xavier_linear(sim_dim, sim_dim)
        self.key = xavier_linear(sim_dim, sim_dim)
        self.update = xavier_linear(sim_dim, sim_dim)

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        edges = self.query(nodes) @ self.key(nodes).transpose(-1, -2)  # [..., N, N]
        # Padded nodes are never a source: rows of padded nodes still compute, but nothing real reads them.
        edges = edges.masked_fill(~node_mask.unsqueeze(-2), float("-inf")).softmax(dim=-1)
        return torch.relu(self.update(edges @ nodes))


class SGRHead(nn.Module):
    """Similarity Graph Reasoning: `steps` rounds of GraphReasoning, read out node 0 (the global alignment)."""

    def __init__(self, sim_dim: int, steps: int = 3):
        super().__init__()
        self.steps = nn.ModuleList(GraphReasoning(sim_dim) for _ in range(steps))
        self.out = xavier_linear(sim_dim, 1)

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        node_mask = node_mask.expand(nodes.shape[:-1])
        for step in self.steps:
            nodes = step(nodes, node_mask)
        return torch.sigmoid(self.out(nodes[..., 0, :])).squeeze(-1)


class SAFHead(nn.Module):
    """Similarity Attention Filtration: per-node gate sigmoid(BN(w . x)), L1-normalised over the real nodes,
    weighted sum, L2, then the score.

    The gate's BatchNorm1d(1) works as SGRAF's, which calls it once per caption: in train mode each caption's
    logits are normalised with the mean and variance of that caption's real nodes over all the images of the block,
    and the running statistics take one momentum update per caption, in caption order. Done here for every caption
    at once. In eval mode the running statistics are used, as upstream.
    """

    def __init__(self, sim_dim: int):
        super().__init__()
        self.gate = xavier_linear(sim_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        self.out = xavier_linear(sim_dim, 1)

    def _normalise(self, logits: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """BatchNorm of the gate logits `[I, C, N]` (see the class docstring); padded nodes come out as 0."""
        bn = self.bn
        if bn.training or bn.running_mean is None:
            real = node_mask.to(logits.dtype)
            count = real.sum(dim=(0, 2))  # [C]: images x (1 + words) values per caption
            mean = (logits * real).sum(dim=(0, 2)) / count
            centred = (logits - mean[None, :, None]) * real
            var = (centred ** 2).sum(dim=(0, 2)) / count  # biased, as BatchNorm normalises with
            normalised = centred / torch.sqrt(var + bn.eps)[None, :, None]
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                self._update_running(mean.detach(), var.detach() * count / (count - 1).clamp_min(1))
        else:
            normalised = (logits - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine:
            normalised = normalised * bn.weight + bn.bias
        return normalised.masked_fill(~node_mask, 0.0)

    @torch.no_grad()
    def _update_running(self, means: torch.Tensor, unbiased_vars: torch.Tensor) -> None:
        """The running statistics after one update per caption c = 0..C-1 with momentum m, in closed form:
        r_C = (1 - m)^C r_0 + sum_c m (1 - m)^(C - 1 - c) x_c."""
        bn, n = self.bn, means.shape[0]
        if bn.momentum is None:  # cumulative average: every update weighs the same
            seen = int(bn.num_batches_tracked)
            for name, values in (("running_mean", means), ("running_var", unbiased_vars)):
                running = getattr(bn, name)
                running.mul_(seen / (seen + n)).add_(values.sum().to(running) / (seen + n))
        else:
            m = bn.momentum
            decay = (1.0 - m) ** torch.arange(n - 1, -1, -1, dtype=torch.float64, device=means.device)
            for name, values in (("running_mean", means), ("running_var", unbiased_vars)):
                running = getattr(bn, name)
                update = (m * decay * values.to(torch.float64)).sum()
                running.mul_((1.0 - m) ** n).add_(update.to(running))
        bn.num_batches_tracked.add_(n)

    def gates(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """Filtration weights `[..., N]`: zero on padded nodes, summing to ~1 over the real ones."""
        logits = self.gate(nodes).squeeze(-1)
        weights = torch.sigmoid(self._normalise(logits, node_mask)).masked_fill(~node_mask, 0.0)
        return weights / (weights.sum(dim=-1, keepdim=True) + 1e-8)  # SGRAF's l1norm (weights are positive)

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        node_mask = node_mask.expand(nodes.shape[:-1])
        weights = self.gates(nodes, node_mask)
        pooled = l2norm((weights.unsqueeze(-2) @ nodes).squeeze(-2))
        return torch.sigmoid(self.out(pooled)).squeeze(-1)


def make_head(kind: str, sim_dim: int, sgr_steps: int = 3) -> nn.Module:
    if kind == "sgr":
        return SGRHead(sim_dim, sgr_steps)
    if kind == "saf":
        return SAFHead(sim_dim)
    raise ValueError(f"head must be 'saf' or 'sgr', got {kind!r}")
