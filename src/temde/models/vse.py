"""The dual-encoder host (`head: "vse"`): VSE-infinity's image side, and the cosine of the pooled vectors as the score.

VSE-infinity (Chen et al., CVPR 2021; woodfrog/vse_infty) embeds precomputed regions with an FC layer plus a
two-layer MLP residual, `fc(x) + Linear(ReLU(BN(Linear(x))))` (hidden size embed / 2), pools each side into one
vector and scores a pair by the cosine of the two. With nothing between the pooled vectors and the score, the
pooling is the only place where a set of regions or words becomes one vector: the host where the choice of pooling
shows most directly, and the one where the first stage of a two-stage index holds exactly what the model scores.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from temde.models.encoders import checked_image_mask, l2norm
from temde.pooling import MaskedBatchNorm, xavier_linear


class VSEImageEncoder(nn.Module):
    """Region features `[B, R, img_dim]` -> region embeddings `[B, R, embed_size]`: `fc(x) + mlp(x)`.

    As VSE-infinity's `EncoderImageAggr` with `precomp_enc_type="basic"`: `fc` Xavier-initialised, the MLP
    `Linear(img_dim, embed/2) -> BatchNorm -> ReLU -> Linear(embed/2, embed)`. Its BatchNorm normalises each
    feature over the real regions only (padding never shifts the statistics; VSE-infinity's sets are never
    padded, BUTD gives 36 regions). Optionally L2 per region (`normalize`; VSE-infinity normalises only the pooled
    vector). Padded regions come out as zeros.
    """

    def __init__(self, img_dim: int, embed_size: int, normalize: bool = False):
        super().__init__()
        if embed_size < 2:
            raise ValueError(f"embed_size must be >= 2 (the MLP's hidden size is embed_size // 2), got {embed_size}")
        self.img_dim = img_dim
        self.normalize = normalize
        self.fc = xavier_linear(img_dim, embed_size)
        self.mlp_in = nn.Linear(img_dim, embed_size // 2)
        self.mlp_norm = MaskedBatchNorm(embed_size // 2)
        self.mlp_out = nn.Linear(embed_size // 2, embed_size)

    def forward(self, images: torch.Tensor,
                image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image_mask = checked_image_mask(images, image_mask, self.img_dim)
        hidden = torch.relu(self.mlp_norm(self.mlp_in(images), image_mask))
        local = self.fc(images) + self.mlp_out(hidden)
        if self.normalize:
            local = l2norm(local)
        return local.masked_fill(~image_mask.unsqueeze(-1), 0.0), image_mask


def cosine_scores(image_globals: torch.Tensor, caption_globals: torch.Tensor) -> torch.Tensor:
    """`[n_img, n_cap]` cosines of every pair: one matrix product of the L2-normalised pooled vectors (every pool
    already returns unit rows; normalising again costs O(n d) and keeps an empty set's zero vector at 0)."""
    return F.normalize(image_globals, dim=-1) @ F.normalize(caption_globals, dim=-1).t()
