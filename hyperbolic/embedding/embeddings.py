"""Frozen CLAP embeddings of clips and class prompts, computed once and kept on disk.

The CLAP model is frozen, so a clip's embedding never changes: it is computed once (and, with an
``EmbeddingCache``, kept across runs; see ``hyperbolic.embedding.cache``), and every epoch and evaluation
works on the (N, D) matrix.

How ``embed_clips`` and ``embed_shard`` read a folder (label pass, decoding workers, damaged files,
long recordings, many machines): ``hyperbolic.embedding.extraction``, the engine behind them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.audio import CLIP_SECONDS, MAX_SAMPLES, TARGET_SR, Segmenting, segmenting_from
from data.audioset import Clip, ClipMeta, SkipLog, list_parquet_files
from data.labels import LabelMatcher
from hyperbolic.embedding.cache import EmbeddingCache, RowOutcome
from hyperbolic.embedding.clap import FrozenClap, resolve_device
from hyperbolic.embedding.extraction import ClipRun, assemble

log = logging.getLogger(__name__)


def open_clap(cfg) -> FrozenClap:
    """The frozen CLAP of a run's ``EmbeddingConfig``: ``--checkpoint`` on ``--device`` (a CUDA
    device falls back to the CPU, with a warning, when CUDA is absent) at ``--precision``."""
    return FrozenClap.load(cfg.checkpoint, resolve_device(cfg.device), precision=cfg.precision)


def open_cache(cfg) -> EmbeddingCache | None:
    """The embedding cache of a run's ``EmbeddingConfig`` (``--cache-dir``); None with ``--no-cache``."""
    return None if cfg.no_cache else EmbeddingCache(cfg.cache_dir)


def embed_run_clips(cfg, clap, cache: EmbeddingCache | None, *, matcher: LabelMatcher, skips: SkipLog,
                    label_column: str | None, require_labels: bool,
                    keep: Callable[[ClipMeta], bool] | None = None) -> ClipEmbeddings:
    """``embed_clips`` of ``--parquet-dir`` with a run's flags (``--num-samples``,
    ``--embed-batch-size``, ``--num-workers``, ``--segment``/``--hop``): where the scripts' flags
    reach the embedding stage, for training and evaluation alike."""
    return embed_clips(clap, cfg.parquet_dir, matcher=matcher, skips=skips, label_column=label_column,
                       limit=cfg.num_samples, batch_size=cfg.embed_batch_size, require_labels=require_labels,
                       cache=cache, num_workers=cfg.num_workers, segmenting=segmenting_from(cfg.segment, cfg.hop),
                       keep=keep, full_batches=cfg.full_batches)


@dataclass
class ClipEmbeddings:
    """Embeddings of the clips that were read, in reading order (files sorted, rows in order)."""

    audio: torch.Tensor                    # (N, D) float32, L2-normalised
    label_indices: list[list[int]]         # known class indices per clip (sorted)
    first_label: list[int | None]          # class of the first known label, in the file's order
    raw_labels: list[list[str]]
    metas: list[ClipMeta] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # recording lengths before any crop (NaN: not known)

    def __len__(self) -> int:
        return len(self.metas)

    def targets(self, num_classes: int) -> np.ndarray:
        """(N, C) bool ground-truth matrix."""
        y = np.zeros((len(self), num_classes), dtype=bool)
        for i, idx in enumerate(self.label_indices):
            y[i, idx] = True
        return y

    def subset(self, rows) -> ClipEmbeddings:
        rows = list(rows)
        return ClipEmbeddings(self.audio[rows], [self.label_indices[i] for i in rows],
                              [self.first_label[i] for i in rows], [self.raw_labels[i] for i in rows],
                              [self.metas[i] for i in rows],
                              [self.seconds[i] for i in rows] if self.seconds else [])


PROMPT_NAME_RULE = ("in prompts, underscores in a class name are spaces and runs of spaces are one "
                    "(dog_bark -> 'dog bark'); the class name itself is unchanged everywhere else")


def prompt_name(name: str) -> str:
    """How a class name is written in a prompt: ``PROMPT_NAME_RULE``."""
    return " ".join(name.replace("_", " ").split())


def duration_report(clips: ClipEmbeddings, segmenting: Segmenting | None) -> dict:
    """How long the recordings were, and how many the 10 s rule cut; logs one line when it cut any.

    ``clips_truncated``: clips longer than CLAP's 10 s input (more than MAX_SAMPLES samples at
    48 kHz, by soxr's length rule ``floor(seconds * 48000 + 1/2)``) of which only the first 10 s
    were embedded; 0 with ``--segment``, which embeds whole recordings. ``longest_seconds``: the
    longest recording; ``clips_length_unknown``: clips whose embedding came from a cache written
    before lengths were recorded."""
    known = [s for s in clips.seconds if not math.isnan(s)]
    long = sum(math.floor(s * TARGET_SR + 0.5) > MAX_SAMPLES for s in known)
    truncated = 0 if segmenting is not None else long
    if truncated:
        log.warning("%d of %d clips are longer than %d s (longest %.1f s) and only their first %d s were embedded; "
                    "--segment %d --hop %d embeds whole recordings (mean over windows)", truncated, len(clips),
                    CLIP_SECONDS, max(known), CLIP_SECONDS, CLIP_SECONDS, CLIP_SECONDS // 2)
    return {"clips_truncated": truncated, "longest_seconds": round(max(known), 3) if known else None,
            "clips_length_unknown": len(clips.seconds) - len(known),
            "truncation_rule": ("none: --segment embeds whole recordings" if segmenting is not None else
                                f"the first {CLIP_SECONDS} s of each clip (--segment/--hop embed whole recordings)")}


def prompts_for(class_names: list[str], template: str) -> list[str]:
    return [template.format(label=prompt_name(name)) for name in class_names]


def embed_prompts(clap, texts: list[str], *, batch_size: int = 64,
                  cache: EmbeddingCache | None = None) -> torch.Tensor:
    """(C,) prompts -> (C, D) float32 embeddings; a prompt set seen before comes from ``cache``."""
    store = cache.text(clap) if cache is not None else None
    if store is not None:
        hit = store.get(texts)
        if hit is not None:
            log.info("text embeddings: %d reused, 0 computed", len(texts))
            return hit
    # Batches of prompts of similar token length: a batch is padded to its longest prompt, and the
    # 527 AudioSet prompts run from 16 to 38 tokens (21 on average, the benchmarks' tokenizer), so
    # batches in class order waste a third of the text tower's work (RoBERTa-base on 2 cores:
    # 17 s -> 11 s, the same embeddings).
    lengths = [len(ids) for ids in clap.processor.tokenizer(list(texts))["input_ids"]] if texts else []
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    parts = [clap.embed_text([texts[j] for j in order[i:i + batch_size]])
             for i in tqdm(range(0, len(texts), batch_size), desc="embed prompts", unit="batch",
                           leave=False)]
    out = torch.empty(0, clap.embed_dim)
    if parts:
        out = torch.empty(len(texts), parts[0].shape[1])
        out[torch.tensor(order)] = torch.cat(parts)
    if not torch.isfinite(out).all():
        raise FloatingPointError("CLAP returned a non-finite text embedding; check the model weights")
    if store is not None:
        try:
            store.put(texts, out)
        except OSError as e:
            log.warning("cannot write the embedding cache (%s); going on without it", e)
    log.info("text embeddings: 0 reused, %d computed", len(texts))
    return out


def _first_known(matcher: LabelMatcher, raw: list[str]) -> int | None:
    for label in raw:
        found, _ = matcher.match([label])
        if found:
            return found[0]
    return None


def _clip_embeddings(used: list[tuple[Clip, RowOutcome]], matcher: LabelMatcher,
                     embed_dim: int) -> ClipEmbeddings:
    """The ``ClipEmbeddings`` of the (clip, outcome) pairs of ``extraction.assemble``, in their order."""
    audio = [outcome.embedding for _, outcome in used]
    stacked = (torch.from_numpy(np.stack(audio).astype(np.float32, copy=False)) if audio
               else torch.empty(0, embed_dim))
    return ClipEmbeddings(stacked, [list(c.label_indices) for c, _ in used],
                          [_first_known(matcher, c.raw_labels) for c, _ in used],
                          [list(c.raw_labels) for c, _ in used], [c.meta for c, _ in used],
                          [outcome.seconds for _, outcome in used])


def _check_args(batch_size: int, num_workers: int | None, limit: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (got {num_workers})")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None (got {limit})")


def embed_clips(clap, parquet_dir: str | Path, *, matcher: LabelMatcher, skips: SkipLog,
                label_column: str = "human_labels", limit: int | None = None,
                batch_size: int = 32, require_labels: bool = True,
                cache: EmbeddingCache | None = None, num_workers: int = 0,
                segmenting: Segmenting | None = None, stats: dict | None = None,
                keep: Callable[[ClipMeta], bool] | None = None, full_batches: bool = True) -> ClipEmbeddings:
    """Embed the clips of a parquet folder; only embeddings stay in memory.

    limit: the first ``limit`` rows considered, across the sorted files (see ``iter_clips``).
    cache: an ``EmbeddingCache``; rows it holds are not decoded or embedded again. None: no cache.
    num_workers: DataLoader worker processes that decode and compute mel features (0: none; None:
    chosen by timing the first batch, ``hyperbolic.embedding.split.choose_split``).
    segmenting: embed whole recordings as the pooled embedding of overlapping windows (see
    ``data.audio.Segmenting``); None: the first 10 s of each clip.
    full_batches: forward ``batch_size`` clips at a time in reading order, across units and files
    (``hyperbolic.embedding.batches``; not with segmenting); False: one unit's needed rows at a time.
    stats: a dict that receives the counts ``reused`` (from the cache) and ``computed``.
    keep: a predicate on a row's ``ClipMeta``; rows it rejects count towards ``limit`` but are
    neither embedded nor returned nor counted as skipped (``data.captions``: later rows of a clip
    already read, whose audio is embedded once). None: every row.
    Clips that cannot be used are counted in ``skips`` by reason and never replaced by zeros; the
    result and the counts are the same with or without cache and for any ``num_workers``.
    """
    _check_args(batch_size, num_workers, limit)
    files = list_parquet_files(parquet_dir)
    store = cache.audio(clap, segmenting) if cache is not None else None
    run = ClipRun(clap, matcher=matcher, label_column=label_column, require_labels=require_labels,
                  batch_size=batch_size, num_workers=num_workers, store=store, cache=cache,
                  segmenting=segmenting, keep=keep, full_batches=full_batches)
    run.plan(files, 0, limit)
    todo = sum(len(p.needed()) for p in run.plans if not p.plain)
    with tqdm(total=todo, desc="embed audio", unit="clip", leave=False, disable=todo == 0) as progress:
        run.settle(files, limit, progress)
    used, reused, computed = assemble(run.plans, skips)
    clips = _clip_embeddings(used, matcher, clap.embed_dim)
    if stats is not None:
        stats.update(reused=reused, computed=computed)
    rows, files = skips.rows_skipped(), skips.files_skipped()
    log.info("audio embeddings: %d reused, %d computed (skipped in all: %d row%s, %d file%s)", reused, computed,
             rows, "" if rows == 1 else "s", files, "" if files == 1 else "s")
    return clips


def embed_shard(clap, parquet_dir: str | Path, *, rank: int, world_size: int, matcher: LabelMatcher,
                cache: EmbeddingCache, label_column: str = "human_labels", limit: int | None = None,
                batch_size: int = 32, require_labels: bool = True, num_workers: int = 0,
                segmenting: Segmenting | None = None, full_batches: bool = True) -> dict:
    """Rank ``rank`` of ``world_size``: embed this rank's units of the rows ``embed_clips`` with the
    same arguments would embed, into ``cache`` (its own chunk files). Returns counts.

    Every rank runs the (cheap) label pass over all files, so all ranks agree on the rows; rows
    that the cache already holds are not computed again. A damaged file is read whole by one
    rank. Nothing is assembled: afterwards a single ``embed_clips`` on the same cache (the merge,
    see ``hyperbolic.distributed``) reuses every row and computes whatever no rank did.
    """
    _check_args(batch_size, num_workers, limit)
    if num_workers is None:  # every rank must deal its units to the same number of workers
        raise ValueError("embed_shard needs a number of workers (the ranks shard by it); "
                         "hyperbolic.distributed resolves --num-workers before calling")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size (got rank={rank}, world_size={world_size})")
    files = list_parquet_files(parquet_dir)
    run = ClipRun(clap, matcher=matcher, label_column=label_column, require_labels=require_labels,
                  batch_size=batch_size, num_workers=num_workers, store=cache.audio(clap, segmenting),
                  cache=cache, segmenting=segmenting, rank=rank, world_size=world_size, full_batches=full_batches)
    run.plan(files, 0, limit)
    todo = sum(len(run.needed_here(p)) for p in run.plans if not p.plain)
    with tqdm(total=todo, desc=f"embed audio (rank {rank})", unit="clip", leave=False,
              disable=todo == 0) as progress:
        run.compute(progress)
    computed = sum(len(p.computed) for p in run.plans)
    rows = sum(len(p.clips) for p in run.plans)
    log.info("rank %d/%d: %d audio embeddings computed (%d rows to embed in the run)", rank, world_size,
             computed, rows)
    return {"rank": rank, "world_size": world_size, "computed": computed, "rows": rows}
