"""Similarity representations of SGRAF for every (image, caption) pair of a block, in one batched pass.

For image i and caption c the nodes are: one global vector from the pooled globals and one local vector per word
from SCAN's text-to-image attention. Shapes: I images, C captions, R regions, L words, d embed, S sim_dim.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from temde.models.encoders import Encoded, l2norm, xavier_linear


def scan_text_to_image(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                       region_mask: torch.Tensor, smooth: float) -> torch.Tensor:
    """SCAN text-to-image attention for all pairs: the attended image vector of every word, `[I, C, L, d]`.

    As SGRAF's SCAN_attention: region-word cosine (inputs are L2-normalised), LeakyReLU(0.1), L2-normalised over
    the *words* of the caption for each region, softmax over regions with temperature `smooth`, weighted sum of
    regions, L2. Padded words are zeroed before the word-axis norm (SGRAF slices them off per caption); padded
    regions get -inf logits. Every image needs at least one real region.
    """
    n_img, n_reg, dim = regions.shape
    n_cap, n_words, _ = words.shape
    attn = torch.einsum("ird,cld->icrl", regions, words)  # [I, C, R, L]
    attn = F.leaky_relu(attn, 0.1)
    attn = attn.masked_fill(~word_mask[None, :, None, :], 0.0)
    attn = l2norm(attn, dim=-1)  # over the caption's words, per region
    logits = (attn * smooth).transpose(2, 3)  # [I, C, L, R]
    logits = logits.masked_fill(~region_mask[:, None, None, :], float("-inf"))
    weights = logits.softmax(dim=-1)
    # One matmul per image: [C*L, R] x [R, d].
    attended = torch.matmul(weights.reshape(n_img, n_cap * n_words, n_reg), regions)
    return l2norm(attended.view(n_img, n_cap, n_words, dim))


class SimilarityEncoder(nn.Module):
    """`(img, cap) -> (nodes [I, C, 1+L, S], node_mask [C, 1+L])`: node 0 is the global alignment
    `l2norm(W_g (g_img - g_cap)^2)`, node 1+l the local one `l2norm(W_l (attended_l - word_l)^2)`.
    Nodes of padded words are zero and masked out."""

    def __init__(self, embed_size: int, global_dim: int, sim_dim: int, lambda_softmax: float = 9.0):
        super().__init__()
        self.lambda_softmax = lambda_softmax
        self.local_w = xavier_linear(embed_size, sim_dim)
        self.global_w = xavier_linear(global_dim, sim_dim)

    def forward(self, img: Encoded, cap: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        attended = scan_text_to_image(cap.local, cap.mask, img.local, img.mask, self.lambda_softmax)
        sim_local = l2norm(self.local_w((attended - cap.local.unsqueeze(0)) ** 2))  # [I, C, L, S]
        sim_local = sim_local.masked_fill(~cap.mask[None, :, :, None], 0.0)
        diff = img.global_.unsqueeze(1) - cap.global_.unsqueeze(0)  # [I, C, out_dim]
        sim_global = l2norm(self.global_w(diff ** 2))  # [I, C, S]
        nodes = torch.cat([sim_global.unsqueeze(2), sim_local], dim=2)
        node_mask = torch.cat([cap.mask.new_ones(cap.mask.shape[0], 1), cap.mask], dim=1)
        return nodes, node_mask
