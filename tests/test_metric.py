"""The supervised contrastive loss of the embedding head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tomosift.classify.metric import supervised_contrastive_loss


def test_supcon_matches_a_hand_computation():
    # z1 = z2 = (1, 0), z3 = (0, 1); labels 0, 0, 1; temperature 1.
    # anchor 1: positive 2 (s = 1), others {2, 3} (s = 1, 0): -log(e / (e + 1)); anchor 2 the
    # same; anchor 3 has no positive and is skipped.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    expected = math.log(1 + math.exp(-1))
    assert supervised_contrastive_loss(z, labels, 1.0).item() == pytest.approx(expected, 1e-6)
    # temperature 0.5 doubles the similarities: -log(e² / (e² + 1))
    assert supervised_contrastive_loss(z, labels, 0.5).item() == pytest.approx(
        math.log(1 + math.exp(-2)), 1e-6)


def test_supcon_averages_over_positives_and_skips_lonely_anchors():
    # anchor 1 has two positives (2 and 3) with s = 1 and 0, one negative (4) with s = 0
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 0, 1])
    loss = supervised_contrastive_loss(z, labels, 1.0)
    e = math.e
    anchor_1 = -0.5 * (math.log(e / (e + 2)) + math.log(1 / (e + 2)))
    anchor_2 = anchor_1
    anchor_3 = -0.5 * 2 * math.log(1 / (2 + math.exp(-1)))  # s = 0, 0 and -1 to the others
    assert loss.item() == pytest.approx((anchor_1 + anchor_2 + anchor_3) / 3, 1e-6)
    lonely = supervised_contrastive_loss(z, torch.tensor([0, 1, 2, 3]), 1.0)
    assert lonely.item() == 0.0 and lonely.requires_grad is False  # no positive pair at all
    z.requires_grad_(True)
    supervised_contrastive_loss(z, torch.tensor([0, 1, 2, 3])).backward()  # still works
    assert z.grad is not None and torch.all(z.grad == 0)


def test_supcon_is_lower_for_embeddings_grouped_by_label():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)  # 4 classes x 8
    centres = F.normalize(torch.randn(4, 16, generator=generator), dim=1)
    grouped = F.normalize(centres[labels] + 0.1 * torch.randn(32, 16, generator=generator),
                          dim=1)
    shuffled = labels[torch.randperm(32, generator=generator)]
    assert supervised_contrastive_loss(grouped, labels) < 0.5 * supervised_contrastive_loss(
        grouped, shuffled)
