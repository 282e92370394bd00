"""Contrastive objectives over logits ``L = -d_c(audio, text) / tau`` (or cosine / tau).

multi_positive_contrastive (default, ``--text-pairing all-labels``)
    Batch of B clips; K = the classes that occur among the batch's labels; P (B, K) marks each
    clip's labels. Both directions put all positives together in the numerator:

        l_a2t(i) = logsumexp_k L[i, k]   - logsumexp_{k: P[i,k]} L[i, k]
        l_t2a(k) = logsumexp_i L[i, k]   - logsumexp_{i: P[i,k]} L[i, k]
        loss     = ( mean_i l_a2t(i) + mean_{k with a positive} l_t2a(k) ) / 2

    (In training every column has a positive; validation scores all seen classes, and a class
    without a positive clip has no text-to-audio term.)

    The gradient on a positive logit is ``softmax - softmax / sum_positives(softmax) <= 0``, so a
    clip is never pushed away from any of its own labels; only non-labels are negatives.

clip_contrastive (``--text-pairing first-label``, the earlier scripts' objective)
    One text per clip (its first label), in-batch pairs: symmetric cross-entropy with the
    diagonal as targets. Identical texts in a batch count as negatives of each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_contrastive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, K), ``positives`` (B, K) bool; every row holds a positive."""
    if not positives.any(dim=1).all():
        raise ValueError("every clip needs a positive class")
    masked = logits.masked_fill(~positives, float("-inf"))
    a2t = torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)
    cols = positives.any(dim=0)
    t2a = torch.logsumexp(logits[:, cols], dim=0) - torch.logsumexp(masked[:, cols], dim=0)
    return (a2t.mean() + t2a.mean()) / 2


def clip_contrastive(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, B), text j paired with clip j: symmetric cross-entropy."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
