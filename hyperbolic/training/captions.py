"""Training on captions (``train_hyperbolic_clap.py --text-column COL``).

Texts: the distinct caption strings of the clips read (``hyperbolic.embedding.captions.CaptionPairs``),
after the class prompts when class labels are mixed in. A clip's positives are the texts of its
own captions, so a caption string written for two clips is a positive of both; with
``--label-column`` given too, the clip's class prompts are positives as well, all in one
softmax: the multi-positive objective (``hyperbolic.training.objective``) over the batch's texts, captions
and class prompts alike (``--text-pairing first-label``: one text per clip, its first caption).
A clip needs a caption; its class labels may be empty.

``--entailment-weight W`` adds ``W * mean over (clip, caption) pairs of the cone violation
E(caption, clip)``: the caption is the general side, whose cone should hold the clip (MERU's
text -> image). No ontology is used.

Validation (every epoch, on the validation clips and their captions' distinct texts):

- ``val_loss``: the training objective over the (N_val, class prompts + validation texts) matrix.
- ``val_t2a_R@k`` (k = 1, 5, 10), ``val_t2a_mAP@10``, ``val_a2t_R@k``: ``metrics.retrieval_metrics``
  with each distinct validation text a query and every clip it was written for relevant; with
  no caption string on two clips this is the evaluation's caption retrieval.
- ``val_mAP``: class mAP on the class prompts when labels are mixed in and some validation clip
  has a class label; otherwise the mean AP of the validation texts ranking the validation clips.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from data.audioset import SkipLog
from data.captions import read_captions
from data.labels import LabelMatcher
from hyperbolic.config import TrainConfig
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.captions import embed_texts, pair_captions
from hyperbolic.embedding.embeddings import ClipEmbeddings, embed_prompts, embed_run_clips, prompts_for
from hyperbolic.metrics.classification import classification_metrics, retrieval_metrics
from hyperbolic.training.objective import caption_cone_term, multi_positive_contrastive
from hyperbolic.training.trainer import Trainer, TrainingError

log = logging.getLogger(__name__)

CAPTION_SELECT_METRICS = ("val_t2a_R@10", "val_t2a_mAP@10")


class CaptionTrainer(Trainer):
    """``Trainer`` whose texts are ``num_classes`` class prompts, then the caption texts."""

    def __init__(self, cfg: TrainConfig, embed_dim: int, prompts: torch.Tensor, seen: list[int],
                 entailment=None, *, num_classes: int, init_audio: torch.Tensor | None = None):
        super().__init__(cfg, embed_dim, prompts, seen, entailment=entailment, init_audio=init_audio)
        self.num_classes = num_classes

    def batch_loss(self, audio: torch.Tensor, labels: list[list[int]], first: list[int]) -> torch.Tensor:
        """The contrastive objective (``Trainer.batch_loss``) plus, with ``--entailment-weight``,
        the caption cone term (``hyperbolic.training.objective.caption_cone_term``)."""
        loss = super().batch_loss(audio, labels, first)
        if self.cfg.entailment_weight > 0:
            c = self.geometry.c
            loss = loss + self.cfg.entailment_weight * caption_cone_term(
                audio, labels, prompts=self.prompts, project=lambda x: self.projector(x, c=c),
                num_classes=self.num_classes, K=self.cfg.entailment_k, c=c)
        return loss

    @torch.no_grad()
    def validate(self, clips: ClipEmbeddings) -> dict:
        C = self.num_classes
        texts = sorted({k for row in clips.label_indices for k in row if k >= C})
        cols = list(range(C)) + texts
        position = {k: j for j, k in enumerate(cols)}
        targets = np.zeros((len(clips), len(cols)), dtype=bool)
        for i, row in enumerate(clips.label_indices):
            targets[i, [position[k] for k in row]] = True
        a, t = self.points(clips.audio, self.prompts[cols])
        scores = self.point_logits(a, t)
        loss = multi_positive_contrastive(scores, torch.from_numpy(targets))
        s = scores.numpy()
        retrieval = retrieval_metrics(s[:, C:], targets[:, C:])
        labelled = targets[:, :C].any(axis=1)
        if C and labelled.any():
            val_map = classification_metrics(s[labelled, :C], targets[labelled, :C])["mAP"]
        else:
            val_map = classification_metrics(s[:, C:], targets[:, C:])["mAP"]
        row = {"val_loss": loss.item(), "val_mAP": val_map,
               "val_mean_pos_sim": float(s[targets].mean()), "val_mean_neg_sim": float(s[~targets].mean())}
        row.update({f"val_{k}": v for k, v in retrieval.items() if k.startswith(("t2a_R", "t2a_mAP", "a2t_R"))})
        row.update(self.usage(a, t))
        return row


def caption_training_data(cfg: TrainConfig, clap, *, class_names: list[str], matcher: LabelMatcher,
                          cache: EmbeddingCache | None, skips: SkipLog) -> tuple[ClipEmbeddings, torch.Tensor, dict]:
    """Clips with captions (audio once per clip), their text indices and the text embeddings.

    Returns ``(clips, prompts, info)``: ``clips.label_indices[i]`` are prompt rows (class prompts
    first when ``cfg.caption_labels``, then the clip's caption texts); ``first_label`` the clip's
    first caption; ``info`` what the setup and checkpoints record."""
    mixing = bool(cfg.caption_labels)
    table = read_captions(cfg.parquet_dir, text_columns=list(cfg.text_column), clip_id_column=cfg.clip_id_column,
                          skips=skips, limit=cfg.num_samples)
    audio_skips = SkipLog()
    clips = embed_run_clips(cfg, clap, cache, matcher=matcher if mixing else LabelMatcher([]), skips=audio_skips,
                            label_column=cfg.label_column if mixing else None, require_labels=False,
                            keep=table.keep)
    skips.merge(audio_skips)
    if len(clips) < 2:
        raise TrainingError(f"only {len(clips)} clips of {cfg.parquet_dir} have both readable audio and a caption "
                            f"in {cfg.text_column} (skipped: {skips.to_dict()}); training needs at least 2")
    pairs = pair_captions(clips, table)
    C = len(class_names) if mixing else 0
    class_prompts = (embed_prompts(clap, prompts_for(class_names, cfg.prompt_template), cache=cache) if mixing
                     else torch.empty(0, clap.embed_dim))
    text_stats: dict = {}
    prompts = torch.cat([class_prompts, embed_texts(clap, pairs.texts, cache=cache, stats=text_stats)])
    caption_texts = pairs.clip_texts(len(clips))
    clips.label_indices = [sorted(clips.label_indices[i] if mixing else []) + [C + t for t in caption_texts[i]]
                           for i in range(len(clips))]
    clips.first_label = [C + caption_texts[i][0] for i in range(len(clips))]
    info = {"text_column": list(cfg.text_column), "clip_id_column": cfg.clip_id_column,
            "class_labels_mixed_in": mixing, **table.summary(),
            "distinct_caption_texts": len(pairs.texts), "caption_embeddings": text_stats,
            "clips_with_a_class_label": sum(any(k < C for k in row) for row in clips.label_indices) if mixing else 0}
    log.info("%d clips with %d captions (%d distinct texts)%s", len(clips), len(pairs.captions), len(pairs.texts),
             f", {len(class_names)} class prompts mixed in" if mixing else "")
    return clips, prompts, info
