"""What training runs on, computed once per command: the clips' frozen CLAP embeddings (less
held-out classes), the text embeddings they are contrasted with (class prompts, the ontology's
abstract parents, or captions), the train/validation split, and the checks that the loss has
something to contrast. Every (c, temperature) of a sweep trains on the same ``TrainingData``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from data.audio import segmenting_from
from data.audioset import SkipLog
from data.class_list import resolve_class_names
from data.labels import LabelMatcher, load_class_ids
from hyperbolic.config import TrainConfig
from hyperbolic.embedding.cache import EmbeddingCache, clip_audio_digests
from hyperbolic.embedding.embeddings import (
    PROMPT_NAME_RULE,
    ClipEmbeddings,
    duration_report,
    embed_prompts,
    embed_run_clips,
    open_cache,
    open_clap,
    prompts_for,
)
from hyperbolic.embedding.stored import read_embeddings
from hyperbolic.hierarchy.cones import Hierarchy
from hyperbolic.hierarchy.ontology import Ontology
from hyperbolic.training.captions import CaptionTrainer, caption_training_data
from hyperbolic.training.trainer import TrainingError

log = logging.getLogger("hyperbolic.training.train")


@dataclass
class Split:
    train: list[int]
    val: list[int]


def split_indices(n: int, train_ratio: float, seed: int) -> Split:
    """Seeded permutation; the first ``round(n * train_ratio)`` clips train, the rest validate."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(round(n * train_ratio))
    if n_train < 1 or n_train >= n:
        raise TrainingError(
            f"--train-ratio {train_ratio} splits {n} usable clips into {n_train} train and "
            f"{n - n_train} validation clips; both need at least one (use more clips or another ratio)")
    return Split(train=sorted(order[:n_train]), val=sorted(order[n_train:]))


def keep_duplicates_together(split: Split, digests: list[str | None]) -> tuple[Split, dict]:
    """Move every clip whose audio digest it shares with other clips to the side of the group's
    first clip (lowest index), so identical audio under different ids never lands on both sides
    of the split. Without duplicates the split is unchanged. Returns the split and
    ``{duplicate_audio_groups, duplicate_audio_clips, duplicate_clips_moved, clips_without_digest}``."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            groups.setdefault(d, []).append(i)
    dupes = [g for g in groups.values() if len(g) > 1]
    train = set(split.train)
    moved = 0
    for group in dupes:
        to_train = group[0] in train
        for i in group[1:]:
            if (i in train) != to_train:
                moved += 1
                train.add(i) if to_train else train.discard(i)
    n = len(digests)
    new = Split(train=sorted(train), val=sorted(set(range(n)) - train))
    return new, {"duplicate_audio_groups": len(dupes), "duplicate_audio_clips": sum(len(g) for g in dupes),
                 "duplicate_clips_moved": moved, "clips_without_digest": sum(d is None for d in digests)}


def choose_holdout(spec: str | None, class_names: list[str], present: list[int], seed: int) -> list[int]:
    """``--holdout-classes``: a fraction of the classes present in the data (seeded), or a file
    with one class name per line. Returns sorted class indices."""
    if not spec:
        return []
    path = Path(spec)
    if path.is_file():
        index = {name.casefold(): i for i, name in enumerate(class_names)}
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = [n for n in names if n.casefold() not in index]
        if unknown:
            raise TrainingError(f"--holdout-classes {path}: not in the class list: {'; '.join(unknown[:5])}")
        return sorted({index[n.casefold()] for n in names})
    try:
        fraction = float(spec)
    except ValueError:
        raise TrainingError(f"--holdout-classes must be a fraction in (0, 1) or an existing file (got {spec!r})") from None
    if not 0 < fraction < 1:
        raise TrainingError(f"--holdout-classes fraction must be in (0, 1) (got {fraction})")
    count = int(round(fraction * len(present)))
    if count < 1 or count >= len(present):
        raise TrainingError(f"--holdout-classes {fraction} of the {len(present)} classes present holds out "
                            f"{count}; need at least one held-out and one training class")
    order = torch.randperm(len(present), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(present[i] for i in order[:count])


def drop_holdout_clips(clips: ClipEmbeddings, holdout: list[int]) -> tuple[ClipEmbeddings, dict]:
    """Drop every clip that carries a held-out class, whatever its other labels.

    Keeping such a clip under its other labels (a {Music, Guitar} clip trained as Music with
    Guitar held out) would let held-out audio shape the projector, so the held-out classes
    would not be unseen at evaluation. Returns the kept clips and the counts:
    ``clips_dropped_holdout`` (every dropped clip) and ``clips_dropped_only_holdout_labels``
    (those of them with no other label, the earlier key)."""
    if not holdout:
        return clips, {"clips_dropped_holdout": 0, "clips_dropped_only_holdout_labels": 0}
    held = set(holdout)
    keep = [i for i, row in enumerate(clips.label_indices) if not held.intersection(row)]
    only = sum(1 for row in clips.label_indices if row and held.issuperset(row))
    return clips.subset(keep), {"clips_dropped_holdout": len(clips) - len(keep),
                                "clips_dropped_only_holdout_labels": only}


@dataclass
class TrainingData:
    """What every run of a sweep trains on, computed once: the clips' CLAP embeddings, the text
    embeddings they are contrasted with, and the split."""

    clips: ClipEmbeddings
    prompts: torch.Tensor                # (P, D): class prompts (+ the ontology's abstract parents), or caption texts
    split: Split
    seen: list[int] | None = None        # the class indices training may use; None: every class
    hierarchy: Hierarchy | None = None   # --ontology: its pairs and label expansion
    trainer_cls: Callable | None = None  # called like Trainer (captions: hyperbolic.training.captions.CaptionTrainer)
    extra: dict = field(default_factory=dict)  # run facts for setup.json
    # The checkpoint's "training_clips": per part (train, val) the video ids and audio digests,
    # which evaluation checks its clips against (overlap_with_training).
    training_clips: dict | None = None
    digests: list[str | None] | None = None  # audio sha256 per clip (None: not known, e.g. --embeddings)



def training_data(cfg: TrainConfig) -> TrainingData:
    """Embed the clips and texts with the frozen CLAP (cached), or read them from ``--embeddings``;
    keep held-out classes out, split, and check that the loss has something to contrast."""
    if cfg.embeddings:
        return _stored_training_data(cfg)
    # Captions alone use no class list; with --label-column given too, its classes are mixed in.
    class_names = (resolve_class_names(cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column,
                                       limit=cfg.num_samples) if not cfg.text_column or cfg.caption_labels else [])
    matcher = LabelMatcher(class_names, load_class_ids(cfg.class_labels, class_names))
    clap, cache = open_clap(cfg), open_cache(cfg)
    skips = SkipLog()
    trainer_cls, caption_info = None, None
    if cfg.text_column:  # captions are the texts: hyperbolic.training.captions
        clips, prompts, caption_info = caption_training_data(cfg, clap, class_names=class_names, matcher=matcher,
                                                             cache=cache, skips=skips)
        trainer_cls = partial(CaptionTrainer, num_classes=len(class_names))
        holdout, hierarchy = [], None
        dropped = {"clips_dropped_holdout": 0, "clips_dropped_only_holdout_labels": 0}
    else:
        clips = embed_run_clips(cfg, clap, cache, matcher=matcher, skips=skips, label_column=cfg.label_column,
                                require_labels=True)
        clips, holdout, dropped = _labelled_clips(cfg, clips, class_names, skips)
        hierarchy = _hierarchy(cfg, class_names)
        prompt_names = class_names if hierarchy is None else list(hierarchy.prompt_names)
        prompts = embed_prompts(clap, prompts_for(prompt_names, cfg.prompt_template), cache=cache)
    data = _assemble(cfg, clips, prompts, class_names, holdout, dropped, skips, hierarchy, trainer_cls,
                     source={"clap": {"path": str(clap.path), "embed_dim": clap.embed_dim},
                             "cache_dir": None if cache is None else str(cache.root)}, cache=cache)
    if caption_info is not None:
        data.extra.update(text_column=list(cfg.text_column), captions=caption_info)
    return data


def _stored_training_data(cfg: TrainConfig) -> TrainingData:
    """``--embeddings``: the clips and prompts of the folder (``hyperbolic.embedding.stored``), the
    class list its classes; an abstract parent without a stored prompt is linked past."""
    stored = read_embeddings(cfg.embeddings, limit=cfg.num_samples, require_labels=True)
    clips, holdout, dropped = _labelled_clips(cfg, stored.clips, stored.class_names, stored.skips)
    hierarchy = _hierarchy(cfg, stored.class_names, available=stored.has_prompt)
    prompts = (stored.class_embeddings if hierarchy is None
               else stored.prompt_embeddings(list(hierarchy.prompt_names)))
    return _assemble(cfg, clips, prompts, stored.class_names, holdout, dropped, stored.skips, hierarchy, None,
                     source={"clap": {"path": None, "embed_dim": stored.dim}, "cache_dir": None,
                             "embeddings": str(cfg.embeddings)})


def _assemble(cfg: TrainConfig, clips: ClipEmbeddings, prompts: torch.Tensor, class_names: list[str],
              holdout: list[int], dropped: dict, skips: SkipLog, hierarchy: Hierarchy | None,
              trainer_cls: Callable | None, source: dict, cache: EmbeddingCache | None = None) -> TrainingData:
    # Audio digests need the parquet bytes (remembered in the cache); stored embeddings
    # (--embeddings) have ids only.
    digests = (clip_audio_digests(cfg.parquet_dir, clips.metas, cache)
               if cfg.parquet_dir and not cfg.embeddings else [None] * len(clips))
    split, duplicates = keep_duplicates_together(split_indices(len(clips), cfg.train_ratio, cfg.seed), digests)
    if not split.train or not split.val:
        raise TrainingError(f"keeping identical audio on one side of the split leaves {len(split.train)} train and "
                            f"{len(split.val)} validation clips ({duplicates['duplicate_audio_groups']} groups of "
                            f"duplicate audio); remove the duplicates from {cfg.parquet_dir} or add clips")
    if duplicates["duplicate_audio_groups"]:
        log.warning("%d groups of identical audio (%d clips) under different rows/ids in %s: each group is kept on "
                    "one side of the train/validation split (%d clips moved); duplicate_audio_groups in setup.json",
                    duplicates["duplicate_audio_groups"], duplicates["duplicate_audio_clips"], cfg.parquet_dir,
                    duplicates["duplicate_clips_moved"])
    if len(split.val) == 1 and cfg.select_metric == "val_mAP":
        log.warning("--train-ratio %g leaves a single validation clip: average precision over one clip is 1.0 "
                    "for any model, so val_mAP cannot tell epochs apart and the best epoch is the one of lowest "
                    "val_loss among them; use more clips, a lower --train-ratio, or --select-metric val_loss",
                    cfg.train_ratio)
    seen = [k for k in range(len(class_names)) if k not in set(holdout)]
    candidates = len(seen) if cfg.negatives == "all-classes" else len({k for row in clips.label_indices for k in row})
    if cfg.text_pairing == "all-labels" and candidates < 2:
        raise TrainingError(f"every clip's candidates are its own labels ({candidates} class in reach with "
                            f"--negatives {cfg.negatives}), so the loss has no negative and nothing trains; "
                            "use --negatives all-classes with a class list of several classes, or data with more classes")
    extra = {**source,
             "class_names": class_names, "prompt_label_rule": PROMPT_NAME_RULE,
             "holdout_classes": [class_names[k] for k in holdout],
             "data": {"clips": len(clips), "train_clips": len(split.train), "val_clips": len(split.val),
                      **duration_report(clips, segmenting_from(cfg.segment, cfg.hop)),
                      **dropped, **duplicates,
                      "skipped": skips.to_dict(), "unknown_labels": skips.unknown_labels_list()}}
    if hierarchy is not None:
        extra["hierarchy"] = {"ontology": cfg.ontology, "unmatched": list(hierarchy.unmatched),
                              "extra_prompts": list(hierarchy.extra_names),
                              "abstract_parents_linked_past": len(hierarchy.linked_past),
                              "linked_past": list(hierarchy.linked_past),
                              "parent_child_pairs": int(hierarchy.parent_child.shape[0])}
    if class_names:
        log.info("%d clips (%d train / %d val), %d classes (%d held out)", len(clips), len(split.train),
                 len(split.val), len(class_names), len(holdout))
    else:  # captions alone: no class list to count
        log.info("%d clips (%d train / %d val), captions only", len(clips), len(split.train), len(split.val))
    return TrainingData(clips, prompts, split, seen=seen, hierarchy=hierarchy, trainer_cls=trainer_cls, extra=extra,
                        training_clips=_training_clips(clips, split, digests, class_names), digests=digests)


def _training_clips(clips: ClipEmbeddings, split: Split, digests: list, class_names: list[str]) -> dict:
    """The checkpoint's record of what it trained on: per part the video ids and audio digests, and
    the classes with a training clip (evaluation's "seen" split; the others are never trained on)."""
    guard = {part: {"video_ids": [clips.metas[i].video_id for i in rows], "audio_digests": [digests[i] for i in rows]}
             for part, rows in (("train", split.train), ("val", split.val))}
    guard["trained_classes"] = [class_names[k] for k in sorted({k for i in split.train for k in clips.label_indices[i]})
                                if k < len(class_names)]
    return guard


def _labelled_clips(cfg: TrainConfig, clips: ClipEmbeddings, class_names: list[str],
                    skips: SkipLog) -> tuple[ClipEmbeddings, list[int], dict]:
    """The clips with a known label, less those carrying a held-out class; the held-out class
    indices and the counts of clips dropped for them."""
    present = sorted({k for row in clips.label_indices for k in row})
    holdout = choose_holdout(cfg.holdout_classes, class_names, present, cfg.holdout_seed)
    clips, dropped = drop_holdout_clips(clips, holdout)
    if dropped["clips_dropped_holdout"]:
        log.info("--holdout-classes: %d clips carry a held-out class and are left out of training and "
                 "validation (%d of them had no other label)", dropped["clips_dropped_holdout"],
                 dropped["clips_dropped_only_holdout_labels"])
    if len(clips) < 2:
        raise TrainingError(f"only {len(clips)} usable clips in {cfg.embeddings or cfg.parquet_dir} "
                            f"(skipped: {skips.describe(cfg.label_column)}); training needs at least 2")
    return clips, holdout, dropped


def _hierarchy(cfg: TrainConfig, class_names: list[str], available=None) -> Hierarchy | None:
    if not cfg.ontology:
        return None
    hierarchy = Hierarchy.build(Ontology.load(cfg.ontology), class_names, expand_ancestors=cfg.expand_ancestors,
                                available=available)
    if hierarchy.linked_past:
        log.warning("%d abstract parents of --ontology have no prompt in --embeddings and are linked past "
                    "(first: %s)", len(hierarchy.linked_past), "; ".join(hierarchy.linked_past[:5]))
    if hierarchy.unmatched:
        log.warning("%d of %d classes match no node of --ontology %s (first: %s)", len(hierarchy.unmatched),
                    len(class_names), cfg.ontology, "; ".join(hierarchy.unmatched[:5]))
    return hierarchy
