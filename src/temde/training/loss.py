"""VSE++ hinge triplet loss on a square score matrix (image i matches caption i)."""
from __future__ import annotations

import torch
from torch import nn


def triplet_loss(
    scores: torch.Tensor,
    margin: float = 0.2,
    max_violation: bool = True,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over the batch of hinge violations `[margin + s(negative) - s(positive)]_+` in both directions.

    scores: [B, B], row i = image of pair i, column j = caption of pair j, the diagonal holds the positives.
    max_violation: keep only the hardest negative per image and per caption (VSE++); else sum all negatives.
    image_ids: [B] optional; pairs sharing an image id are positives of each other, so a second caption of
      the same image in the batch is not pushed away as a negative (the SGRAF code does push it).
    """
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores: expected a square [B, B] matrix, got shape {tuple(scores.shape)}")
    size = scores.shape[0]
    positive = scores.diagonal().unsqueeze(1)  # [B, 1]
    # cost_caption[i, j]: caption j scored near/above image i's own caption;
    # cost_image[i, j]: image i scored near/above caption j's own image.
    cost_caption = (margin + scores - positive).clamp(min=0)
    cost_image = (margin + scores - positive.t()).clamp(min=0)

    if image_ids is None:
        same = torch.eye(size, dtype=torch.bool, device=scores.device)
    else:
        if image_ids.shape != (size,):
            raise ValueError(f"image_ids: expected shape ({size},), got {tuple(image_ids.shape)}")
        image_ids = image_ids.to(scores.device)
        same = image_ids.unsqueeze(1) == image_ids.unsqueeze(0)
    cost_caption = cost_caption.masked_fill(same, 0)
    cost_image = cost_image.masked_fill(same, 0)

    if max_violation:
        return cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    return cost_caption.sum() + cost_image.sum()


class ContrastiveLoss(nn.Module):
    """Module form of `triplet_loss`, holding the margin and the hardest-negative switch."""

    def __init__(self, margin: float = 0.2, max_violation: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation

    def forward(self, scores: torch.Tensor, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        return triplet_loss(scores, self.margin, self.max_violation, image_ids)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, max_violation={self.max_violation}"
