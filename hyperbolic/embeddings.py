"""Frozen CLAP embeddings of clips and class prompts, computed once per run.

The CLAP model is frozen, so a clip's embedding never changes: it is computed once, before the
first epoch, and every epoch (and evaluation) works on the (N, D) matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.audioset import ClipMeta, SkipLog, iter_clips
from data.labels import LabelMatcher

log = logging.getLogger(__name__)


@dataclass
class ClipEmbeddings:
    """Embeddings of the clips that were read, in reading order (files sorted, rows in order)."""

    audio: torch.Tensor                    # (N, D) float32, L2-normalised
    label_indices: list[list[int]]         # known class indices per clip (sorted)
    first_label: list[int | None]          # class of the first known label, in the file's order
    raw_labels: list[list[str]]
    metas: list[ClipMeta] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.metas)

    def targets(self, num_classes: int) -> np.ndarray:
        """(N, C) bool ground-truth matrix."""
        y = np.zeros((len(self), num_classes), dtype=bool)
        for i, idx in enumerate(self.label_indices):
            y[i, idx] = True
        return y

    def subset(self, rows) -> "ClipEmbeddings":
        rows = list(rows)
        return ClipEmbeddings(self.audio[rows], [self.label_indices[i] for i in rows],
                              [self.first_label[i] for i in rows], [self.raw_labels[i] for i in rows],
                              [self.metas[i] for i in rows])


def prompts_for(class_names: list[str], template: str) -> list[str]:
    return [template.format(label=name) for name in class_names]


def embed_prompts(clap, texts: list[str], *, batch_size: int = 64) -> torch.Tensor:
    """(C,) prompts -> (C, D) float32 embeddings."""
    parts = [clap.embed_text(texts[i:i + batch_size])
             for i in tqdm(range(0, len(texts), batch_size), desc="embed prompts", unit="batch",
                           leave=False)]
    out = torch.cat(parts)
    if not torch.isfinite(out).all():
        raise FloatingPointError("CLAP returned a non-finite text embedding; check the model weights")
    return out


def _first_known(matcher: LabelMatcher, raw: list[str]) -> int | None:
    for label in raw:
        found, _ = matcher.match([label])
        if found:
            return found[0]
    return None


def embed_clips(clap, parquet_dir: str | Path, *, matcher: LabelMatcher, skips: SkipLog,
                label_column: str = "human_labels", limit: int | None = None,
                batch_size: int = 32, require_labels: bool = True) -> ClipEmbeddings:
    """Stream the parquet folder through CLAP; only embeddings stay in memory.

    Clips that cannot be used are counted in ``skips`` by reason and never replaced by zeros.
    """
    audio, labels, firsts, raws, metas = [], [], [], [], []
    pending = []

    def flush():
        emb = clap.embed_audio([clip.waveform for clip in pending])
        for clip, row in zip(pending, emb):
            if not torch.isfinite(row).all():
                skips.add("non_finite_embedding", clip.meta)
                continue
            audio.append(row)
            labels.append(list(clip.label_indices))
            firsts.append(_first_known(matcher, clip.raw_labels))
            raws.append(list(clip.raw_labels))
            metas.append(clip.meta)
        pending.clear()

    clips = iter_clips(parquet_dir, matcher=matcher, skips=skips, label_column=label_column,
                       limit=limit, decode=True, require_labels=require_labels)
    for clip in tqdm(clips, desc="embed audio", unit="clip", total=limit):
        pending.append(clip)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    dim = clap.embed_dim
    stacked = torch.stack(audio) if audio else torch.empty(0, dim)
    log.info("embedded %d clips (%d skipped)", len(metas), skips.total)
    return ClipEmbeddings(stacked, labels, firsts, raws, metas)
