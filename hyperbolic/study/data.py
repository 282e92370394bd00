"""What every cell of a study shares, computed once: the clips' frozen CLAP embeddings, the
prompts, the class list and ontology, the train / validation / eval parts.

The clips come from ``hyperbolic.training.data.training_data`` (the frozen CLAP runs once, through
the embedding cache; held-out classes are left out as in training); the eval clips from
``--eval-parquet-dir`` (every row of it, embedded once) or, without it, a seeded ``--eval-fraction``
of the clips. The rest is split into a training part and a validation part (``--train-ratio``,
``--seed``), the same for every cell: a cell trains on a seeded fraction of the training part and
selects its epoch on the whole validation part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher, load_class_ids
from hyperbolic.config import StudyConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings, embed_run_clips, open_cache, open_clap
from hyperbolic.hierarchy.cones import Hierarchy
from hyperbolic.study.grid import StudyError
from hyperbolic.training.data import Split, keep_duplicates_together, split_indices, training_data

log = logging.getLogger(__name__)


@dataclass
class StudyData:
    """``clips`` hold the training and validation parts (rows ``train`` and ``val``);
    ``prompts`` (P, D) the class prompts, then the ontology's abstract parents."""

    clips: ClipEmbeddings
    prompts: torch.Tensor
    class_names: list[str]
    train: list[int]
    val: list[int]
    eval_clips: ClipEmbeddings
    seen: list[int] | None = None        # classes training may use (None: all)
    hierarchy: Hierarchy | None = None
    extra: dict = field(default_factory=dict)  # data facts, into every cell's setup.json and study.json

    @property
    def embed_dim(self) -> int:
        return int(self.clips.audio.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def eval_targets(self) -> np.ndarray:
        return self.eval_clips.targets(self.num_classes)

    def fraction_rows(self, fraction: float, seed: int) -> list[int]:
        """The training rows of a cell: ``round(fraction * len(train))`` of the training part,
        drawn with ``seed`` (every row when fraction is 1)."""
        if fraction >= 1:
            return list(self.train)
        count = int(round(fraction * len(self.train)))
        if count < 2:
            raise StudyError(f"--fractions {fraction:g} of the {len(self.train)} training clips is {count}; "
                             "a cell needs at least 2 (use a larger fraction or more clips)")
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed)).tolist()
        return sorted(self.train[i] for i in order[:count])

    def facts(self) -> dict:
        return {"clips_train": len(self.train), "clips_val": len(self.val), "clips_eval": len(self.eval_clips),
                "classes": self.num_classes, "prompts": int(self.prompts.shape[0]), "embed_dim": self.embed_dim,
                "classes_seen": None if self.seen is None else len(self.seen),
                "classes_in_eval": int(self.eval_targets().any(axis=0).sum()), **self.extra}


def _eval_part(study: StudyConfig, clips: ClipEmbeddings,
               digests: list[str | None]) -> tuple[ClipEmbeddings, list[int], list[int]]:
    """``--eval-fraction``: a seeded part of the clips for evaluation, the rest split into training
    and validation; identical audio (equal digests) stays on one side of each cut, as training's
    own split keeps it (``keep_duplicates_together``)."""
    cfg, n = study.recipe, len(clips)
    n_eval = int(round(study.eval_fraction * n))
    if not 1 <= n_eval < n - 1:
        raise StudyError(f"--eval-fraction {study.eval_fraction:g} of {n} clips keeps {n_eval} for "
                         "evaluation; need at least 1, and 2 left to train and validate (or give --eval-parquet-dir)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    held, _ = keep_duplicates_together(Split(train=sorted(order[n_eval:]), val=sorted(order[:n_eval])), digests)
    pool = held.train
    if not held.val or len(pool) < 2:
        raise StudyError(f"keeping identical audio on one side leaves {len(held.val)} eval and {len(pool)} other "
                         "clips; remove the duplicates or give --eval-parquet-dir")
    split, _ = keep_duplicates_together(split_indices(len(pool), cfg.train_ratio, cfg.seed), [digests[i] for i in pool])
    return clips.subset(held.val), [pool[i] for i in split.train], [pool[i] for i in split.val]


def load_study_data(study: StudyConfig) -> StudyData:
    """Embed (or read from the cache) the clips and prompts once; split them."""
    cfg = study.recipe
    data = training_data(cfg)
    clips, class_names = data.clips, list(data.extra["class_names"])
    if study.eval_embeddings or study.eval_parquet_dir:
        # Every clip trains or validates: training_data's own split (identical audio kept on one side).
        eval_clips, skipped = (_stored_eval if study.eval_embeddings else _embed_eval_folder)(study, class_names)
        source = {"eval": study.eval_embeddings or study.eval_parquet_dir, "skipped_eval": skipped}
        train_rows, val_rows = data.split.train, data.split.val
    else:
        eval_clips, train_rows, val_rows = _eval_part(study, clips, data.digests or [None] * len(clips))
        source = {"eval": f"{study.eval_fraction:g} of the clips (--eval-fraction, --seed {cfg.seed})"}
    extra = {**source, "train": cfg.parquet_dir, "holdout_classes": data.extra.get("holdout_classes", []),
             "skipped_train": data.extra.get("data", {}).get("skipped")}
    out = StudyData(clips, data.prompts, class_names, train_rows, val_rows, eval_clips, seen=data.seen,
                    hierarchy=data.hierarchy, extra=extra)
    log.info("study data: %d training, %d validation, %d eval clips; %d classes, %d-d embeddings",
             len(train_rows), len(val_rows), len(eval_clips), len(class_names), out.embed_dim)
    return out


def _embed_eval_folder(study: StudyConfig, class_names: list[str]) -> tuple[ClipEmbeddings, dict]:
    """Every labelled row of ``--eval-parquet-dir`` through the frozen CLAP (and its cache), and
    the counts of the rows skipped (no known label, unreadable audio)."""
    cfg = replace(study.recipe, parquet_dir=study.eval_parquet_dir, num_samples=None)
    matcher = LabelMatcher(class_names, load_class_ids(cfg.class_labels, class_names))
    skips = SkipLog()
    clips = embed_run_clips(cfg, open_clap(cfg), open_cache(cfg), matcher=matcher, skips=skips,
                            label_column=cfg.label_column, require_labels=True)
    if len(clips) == 0:
        raise StudyError(f"no labelled clip in --eval-parquet-dir {study.eval_parquet_dir} "
                         f"(skipped: {skips.describe(cfg.label_column)})")
    if skips.rows_skipped():
        log.warning("--eval-parquet-dir: %s", skips.describe(cfg.label_column))
    return clips, skips.to_dict()


def _stored_eval(study: StudyConfig, class_names: list[str]) -> tuple[ClipEmbeddings, dict]:
    """``--eval-embeddings``: the folder's labelled clips; its class list must be the training one."""
    from data.labels import label_key
    from hyperbolic.embedding.stored import read_embeddings
    stored = read_embeddings(study.eval_embeddings, require_labels=True)
    if [label_key(n) for n in stored.class_names] != [label_key(n) for n in class_names]:
        raise StudyError(f"--eval-embeddings {study.eval_embeddings}: its classes.parquet lists "
                         f"{len(stored.class_names)} classes, not the {len(class_names)} of the training data in the "
                         "same order; write both folders with the same class table")
    if len(stored.clips) == 0:
        raise StudyError(f"no labelled clip in --eval-embeddings {study.eval_embeddings} "
                         f"(skipped: {stored.skips.describe()})")
    if stored.skips.rows_skipped():
        log.warning("--eval-embeddings: %s", stored.skips.describe())
    return stored.clips, stored.skips.to_dict()
