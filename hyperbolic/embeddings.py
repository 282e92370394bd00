"""Frozen CLAP embeddings of clips and class prompts, computed once and kept on disk.

The CLAP model is frozen, so a clip's embedding never changes: it is computed once (and, with an
``EmbeddingCache``, kept across runs; see ``hyperbolic.cache``), and every epoch and evaluation
works on the (N, D) matrix.

How ``embed_clips`` reads a folder, file by file in sorted order:

1. A label pass, ``iter_clips(decode=False)``: labels are matched against this run's class list
   and unknown labels and "no_known_label" rows are counted exactly as a decoding read counts
   them; ``limit`` (rows considered, across files) is cut here. Labels are never cached.
2. The rows it yields that the cache does not hold are decoded and embedded: each file is cut
   into units of ``batch_size`` rows (``iter_clips``'s ``read_batch_rows``); with
   ``num_workers > 0`` the units are dealt to DataLoader workers
   (``shard=combine_shards(...)``), which decode, resample and compute the mel features, while
   this process runs the forward. One forward batch is the rows of one unit that need embedding,
   whatever ``num_workers`` is: CLAP's output for a clip changes in the last bits with the batch
   it sits in, and this keeps results bit-identical across worker counts.
3. Outcomes (an embedding, a decode failure, a non-finite embedding) are put back in (file, row)
   order; decode failures are counted in ``skips`` in that order.

A file whose read fails part-way ("unreadable_file") cannot be judged by the label pass, which
does not read the audio column, so it is read once more by a plain decoding ``iter_clips`` whose
counts are the ones reported; the cache remembers that the file is damaged.

Long recordings (``segmenting``, see ``data.audio.Segmenting``): a clip is decoded whole, cut into
windows, and its embedding is the mean of its L2-normalised window embeddings, L2-normalised.
Clips are then grouped so that a forward holds at most ``batch_size`` windows (a clip with more
windows is forwarded alone, ``batch_size`` windows at a time); groups depend only on the unit, so
results stay bit-identical across worker counts.

Many machines (``embed_shard``, used by ``hyperbolic.distributed`` under torchrun): rank ``r`` of
``R`` decodes and embeds only its units (unit ``u`` of the run's ``f``-th file goes to shard
``(u + f) % (R * W)`` of ``combine_shards``, W workers per rank; the offset ``f`` spreads files
of a single unit over the ranks) and writes its own cache chunks; a single-process
``embed_clips`` afterwards finds them all.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from data.audio import CLIP_SECONDS, MAX_SAMPLES, TARGET_SR, Segmenting
from data.audioset import Clip, ClipMeta, SkipLog, combine_shards, iter_clips, list_parquet_files
from data.labels import LabelMatcher
from hyperbolic.cache import AudioStore, EmbeddingCache, RowOutcome
from hyperbolic.clap import FrozenClap, audio_features, resolve_device

log = logging.getLogger(__name__)


def open_clap(cfg) -> FrozenClap:
    """The frozen CLAP of a run's ``EmbeddingConfig``: ``--checkpoint`` on ``--device`` (a CUDA
    device falls back to the CPU, with a warning, when CUDA is absent) at ``--precision``."""
    return FrozenClap.load(cfg.checkpoint, resolve_device(cfg.device), precision=cfg.precision)


def open_cache(cfg) -> EmbeddingCache | None:
    """The embedding cache of a run's ``EmbeddingConfig`` (``--cache-dir``); None with ``--no-cache``."""
    return None if cfg.no_cache else EmbeddingCache(cfg.cache_dir)

NON_FINITE = "non_finite_embedding"
CHUNK_ROWS = 512          # outcomes per cache chunk while a file is being embedded ...
CHUNK_SECONDS = 120.0     # ... or fewer, when they come slowly: what an interruption can lose


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

    def subset(self, rows) -> "ClipEmbeddings":
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


# ------------------------------------------------------------------ CLAP audio, in two halves
# ------------------------------------------------------------------ decoding (workers or not)


def _unit_bounds(path: Path, unit_rows: int) -> list[tuple[int, int]]:
    """[start, end) rows of each unit of ``iter_clips(read_batch_rows=unit_rows)``, in order."""
    meta = pq.ParquetFile(path).metadata
    bounds, row0 = [], 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        bounds += [(row0 + s, row0 + min(s + unit_rows, n)) for s in range(0, n, unit_rows)]
        row0 += n
    return bounds


class _RecordingSkipLog(SkipLog):
    """A SkipLog that also keeps each add, so a decoding read can report its skips row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, ClipMeta | None, str]] = []

    def add(self, reason: str, meta: ClipMeta | None = None, *, file: str | None = None,
            detail: str = "") -> None:
        super().add(reason, meta, file=file, detail=detail)
        self.events.append((reason, meta, detail))

    def drain(self) -> list[tuple[str, ClipMeta | None, str]]:
        events, self.events = self.events, []
        return events


@dataclass(frozen=True)
class _DecodeJob:
    index: int                 # the file's position in the run
    path: Path
    limit: int | None          # iter_clips limit for this file (what the run's limit leaves)
    needed: frozenset[int]     # rows to decode and embed


def _as_is(item):
    return item


def forward_threads(num_workers: int, current: int) -> int:
    """Intra-op threads for the forward while ``num_workers`` processes decode: the cores they
    leave (at least 1, at most ``current``). On 2 cores with 1 worker, 2 forward threads made the
    pipeline half as fast (37 vs 18 clips/s, tiny CLAP): the threads wait on each other while the
    worker holds a core. (On the CPUs tested, the forward's result does not depend on the thread
    count; tests check that embeddings do not depend on the number of workers.)"""
    if num_workers == 0:
        return current
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(current, cores - num_workers))


def _shard_of(unit: int, file_index: int, count: int) -> int:
    """The shard (``combine_shards`` index, of ``count``) that unit ``unit`` of the run's
    ``file_index``-th file belongs to. The offset by file spreads single-unit files over shards."""
    return (unit + file_index) % count


def _feature_batches(clips: list[Clip], *, feature_extractor, sampling_rate: int,
                     segmenting: Segmenting | None, max_windows: int) -> Iterator[tuple]:
    """``(rows, video_ids, features, windows per clip or None)`` for consecutive clips of one unit.

    Without segmenting: one batch, one window per clip (``None``). With it: groups of whole clips
    holding at most ``max_windows`` windows; a clip with more windows is a group of its own."""
    if segmenting is None:
        features = audio_features(feature_extractor, sampling_rate, [c.waveform for c in clips])
        yield [c.meta.row for c in clips], [c.meta.video_id for c in clips], features, None
        return
    group: list[tuple[Clip, list[np.ndarray]]] = []

    def flush():
        windows = [w for _, ws in group for w in ws]
        features = audio_features(feature_extractor, sampling_rate, windows)
        return ([c.meta.row for c, _ in group], [c.meta.video_id for c, _ in group], features,
                [len(ws) for _, ws in group])

    for clip in clips:
        windows = segmenting.windows(clip.waveform)
        if group and sum(len(ws) for _, ws in group) + len(windows) > max_windows:
            yield flush()
            group = []
        group.append((clip, windows))
    if group:
        yield flush()


def _pooled_embeddings(clap, features: dict, counts: list[int], max_windows: int) -> torch.Tensor:
    """Window features -> (len(counts), D): forwards of at most ``max_windows`` windows, then per
    clip the mean of its L2-normalised window embeddings, L2-normalised."""
    n = sum(counts)
    parts = [clap.embed_features({k: v[i:i + max_windows] for k, v in features.items()})
             for i in range(0, n, max_windows)]
    windows = torch.cat(parts)
    return F.normalize(torch.stack([w.mean(0) for w in windows.split(counts)]), dim=-1)


class _DecodeStream(IterableDataset):
    """Decode the needed rows of each job's file; yields plain tuples (picklable, no collation):

    ("seconds", file, rows, seconds)  the recording lengths of the rows of the batches that follow
    ("batch", file, rows, video_ids, features)  the needed rows of one unit, mel features ready
    ("skip", file, row, video_id, reason, detail)  a needed row that could not be decoded
    ("damaged", file, detail)   the read of the file failed part-way
    ("done", file)              this worker has finished its share of the file
    In a DataLoader worker it reads only its shard of units; in the main process, all of them.
    """

    def __init__(self, jobs: list[_DecodeJob], *, matcher: LabelMatcher, label_column: str | None,
                 require_labels: bool, unit_rows: int, feature_extractor, sampling_rate: int,
                 segmenting: Segmenting | None = None, rank: int = 0, world_size: int = 1):
        self.jobs, self.matcher, self.label_column = jobs, matcher, label_column
        self.require_labels, self.unit_rows = require_labels, unit_rows
        self.feature_extractor, self.sampling_rate = feature_extractor, sampling_rate
        self.segmenting, self.rank, self.world_size = segmenting, rank, world_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        shard = combine_shards(rank=self.rank, world_size=self.world_size, worker_id=worker, num_workers=workers)
        for job in self.jobs:
            yield from self._file(job, *shard)
            yield ("done", job.index)

    def _file(self, job: _DecodeJob, shard: int, count: int) -> Iterator[tuple]:
        try:
            bounds = _unit_bounds(job.path, self.unit_rows)
        except (pa.ArrowException, OSError) as e:  # changed since the label pass: the plain read judges
            yield ("damaged", job.index, f"cannot read the parquet footer: {e}")
            return
        starts = [b[0] for b in bounds]
        mine = [b for u, b in enumerate(bounds) if _shard_of(u, job.index, count) == shard]
        # iter_clips counts `limit` in this shard's rows, so pass the number of its rows below
        # the file's limit: the shards together then consider exactly the unsharded rows.
        limit = None if job.limit is None else sum(max(0, min(e, job.limit) - s) for s, e in mine)
        skips = _RecordingSkipLog()
        clips = iter_clips([job.path], matcher=self.matcher, skips=skips, label_column=self.label_column,
                           limit=limit, decode=True, require_labels=self.require_labels,
                           read_batch_rows=self.unit_rows, shard=((shard - job.index) % count, count),
                           max_samples=None if self.segmenting is not None else MAX_SAMPLES)
        pending: list[Clip] = []
        for clip in clips:
            yield from self._events(job, skips)
            if clip.meta.row not in job.needed:
                continue  # cached already: decoded for nothing, but not embedded again
            unit = bisect.bisect_right(starts, clip.meta.row) - 1
            if pending and bisect.bisect_right(starts, pending[0].meta.row) - 1 != unit:
                yield from self._batches(job, pending)
                pending = []
            pending.append(clip)
        yield from self._events(job, skips)
        if pending:
            yield from self._batches(job, pending)

    def _events(self, job: _DecodeJob, skips: _RecordingSkipLog) -> Iterator[tuple]:
        for reason, meta, detail in skips.drain():
            if meta is None:
                yield ("damaged", job.index, detail)
            elif meta.row in job.needed:  # the label pass yielded it, so this is a decode failure
                yield ("skip", job.index, meta.row, meta.video_id, reason, detail)

    def _batches(self, job: _DecodeJob, clips: list[Clip]) -> Iterator[tuple]:
        yield ("seconds", job.index, [c.meta.row for c in clips], [c.seconds for c in clips])
        for batch in _feature_batches(clips, feature_extractor=self.feature_extractor,
                                      sampling_rate=self.sampling_rate, segmenting=self.segmenting,
                                      max_windows=self.unit_rows):
            yield ("batch", job.index, *batch)


# ------------------------------------------------------------------ one embed_clips call


@dataclass
class _FilePlan:
    index: int
    path: Path
    limit: int | None                # iter_clips limit for this file
    digest: str | None               # parquet sha256, with a cache
    known: dict[int, RowOutcome]     # outcomes by row: cached or computed in this run
    clips: list[Clip] = field(default_factory=list)  # the rows to be embedded, no waveforms
    log: SkipLog = field(default_factory=SkipLog)    # this file's skips so far
    considered: int = 0              # rows the read considered (yielded or skipped)
    plain: bool = False              # clips/log come from a decoding read, not the label pass
    damaged: bool = False            # a decoding read failed part-way
    damaged_saved: bool = False      # ... and the cache knows it
    computed: set[int] = field(default_factory=set)
    seconds: dict[int, float] = field(default_factory=dict)  # decoded rows: recording length

    def needed(self) -> list[int]:
        return [c.meta.row for c in self.clips if c.meta.row not in self.known]


class _ClipRun:
    def __init__(self, clap, *, matcher: LabelMatcher, label_column: str | None, require_labels: bool,
                 batch_size: int, num_workers: int, store: AudioStore | None, cache: EmbeddingCache | None,
                 segmenting: Segmenting | None = None, rank: int = 0, world_size: int = 1,
                 keep: Callable[[ClipMeta], bool] | None = None):
        self.clap, self.matcher, self.label_column = clap, matcher, label_column
        self.keep = keep
        self.require_labels, self.unit_rows, self.num_workers = require_labels, batch_size, num_workers
        self.store, self.cache = store, cache
        self.segmenting, self.rank, self.world_size = segmenting, rank, world_size
        self.unsaved: dict[int, list[RowOutcome]] = defaultdict(list)
        self.saved_at: dict[int, float] = {}
        self.plans: list[_FilePlan] = []

    # ---- planning: label passes
    def plan(self, files: list[Path], start: int, remaining: int | None) -> None:
        """Plans for files[start:], as far as the run's ``limit`` (``remaining`` rows) reaches."""
        del self.plans[start:]
        for index in tqdm(range(start, len(files)), desc="read labels", unit="file", leave=False):
            if remaining is not None and remaining <= 0:
                break
            plan = self._label_pass(index, files[index], remaining)
            self.plans.append(plan)
            if remaining is not None:
                remaining -= plan.considered

    def _label_pass(self, index: int, path: Path, limit: int | None) -> _FilePlan:
        digest, known, damaged = None, {}, False
        if self.store is not None:
            digest = self.cache.file_digest(path)
            record = self.store.load(digest)
            known, damaged = record.outcomes, record.damaged
        plan = _FilePlan(index, path, limit, digest, known, damaged=damaged, damaged_saved=damaged)
        if damaged:
            self._damaged_read(plan)
            return plan
        skips = SkipLog()
        clips = list(iter_clips([path], matcher=self.matcher, skips=skips, label_column=self.label_column,
                                limit=limit, decode=False, require_labels=self.require_labels))
        # A cached outcome counts only for the clip it was computed for.
        byrow = {c.meta.row: c for c in clips}
        plan.known = {r: o for r, o in known.items() if r in byrow and o.video_id == byrow[r].meta.video_id}
        plan.clips, plan.log, plan.considered = self._kept(clips), skips, len(clips) + skips.rows_skipped()
        if skips.count("unreadable_file"):
            plan.damaged = True
            self._damaged_read(plan)
        return plan

    def _damaged_read(self, plan: _FilePlan) -> None:
        """A damaged file is read by one plain read: here, or (with several ranks) by the rank the
        file falls to; the others leave it alone (the merge after them reads it if need be)."""
        if plan.index % self.world_size == self.rank:
            self._plain_read(plan)
        else:
            plan.plain = True

    # ---- computing
    def _record(self, plan: _FilePlan, outcome: RowOutcome) -> None:
        plan.known[outcome.row] = outcome
        plan.computed.add(outcome.row)
        if self.store is None:
            return
        self.unsaved[plan.index].append(outcome)
        last = self.saved_at.setdefault(plan.index, time.monotonic())
        if len(self.unsaved[plan.index]) >= CHUNK_ROWS or time.monotonic() - last > CHUNK_SECONDS:
            self._save(plan)

    def _save(self, plan: _FilePlan, *, finished: bool = False) -> None:
        if self.store is None:
            return
        outcomes = self.unsaved.pop(plan.index, [])
        self.saved_at[plan.index] = time.monotonic()
        news = plan.damaged and not plan.damaged_saved
        try:
            if outcomes or news:
                self.store.write(plan.digest, outcomes, file_name=plan.path.name, damaged=plan.damaged)
                plan.damaged_saved = plan.damaged
            if finished and self.world_size == 1:  # with several ranks, the merge compacts
                self.store.compact(plan.digest, file_name=plan.path.name)
        except OSError as e:  # a full or read-only disk should not end hours of embedding
            log.warning("cannot write the embedding cache (%s); going on without it", e)
            self.store = None

    def _save_all(self) -> None:
        for index in list(self.unsaved):
            self._save(self.plans[index])

    def _forward(self, plan: _FilePlan, rows: list[int], video_ids: list[str], features: dict,
                 windows: list[int] | None = None) -> None:
        if windows is None:  # one window per clip: the whole batch in one forward
            emb = self.clap.embed_features(features)
        else:
            emb = _pooled_embeddings(self.clap, features, windows, self.unit_rows)
        for row, video_id, e in zip(rows, video_ids, emb):
            seconds = plan.seconds.get(row, float("nan"))
            if torch.isfinite(e).all():
                self._record(plan, RowOutcome(row, video_id, e.numpy(), seconds=seconds))
            else:
                self._record(plan, RowOutcome(row, video_id, None, NON_FINITE, seconds=seconds))

    def compute(self, progress: tqdm) -> None:
        """Decode and embed the needed rows of every file planned from the label pass."""
        jobs = [_DecodeJob(p.index, p.path, p.limit, frozenset(needed))
                for p in self.plans if not p.plain and (needed := self._my_needed(p))]
        if not jobs:
            return
        fe = self.clap.processor.feature_extractor
        stream = _DecodeStream(jobs, matcher=self.matcher, label_column=self.label_column,
                               require_labels=self.require_labels, unit_rows=self.unit_rows,
                               feature_extractor=fe, sampling_rate=self.clap.sampling_rate,
                               segmenting=self.segmenting, rank=self.rank, world_size=self.world_size)
        workers = max(1, self.num_workers)
        items = iter(stream) if self.num_workers == 0 else iter(DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is))
        finished: dict[int, int] = defaultdict(int)
        before = torch.get_num_threads()
        torch.set_num_threads(forward_threads(self.num_workers, before))
        try:
            for item in items:
                kind, plan = item[0], self.plans[item[1]]
                if kind == "seconds":
                    plan.seconds.update(zip(item[2], item[3]))
                elif kind == "batch":
                    self._forward(plan, *item[2:])
                    progress.update(len(item[2]))
                elif kind == "skip":
                    _, _, row, video_id, reason, detail = item
                    self._record(plan, RowOutcome(row, video_id, None, reason, detail))
                    progress.update(1)
                elif kind == "damaged":
                    plan.damaged = True
                elif kind == "done":
                    finished[plan.index] += 1
                    if finished[plan.index] == workers:
                        self._save(plan, finished=True)
        finally:  # keep what was computed, so an interrupted run resumes from here
            torch.set_num_threads(before)
            del items
            self._save_all()

    def _my_needed(self, plan: _FilePlan) -> list[int]:
        """The rows of ``plan`` still to embed that fall to this rank (all of them with one rank)."""
        needed = plan.needed()
        if self.world_size == 1 or not needed:
            return needed
        if plan.damaged:  # read whole by _damaged_read, or left to the merge
            return []
        workers = max(1, self.num_workers)
        count = self.world_size * workers
        mine = {r for u, (start, end) in enumerate(_unit_bounds(plan.path, self.unit_rows))
                if _shard_of(u, plan.index, count) // workers == self.rank for r in range(start, end)}
        return [r for r in needed if r in mine]

    def _plain_read(self, plan: _FilePlan) -> None:
        """Read the file with a decoding iter_clips, whose counts are then this file's; embed the
        rows that no outcome covers. For files whose read fails part-way."""
        skips, clips, pending = SkipLog(), [], []
        bounds: list[tuple[int, int]] | None = None

        def flush():
            plan.seconds.update((c.meta.row, c.seconds) for c in pending)
            for batch in _feature_batches(pending, feature_extractor=self.clap.processor.feature_extractor,
                                          sampling_rate=self.clap.sampling_rate, segmenting=self.segmenting,
                                          max_windows=self.unit_rows):
                self._forward(plan, *batch)
            for c in pending:
                c.waveform = None
            pending.clear()

        def unit(row):
            return bisect.bisect_right(bounds, (row, float("inf"))) - 1

        try:
            for clip in iter_clips([plan.path], matcher=self.matcher, skips=skips,
                                   label_column=self.label_column, limit=plan.limit, decode=True,
                                   require_labels=self.require_labels, read_batch_rows=self.unit_rows,
                                   max_samples=None if self.segmenting is not None else MAX_SAMPLES):
                clips.append(clip)
                if self.keep is not None and not self.keep(clip.meta):
                    clip.waveform = None
                    continue
                known = plan.known.get(clip.meta.row)
                if (known is not None and known.reason in ("", NON_FINITE)
                        and known.video_id == clip.meta.video_id):
                    clip.waveform = None
                    continue
                bounds = bounds or _unit_bounds(plan.path, self.unit_rows)
                if pending and unit(pending[0].meta.row) != unit(clip.meta.row):
                    flush()
                pending.append(clip)
            if pending:
                flush()
        finally:
            plan.damaged = plan.damaged or skips.count("unreadable_file") > 0
            self._save(plan, finished=True)
        plan.clips, plan.log, plan.plain = self._kept(clips), skips, True
        plan.considered = len(clips) + skips.rows_skipped()

    def _kept(self, clips: list[Clip]) -> list[Clip]:
        """The clips ``keep`` selects (all without it); the others are read and counted as
        considered, never embedded or returned."""
        return clips if self.keep is None else [c for c in clips if self.keep(c.meta)]

    def settle(self, files: list[Path], limit: int | None, progress: tqdm) -> None:
        """Compute, then re-read the files found damaged; re-plan what follows one whose count of
        rows considered changed (only matters with a limit)."""
        while True:
            self.compute(progress)
            redo = next((p for p in self.plans if not p.plain and (p.damaged or p.needed())), None)
            if redo is None:
                return
            before = redo.considered
            self._plain_read(redo)
            if limit is not None and redo.considered != before:
                used = sum(p.considered for p in self.plans[:redo.index + 1])
                self.plan(files, redo.index + 1, limit - used)

    def assemble(self, skips: SkipLog) -> tuple[ClipEmbeddings, int, int]:
        audio, labels, firsts, raws, metas, seconds = [], [], [], [], [], []
        reused = computed = 0
        for plan in self.plans:
            for clip in plan.clips:
                outcome = plan.known[clip.meta.row]
                if outcome.reason:
                    plan.log.add(outcome.reason, clip.meta, detail=outcome.detail)
                    continue
                computed += clip.meta.row in plan.computed
                reused += clip.meta.row not in plan.computed
                audio.append(outcome.embedding)
                labels.append(list(clip.label_indices))
                firsts.append(_first_known(self.matcher, clip.raw_labels))
                raws.append(list(clip.raw_labels))
                metas.append(clip.meta)
                seconds.append(outcome.seconds)
            skips.merge(plan.log)
        stacked = (torch.from_numpy(np.stack(audio).astype(np.float32, copy=False)) if audio
                   else torch.empty(0, self.clap.embed_dim))
        return ClipEmbeddings(stacked, labels, firsts, raws, metas, seconds), reused, computed


def _check_args(batch_size: int, num_workers: int, limit: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (got {num_workers})")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None (got {limit})")


def embed_clips(clap, parquet_dir: str | Path, *, matcher: LabelMatcher, skips: SkipLog,
                label_column: str = "human_labels", limit: int | None = None,
                batch_size: int = 32, require_labels: bool = True,
                cache: EmbeddingCache | None = None, num_workers: int = 0,
                segmenting: Segmenting | None = None, stats: dict | None = None,
                keep: Callable[[ClipMeta], bool] | None = None) -> ClipEmbeddings:
    """Embed the clips of a parquet folder; only embeddings stay in memory.

    limit: the first ``limit`` rows considered, across the sorted files (see ``iter_clips``).
    cache: an ``EmbeddingCache``; rows it holds are not decoded or embedded again. None: no cache.
    num_workers: DataLoader worker processes that decode and compute mel features (0: none).
    segmenting: embed whole recordings as the pooled embedding of overlapping windows (see
    ``data.audio.Segmenting``); None: the first 10 s of each clip.
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
    run = _ClipRun(clap, matcher=matcher, label_column=label_column, require_labels=require_labels,
                   batch_size=batch_size, num_workers=num_workers, store=store, cache=cache,
                   segmenting=segmenting, keep=keep)
    run.plan(files, 0, limit)
    todo = sum(len(p.needed()) for p in run.plans if not p.plain)
    with tqdm(total=todo, desc="embed audio", unit="clip", leave=False, disable=todo == 0) as progress:
        run.settle(files, limit, progress)
    clips, reused, computed = run.assemble(skips)
    if stats is not None:
        stats.update(reused=reused, computed=computed)
    log.info("audio embeddings: %d reused, %d computed (%d rows skipped in all)",
             reused, computed, skips.rows_skipped())
    return clips


def embed_shard(clap, parquet_dir: str | Path, *, rank: int, world_size: int, matcher: LabelMatcher,
                cache: EmbeddingCache, label_column: str = "human_labels", limit: int | None = None,
                batch_size: int = 32, require_labels: bool = True, num_workers: int = 0,
                segmenting: Segmenting | None = None) -> dict:
    """Rank ``rank`` of ``world_size``: embed this rank's units of the rows ``embed_clips`` with the
    same arguments would embed, into ``cache`` (its own chunk files). Returns counts.

    Every rank runs the (cheap) label pass over all files, so all ranks agree on the rows; rows
    that the cache already holds are not computed again. A damaged file is read whole by one
    rank. Nothing is assembled: afterwards a single ``embed_clips`` on the same cache (the merge,
    see ``hyperbolic.distributed``) reuses every row and computes whatever no rank did.
    """
    _check_args(batch_size, num_workers, limit)
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size (got rank={rank}, world_size={world_size})")
    files = list_parquet_files(parquet_dir)
    run = _ClipRun(clap, matcher=matcher, label_column=label_column, require_labels=require_labels,
                   batch_size=batch_size, num_workers=num_workers, store=cache.audio(clap, segmenting),
                   cache=cache, segmenting=segmenting, rank=rank, world_size=world_size)
    run.plan(files, 0, limit)
    todo = sum(len(run._my_needed(p)) for p in run.plans if not p.plain)
    with tqdm(total=todo, desc=f"embed audio (rank {rank})", unit="clip", leave=False,
              disable=todo == 0) as progress:
        run.compute(progress)
    computed = sum(len(p.computed) for p in run.plans)
    rows = sum(len(p.clips) for p in run.plans)
    log.info("rank %d/%d: %d audio embeddings computed (%d rows to embed in the run)", rank, world_size,
             computed, rows)
    return {"rank": rank, "world_size": world_size, "computed": computed, "rows": rows}
