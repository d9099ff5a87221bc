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

    BatchNorm statistics are taken over the real nodes of every pair of the block at once (SGRAF: over the nodes
    of the n_images pairs of one caption at a time); in eval mode both use the running statistics.
    """

    def __init__(self, sim_dim: int):
        super().__init__()
        self.gate = xavier_linear(sim_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        self.out = xavier_linear(sim_dim, 1)

    def gates(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """Filtration weights `[..., N]`: zero on padded nodes, summing to ~1 over the real ones."""
        logits = self.gate(nodes).squeeze(-1)
        real = logits[node_mask]  # padding must not enter the batch statistics
        normalised = torch.zeros_like(logits)
        normalised[node_mask] = self.bn(real.unsqueeze(1)).squeeze(1)
        weights = torch.sigmoid(normalised).masked_fill(~node_mask, 0.0)
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
