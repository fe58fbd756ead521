"""Metric learning for the discovery stage: the supervised contrastive loss.

An embedding head (:func:`tomosift.classify.models.build_model` with ``embedding_dim``) maps
each subtomogram to a unit vector; trained with this loss beside the cross-entropy, particles
of one class are pulled together and those of different classes pushed apart on the sphere,
so that distances between embeddings, not only the class scores, carry structure.
"""

from __future__ import annotations

import torch


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    """The supervised contrastive loss of a batch (Khosla et al. 2020, Eq. 2, L_out).

    For each anchor i with at least one other sample of its class in the batch (positives
    P(i)), with s_ij = z_i · z_j / temperature and A(i) every other sample of the batch::

        loss_i = -1/|P(i)| Σ_{p ∈ P(i)} log( exp(s_ip) / Σ_{a ∈ A(i)} exp(s_ia) )

    The result is the mean of loss_i over those anchors; anchors without a positive are
    skipped, and a batch without any positive pair gives 0 (connected to the graph, so that
    ``backward`` still works).

    Args:
        embeddings: (B, D) L2-normalised embeddings (float; computed in float32 here).
        labels: (B,) integer class labels.
        temperature: the softmax temperature τ (> 0, dimensionless).

    Returns:
        A scalar tensor (nats).
    """
    z = embeddings.float()
    n = len(z)
    similarity = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # log of the softmax over every other sample: the anchor itself is left out of A(i)
    log_prob = similarity - torch.logsumexp(
        similarity.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # (B, B)
    counts = positives.sum(dim=1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    # masked_fill, not multiplication: log_prob on the diagonal is finite but not wanted
    summed = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(summed[anchors] / counts[anchors]).mean()
