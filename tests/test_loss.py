"""VSE++ triplet loss against an explicit loop over anchors and negatives."""
from __future__ import annotations

import pytest
import torch

from temde.training.loss import ContrastiveLoss, triplet_loss


def loop_reference(scores, margin, max_violation, image_ids=None):
    size = scores.shape[0]
    ids = list(range(size)) if image_ids is None else image_ids.tolist()
    total = 0.0
    for i in range(size):  # image i as anchor: captions of other images are negatives
        costs = [max(0.0, margin + scores[i, j].item() - scores[i, i].item()) for j in range(size) if ids[j] != ids[i]]
        total += (max(costs, default=0.0) if max_violation else sum(costs))
    for j in range(size):  # caption j as anchor: other images are negatives
        costs = [max(0.0, margin + scores[i, j].item() - scores[j, j].item()) for i in range(size) if ids[i] != ids[j]]
        total += (max(costs, default=0.0) if max_violation else sum(costs))
    return total


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_matches_loop(max_violation, margin):
    torch.manual_seed(0)
    scores = torch.rand(7, 7, dtype=torch.float64)
    got = triplet_loss(scores, margin=margin, max_violation=max_violation)
    assert got.item() == pytest.approx(loop_reference(scores, margin, max_violation))


@pytest.mark.parametrize("max_violation", [True, False])
def test_same_image_captions_are_not_negatives(max_violation):
    torch.manual_seed(1)
    scores = torch.rand(6, 6, dtype=torch.float64)
    ids = torch.tensor([4, 4, 9, 2, 9, 4])
    scores[0, 1] = scores[4, 2] = 2.0  # the hardest "negatives" are captions of the same image
    got = triplet_loss(scores, 0.2, max_violation, image_ids=ids)
    assert got.item() == pytest.approx(loop_reference(scores, 0.2, max_violation, ids))
    assert got.item() != pytest.approx(triplet_loss(scores, 0.2, max_violation).item())


def test_hand_made_hardest_negative():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.0, 0.5, 0.6], [0.2, 0.0, 0.7]])
    # rows (image anchors): [0.2+0.8-0.9]=0.1, [0.2+0.6-0.5]=0.3, [0.2+0.2-0.7]=0 -> 0.4
    # cols (caption anchors): col0 max(0.2+0-0.9, 0.2+0.2-0.9)=0, col1 0.2+0.8-0.5=0.5, col2 0.2+0.6-0.7=0.1 -> 0.6
    assert triplet_loss(scores).item() == pytest.approx(1.0)


def test_perfectly_separated_scores_give_zero_and_gradient_flows():
    scores = (torch.eye(4) * 2).requires_grad_()
    loss = triplet_loss(scores)
    assert loss.item() == 0.0
    scores2 = torch.zeros(4, 4, requires_grad=True)
    triplet_loss(scores2).backward()
    assert scores2.grad.abs().sum() > 0


def test_module_and_bad_shapes():
    scores = torch.rand(3, 3)
    assert ContrastiveLoss(0.2, True)(scores).item() == pytest.approx(triplet_loss(scores).item())
    with pytest.raises(ValueError, match="scores"):
        triplet_loss(torch.rand(3, 4))
    with pytest.raises(ValueError, match="image_ids"):
        triplet_loss(torch.rand(3, 3), image_ids=torch.arange(4))
