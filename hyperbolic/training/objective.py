"""The objective a training batch is scored with (``Trainer.batch_loss`` calls ``batch_loss``):

    loss = contrastive(L, P) + entailment_weight * cone term

with logits ``L = -d_c(audio, text) / tau`` (or cosine / tau) between the batch's projected clips
and the projected prompts of its columns, ``P`` the clips' positives among those columns, and the
cone term ``hyperbolic.hierarchy.cones.EntailmentObjective.term`` (with ``--ontology`` and
``--entailment-weight > 0``). Each batch's audio and each prompt are projected once.
Caption training (``--text-column``) adds ``caption_cone_term`` instead: each caption's cone holds
its clip.

Columns (``batch_columns``): the classes among the batch's labels (after ``--expand-ancestors``
adds their ancestors), and with ``--negatives all-classes`` every seen class as well.

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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hyperbolic.hierarchy.cones import entailment_loss

if TYPE_CHECKING:  # annotations only
    from hyperbolic.hierarchy.cones import EntailmentObjective


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


def batch_columns(labels: Sequence[Sequence[int]], *, seen: Sequence[int], negatives: str) -> list[int]:
    """The prompt indices a batch is contrasted with, sorted: every label of the batch, and with
    ``negatives == "all-classes"`` every seen class too (in the batch or not)."""
    columns = {k for row in labels for k in row}
    if negatives == "all-classes":
        columns |= set(seen)
    return sorted(columns)


def positives_matrix(labels: Sequence[Sequence[int]], columns: Sequence[int]) -> torch.Tensor:
    """``(B, K)`` bool: clip i has label ``columns[j]``."""
    column = {k: j for j, k in enumerate(columns)}
    positives = torch.zeros(len(labels), len(columns), dtype=torch.bool)
    for i, row in enumerate(labels):
        positives[i, [column[k] for k in row]] = True
    return positives


def batch_loss(a: torch.Tensor, labels: Sequence[Sequence[int]], first: Sequence[int], *, prompts: torch.Tensor,
               project: Callable[[torch.Tensor], torch.Tensor],
               logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], text_pairing: str, negatives: str,
               seen: Sequence[int], entailment: EntailmentObjective | None = None, entailment_weight: float = 0.0,
               c: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The loss of one batch: ``a`` (B, D) the projected clips, ``labels`` their prompt indices,
    ``first`` their first labels (``text_pairing == "first-label"``); ``prompts`` (P, D) the CLAP
    prompt embeddings, ``project`` the projector, ``logits`` the similarity head."""
    if entailment is not None:
        labels = entailment.expand(labels)  # + every ancestor with --expand-ancestors
    cone = entailment is not None and entailment_weight > 0
    # With the cone term every prompt it needs is projected once, and the contrastive columns are
    # taken from those points (every column is among the term's rows); without it, only the columns.
    rows = project(prompts[entailment.rows]) if cone else None

    def text_points(indices: Sequence[int]) -> torch.Tensor:
        if rows is None:
            return project(prompts[list(indices)])
        return rows[entailment.positions(indices)]

    if text_pairing == "first-label":
        loss = clip_contrastive(logits(a, text_points(first)))
    else:
        columns = batch_columns(labels, seen=seen, negatives=negatives)
        loss = multi_positive_contrastive(logits(a, text_points(columns)), positives_matrix(labels, columns))
    if cone:
        loss = loss + entailment_weight * entailment.term(a, labels, rows, c=c)
    return loss


def caption_cone_term(audio: torch.Tensor, labels: Sequence[Sequence[int]], *, prompts: torch.Tensor,
                      project: Callable[[torch.Tensor], torch.Tensor], num_classes: int, K: float,
                      c: torch.Tensor | float) -> torch.Tensor:
    """Caption training's cone term: the mean violation of ``caption -> clip`` over the batch.

    ``audio`` (B, D) the batch's CLAP embeddings, ``labels`` their text rows of ``prompts``: class
    prompts are rows ``< num_classes`` and have no pair here, caption texts are the rows after.
    Each (clip i, caption k of clip i) pair asks that clip i lie in caption k's cone."""
    pairs = [(i, k) for i, row in enumerate(labels) for k in row if k >= num_classes]
    clip = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    text = torch.tensor([k for _, k in pairs], dtype=torch.long)
    return entailment_loss(project(prompts[text]), project(audio[clip]), c=c, K=K)
