"""The extraction engine behind ``embed_clips`` and ``embed_shard`` (``hyperbolic.embedding.embeddings``):
parquet rows -> decoded clips -> frozen CLAP audio embeddings, read from and written to the cache
(``hyperbolic.embedding.cache.AudioStore``) as it goes.

How ``embed_clips`` reads a folder, file by file in sorted order:

1. A label pass, ``iter_clips(decode=False)``: labels are matched against this run's class list
   and unknown labels and "no_known_label" rows are counted exactly as a decoding read counts
   them; ``limit`` (rows considered, across files) is cut here. Labels are never cached.
2. The rows it yields that the cache does not hold are decoded and embedded: each file is cut
   into units of ``batch_size`` rows (``iter_clips``'s ``read_batch_rows``); with
   ``num_workers > 0`` the units are dealt to DataLoader workers
   (``shard=combine_shards(...)``), which decode, resample and compute the mel features, while
   this process runs the forward; without workers this process decodes a unit on every thread,
   in turns with the forward. With ``full_batches`` (the default) the decoded clips are put back
   in reading order and forwarded ``batch_size`` at a time across units and files
   (``hyperbolic.embedding.batches``): every batch full but the run's last, the same batches for
   any ``num_workers``. Without it one forward batch is the rows of one unit that need
   embedding. CLAP's output for a clip changes in the last bits with the size of the batch it
   sits in, so either rule keeps results bit-identical across worker counts; with full batches a
   clip's batch also depends on what the cache held (docs/performance.md).
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

The parts, in the order a run meets them: ``ClipRun`` plans each file by its label pass and then
settles the plans (computing, re-reading damaged files); ``DecodeStream`` decodes the needed rows
(here or in workers) into mel features; ``_Embedder`` runs the forward and records each outcome in
the file's plan; ``_CacheWriter`` writes the outcomes to the cache in chunks; ``assemble`` puts the
usable ones back in reading order and counts the others.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.audio import MAX_SAMPLES, Segmenting
from data.audioset import Clip, ClipMeta, SkipLog, iter_clips
from data.labels import LabelMatcher
from hyperbolic.embedding.batches import FullBatches, Pending, stack
from hyperbolic.embedding.cache import AudioStore, EmbeddingCache, RowOutcome
from hyperbolic.embedding.decoding import DecodeJob, DecodeStream, as_is, feature_batches, shard_of, unit_bounds
from hyperbolic.embedding.split import choose_split, forward_threads, usable_cores, worth_measuring

log = logging.getLogger(__name__)

NON_FINITE = "non_finite_embedding"
CHUNK_ROWS = 512          # outcomes per cache chunk while a file is being embedded ...
CHUNK_SECONDS = 120.0     # ... or fewer, when they come slowly: what an interruption can lose


# ------------------------------------------------------------------ the forward of windowed clips


def _pooled_embeddings(clap, features: dict, counts: list[int], max_windows: int) -> torch.Tensor:
    """Window features -> (len(counts), D): forwards of at most ``max_windows`` windows, then per
    clip the mean of its L2-normalised window embeddings, L2-normalised."""
    n = sum(counts)
    parts = [clap.embed_features({k: v[i:i + max_windows] for k, v in features.items()})
             for i in range(0, n, max_windows)]
    windows = torch.cat(parts)
    return F.normalize(torch.stack([w.mean(0) for w in windows.split(counts)]), dim=-1)


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


@dataclass(frozen=True)
class _RunArgs:
    """What every read of one run shares: how rows are matched, cut into units and shared out."""

    matcher: LabelMatcher
    label_column: str | None
    require_labels: bool
    unit_rows: int                   # rows per unit: the run's batch_size
    num_workers: int
    segmenting: Segmenting | None = None
    rank: int = 0
    world_size: int = 1
    keep: Callable[[ClipMeta], bool] | None = None
    full_batches: bool = True        # forward batches of unit_rows clips across units (embedding.batches)

    def kept(self, clips: list[Clip]) -> list[Clip]:
        """The clips ``keep`` selects (all without it); the others are read and counted as
        considered, never embedded or returned."""
        return clips if self.keep is None else [c for c in clips if self.keep(c.meta)]

    def needed_here(self, plan: _FilePlan) -> list[int]:
        """The rows of ``plan`` still to embed that fall to this rank (all of them with one rank)."""
        needed = plan.needed()
        if self.world_size == 1 or not needed:
            return needed
        if plan.damaged:  # read whole by ClipRun._damaged_read, or left to the merge
            return []
        workers = max(1, self.num_workers)
        count = self.world_size * workers
        mine = {r for u, (start, end) in enumerate(unit_bounds(plan.path, self.unit_rows))
                if shard_of(u, plan.index, count) // workers == self.rank for r in range(start, end)}
        return [r for r in needed if r in mine]


class _CacheWriter:
    """Writes a run's outcomes to its ``AudioStore``, file by file: a chunk every ``CHUNK_ROWS``
    outcomes or ``CHUNK_SECONDS``, and when the file is finished. A full or read-only disk should
    not end hours of embedding: the first write that fails is logged, and from then on the run
    goes on without the cache (``store`` is None)."""

    def __init__(self, store: AudioStore | None, *, world_size: int):
        self.store, self.world_size = store, world_size
        self.unsaved: dict[int, list[RowOutcome]] = defaultdict(list)  # by file index
        self.saved_at: dict[int, float] = {}

    def add(self, plan: _FilePlan, outcome: RowOutcome) -> None:
        if self.store is None:
            return
        self.unsaved[plan.index].append(outcome)
        last = self.saved_at.setdefault(plan.index, time.monotonic())
        if len(self.unsaved[plan.index]) >= CHUNK_ROWS or time.monotonic() - last > CHUNK_SECONDS:
            self.save(plan)

    def save(self, plan: _FilePlan, *, finished: bool = False) -> None:
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

    def save_all(self, plans: list[_FilePlan]) -> None:
        for index in list(self.unsaved):
            self.save(plans[index])


class _Embedder:
    """Turns decoded clips into outcomes (an embedding, or the reason there is none) and records
    them: in the file's plan, and through the writer in the cache."""

    def __init__(self, clap, args: _RunArgs, writer: _CacheWriter):
        self.clap, self.args, self.writer = clap, args, writer

    def record(self, plan: _FilePlan, outcome: RowOutcome) -> None:
        plan.known[outcome.row] = outcome
        plan.computed.add(outcome.row)
        self.writer.add(plan, outcome)

    def forward(self, plan: _FilePlan, rows: list[int], video_ids: list[str], features: dict,
                windows: list[int] | None = None) -> None:
        if windows is None:  # one window per clip: the whole batch in one forward
            emb = self.clap.embed_features(features)
        else:
            emb = _pooled_embeddings(self.clap, features, windows, self.args.unit_rows)
        for row, video_id, e in zip(rows, video_ids, emb):
            self._outcome(plan, row, video_id, e)

    def _outcome(self, plan: _FilePlan, row: int, video_id: str, e: torch.Tensor) -> None:
        seconds = plan.seconds.get(row, float("nan"))
        if torch.isfinite(e).all():
            self.record(plan, RowOutcome(row, video_id, e.numpy(), seconds=seconds))
        else:
            self.record(plan, RowOutcome(row, video_id, None, NON_FINITE, seconds=seconds))

    def _full_batches(self, jobs: list[DecodeJob], plans: list[_FilePlan], progress: tqdm) -> FullBatches | None:
        """The run's needed rows in reading order, forwarded in batches of ``unit_rows`` clips
        (``hyperbolic.embedding.batches``); None without ``full_batches`` or with segmenting
        (groups of windows per unit): one unit's needed rows per forward."""
        if not self.args.full_batches or self.args.segmenting is not None:
            return None

        def forward(batch: list[Pending]) -> None:
            emb = self.clap.embed_features(stack(batch))
            for (file, row, video_id, _), e in zip(batch, emb):
                self._outcome(plans[file], row, video_id, e)
            progress.update(len(batch))

        return FullBatches([(j.index, sorted(j.needed)) for j in jobs], self.args.unit_rows, forward=forward,
                           finished=lambda file: self.writer.save(plans[file], finished=True))

    def embed(self, plan: _FilePlan, clips: list[Clip]) -> None:
        """Embed decoded clips of one unit of ``plan``'s file, in this process."""
        plan.seconds.update((c.meta.row, c.seconds) for c in clips)
        for batch in feature_batches(clips, feature_extractor=self.clap.processor.feature_extractor,
                                      sampling_rate=self.clap.sampling_rate, segmenting=self.args.segmenting,
                                      max_windows=self.args.unit_rows):
            self.forward(plan, *batch)

    def compute(self, plans: list[_FilePlan], progress: tqdm) -> None:
        """Decode and embed the needed rows (of this rank) of every file planned from its label pass."""
        jobs = [DecodeJob(p.index, p.path, p.limit, frozenset(needed))
                for p in plans if not p.plain and (needed := self.args.needed_here(p))]
        if not jobs:
            return
        before = torch.get_num_threads()
        num_workers = self.args.num_workers
        batches = self._full_batches(jobs, plans, progress)
        if num_workers is None:
            probe = self._probe_split if batches is None else partial(self._probe_full, batches=batches)
            jobs, num_workers = probe(jobs, plans, progress)
        items = self._decoded(jobs, num_workers)
        workers = max(1, num_workers)
        finished: dict[int, int] = defaultdict(int)
        torch.set_num_threads(forward_threads(num_workers, before))
        try:
            for item in items:
                plan = plans[item[1]]
                if item[0] != "done":
                    self._take(plan, item, progress, batches)
                    continue
                finished[plan.index] += 1
                if finished[plan.index] < workers:
                    continue
                if batches is None:
                    self.writer.save(plan, finished=True)
                else:
                    batches.file_done(plan.index)
            if batches is not None:
                batches.flush()
        finally:  # keep what was computed, so an interrupted run resumes from here
            torch.set_num_threads(before)
            del items
            self.writer.save_all(plans)

    def _decoded(self, jobs: list[DecodeJob], num_workers: int) -> Iterator[tuple]:
        """The items of a ``DecodeStream`` over ``jobs``: read here, or by DataLoader workers."""
        a = self.args
        stream = DecodeStream(jobs, matcher=a.matcher, label_column=a.label_column,
                               require_labels=a.require_labels, unit_rows=a.unit_rows,
                               feature_extractor=self.clap.processor.feature_extractor,
                               sampling_rate=self.clap.sampling_rate, segmenting=a.segmenting, rank=a.rank,
                               world_size=a.world_size)
        return iter(stream) if num_workers == 0 else iter(DataLoader(
            stream, batch_size=None, num_workers=num_workers, collate_fn=as_is))

    def _probe_split(self, jobs: list[DecodeJob], plans: list[_FilePlan],
                     progress: tqdm) -> tuple[list[DecodeJob], int]:
        """``num_workers`` None, one unit per forward (``--no-full-batches``): decode the first
        unit here and forward it on every core, timing both, and choose the workers for the rest
        (``_choose``). Returns the jobs left (the probed rows taken out) and the workers."""
        if not self._worth_a_probe(jobs):
            return jobs, 0
        first, plan = jobs[0], plans[jobs[0].index]
        done: set[int] = set()
        decode_s = decode_cpu_s = forward_s = 0.0
        clips, item = 0, ("done",)
        getattr(self.clap, "model", None)  # load the weights (lazy) before the clock starts
        stream = iter(self._decoded([first], 0))
        started, cpu = time.perf_counter(), time.process_time()
        for item in stream:
            if item[0] == "done":
                break
            if item[0] == "batch":
                decode_s, decode_cpu_s = time.perf_counter() - started, time.process_time() - cpu
                clips = len(item[2])
                started = time.perf_counter()
            self._take(plan, item, progress)
            if item[0] == "skip":
                done.add(item[2])
            elif item[0] == "batch":
                forward_s = time.perf_counter() - started
                done.update(item[2])
                break
        stream.close()
        rest = [DecodeJob(first.index, first.path, first.limit, first.needed - done)] + jobs[1:]
        if not rest[0].needed or item[0] == "done":
            rest = rest[1:]
            self.writer.save(plan, finished=True)
        if not clips:
            return rest, 0
        return rest, self._choose(decode_s / clips, decode_cpu_s / clips, forward_s / clips, item[4], rest, clips)

    def _probe_full(self, jobs: list[DecodeJob], plans: list[_FilePlan], progress: tqdm, *,
                    batches: FullBatches) -> tuple[list[DecodeJob], int]:
        """``num_workers`` None, full batches: decode here, into the run's own full batches, until
        the first of them is forwarded (on every core), timing the decoding and that forward, and
        choose the workers for the rest (``_choose``). Nothing is decoded or forwarded twice.
        Returns the jobs left (the rows decoded here taken out) and the workers."""
        if not self._worth_a_probe(jobs):
            return jobs, 0
        forwarded: dict = {"s": 0.0, "cpu": 0.0, "clips": 0, "first": None}
        send = batches.forward

        def timed(batch: list[Pending]) -> None:
            started, cpu = time.perf_counter(), time.process_time()
            send(batch)
            forwarded["s"] += time.perf_counter() - started
            forwarded["cpu"] += time.process_time() - cpu
            forwarded["clips"] += len(batch)
            forwarded["first"] = forwarded["first"] or batch[0][3]

        passed: dict[int, set[int]] = defaultdict(set)  # rows decoded (or failed) here, per file
        ended: set[int] = set()                          # files decoded to their end here
        getattr(self.clap, "model", None)  # load the weights (lazy) before the clock starts
        batches.forward = timed
        stream = iter(self._decoded(jobs, 0))
        started, cpu = time.perf_counter(), time.process_time()
        try:
            for item in stream:
                if item[0] == "done":
                    ended.add(item[1])
                    batches.file_done(item[1])
                else:
                    self._take(plans[item[1]], item, progress, batches)
                    if item[0] in ("batch", "skip"):
                        passed[item[1]].update(item[2] if item[0] == "batch" else [item[2]])
                if forwarded["clips"]:
                    break
        finally:
            stream.close()
            batches.forward = send
        decode_s = time.perf_counter() - started - forwarded["s"]
        decode_cpu_s = time.process_time() - cpu - forwarded["cpu"]
        rest = []
        for job in (j for j in jobs if j.index not in ended):
            if job.needed - passed[job.index]:
                rest.append(DecodeJob(job.index, job.path, job.limit, job.needed - passed[job.index]))
            else:  # every needed row came: nothing left to read
                batches.file_done(job.index)
        clips = sum(len(rows) for rows in passed.values())
        if not forwarded["clips"]:
            return rest, 0
        return rest, self._choose(decode_s / clips, decode_cpu_s / clips, forwarded["s"] / forwarded["clips"],
                                  forwarded["first"], rest, clips)

    def _worth_a_probe(self, jobs: list[DecodeJob]) -> bool:
        """Too little work to pay a worker's start, or one core: no probe, no worker."""
        return usable_cores() >= 2 and sum(len(j.needed) for j in jobs) > 2 * self.args.unit_rows

    def _choose(self, decode: float, cpu: float, forward: float, features: dict, rest: list[DecodeJob],
                measured_on: int) -> int:
        """The workers for the rest of the run (``choose_split``) from per-clip seconds measured
        here: ``decode`` (wall), ``cpu`` (of decoding) and ``forward`` (on every thread), timing
        one thread less (on ``features``, one clip) where a worker could repay it; logged."""
        cores, threads = usable_cores(), torch.get_num_threads()
        left = sum(len(j.needed) for j in rest)
        one_less = None
        if self.args.segmenting is None and worth_measuring(decode, forward, cores, left, threads=threads,
                                                             decode_cpu_s=cpu):
            one_less = self._one_less(features, threads)
        workers = choose_split(decode, forward, cores, threads=threads, one_less=one_less, decode_cpu_s=cpu)
        log.info("decoding split: %d worker(s), the forward on %d thread(s) (measured per clip on the first %d: "
                 "%.1f ms of decoding (%.1f ms of CPU), %.1f ms of forward on %d thread(s); %s)", workers,
                 forward_threads(workers, threads), measured_on, 1000 * decode, 1000 * cpu,
                 1000 * forward, threads, "one thread less not timed: no worker could repay it" if one_less is None
                 else f"{one_less:.2f}x the time on one thread less")
        return workers

    def _one_less(self, features: dict, threads: int, pairs: int = 3) -> float | None:
        """Forward time on ``threads - 1`` threads over that on ``threads``, for the batch's first
        clip (results discarded): one untimed forward, then ``pairs`` pairs timed in turn; the
        median of the pairs' ratios (on a shared machine one timing in a few can be off by 2x, and
        a ratio near 1 would hand a core to a worker). None on one thread."""
        if threads < 2:
            return None
        part = {k: v[:1] for k, v in features.items()}
        before, ratios = torch.get_num_threads(), []
        try:
            torch.set_num_threads(threads)
            self.clap.embed_features(part)
            for _ in range(pairs):
                timed = {}
                for n in (threads - 1, threads):
                    torch.set_num_threads(n)
                    started = time.perf_counter()
                    self.clap.embed_features(part)
                    timed[n] = time.perf_counter() - started
                ratios.append(timed[threads - 1] / timed[threads])
        finally:
            torch.set_num_threads(before)
        return statistics.median(ratios)

    def _take(self, plan: _FilePlan, item: tuple, progress: tqdm, batches: FullBatches | None = None) -> None:
        """One ``DecodeStream`` item other than "done" (see there); decoded clips go to
        ``batches`` when given, else straight to the forward."""
        kind = item[0]
        if kind == "seconds":
            plan.seconds.update(zip(item[2], item[3]))
        elif kind == "batch" and batches is not None:
            batches.add(plan.index, *item[2:5])
        elif kind == "batch":
            self.forward(plan, *item[2:])
            progress.update(len(item[2]))
        elif kind == "skip":
            _, _, row, video_id, reason, detail = item
            self.record(plan, RowOutcome(row, video_id, None, reason, detail))
            progress.update(1)
            if batches is not None:
                batches.resolve(plan.index, row)
        elif kind == "damaged":
            plan.damaged = True


def _plain_read(plan: _FilePlan, args: _RunArgs, embedder: _Embedder) -> None:
    """Read the file with a decoding iter_clips, whose counts are then this file's; embed the
    rows that no outcome covers. For files whose read fails part-way."""
    skips, clips, pending = SkipLog(), [], []
    bounds: list[tuple[int, int]] | None = None

    def flush():
        embedder.embed(plan, pending)
        for c in pending:
            c.waveform = None
        pending.clear()

    def unit(row):
        return bisect.bisect_right(bounds, (row, float("inf"))) - 1

    try:
        for clip in iter_clips([plan.path], matcher=args.matcher, skips=skips,
                               label_column=args.label_column, limit=plan.limit, decode=True,
                               require_labels=args.require_labels, read_batch_rows=args.unit_rows,
                               max_samples=None if args.segmenting is not None else MAX_SAMPLES, warn=False):
            clips.append(clip)
            if args.keep is not None and not args.keep(clip.meta):
                clip.waveform = None
                continue
            known = plan.known.get(clip.meta.row)
            if known is not None and known.reason in ("", NON_FINITE) and known.video_id == clip.meta.video_id:
                clip.waveform = None
                continue
            bounds = bounds or unit_bounds(plan.path, args.unit_rows)
            if pending and unit(pending[0].meta.row) != unit(clip.meta.row):
                flush()
            pending.append(clip)
        if pending:
            flush()
    finally:
        plan.damaged = plan.damaged or skips.count("unreadable_file") > 0
        embedder.writer.save(plan, finished=True)
    plan.clips, plan.log, plan.plain = args.kept(clips), skips, True
    plan.considered = len(clips) + skips.rows_skipped()


class ClipRun:
    """One ``embed_clips`` or ``embed_shard`` call: a plan per file, made by its label pass, then
    the outcomes of the planned rows, from the cache or computed."""

    def __init__(self, clap, *, matcher: LabelMatcher, label_column: str | None, require_labels: bool,
                 batch_size: int, num_workers: int, store: AudioStore | None, cache: EmbeddingCache | None,
                 segmenting: Segmenting | None = None, rank: int = 0, world_size: int = 1,
                 keep: Callable[[ClipMeta], bool] | None = None, full_batches: bool = True):
        self.args = _RunArgs(matcher, label_column, require_labels, batch_size, num_workers, segmenting,
                             rank, world_size, keep, full_batches)
        self.cache = cache
        self.writer = _CacheWriter(store, world_size=world_size)
        self.embedder = _Embedder(clap, self.args, self.writer)
        self.plans: list[_FilePlan] = []

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
        store = self.writer.store  # None once a write has failed: the run goes on without the cache
        if store is not None:
            digest = self.cache.file_digest(path)
            record = store.load(digest)
            known, damaged = record.outcomes, record.damaged
        plan = _FilePlan(index, path, limit, digest, known, damaged=damaged, damaged_saved=damaged)
        if damaged:
            self._damaged_read(plan)
            return plan
        skips, a = SkipLog(), self.args
        clips = list(iter_clips([path], matcher=a.matcher, skips=skips, label_column=a.label_column,
                                limit=limit, decode=False, require_labels=a.require_labels, warn=False))
        # A cached outcome counts only for the clip it was computed for.
        byrow = {c.meta.row: c for c in clips}
        plan.known = {r: o for r, o in known.items() if r in byrow and o.video_id == byrow[r].meta.video_id}
        plan.clips, plan.log, plan.considered = a.kept(clips), skips, len(clips) + skips.rows_skipped()
        if skips.count("unreadable_file"):
            plan.damaged = True
            self._damaged_read(plan)
        return plan

    def _damaged_read(self, plan: _FilePlan) -> None:
        """A damaged file is read by one plain read: here, or (with several ranks) by the rank the
        file falls to; the others leave it alone (the merge after them reads it if need be)."""
        if plan.index % self.args.world_size == self.args.rank:
            _plain_read(plan, self.args, self.embedder)
        else:
            plan.plain = True

    def needed_here(self, plan: _FilePlan) -> list[int]:
        """The rows of ``plan`` still to embed that fall to this rank (all of them with one rank)."""
        return self.args.needed_here(plan)

    def compute(self, progress: tqdm) -> None:
        """Decode and embed the needed rows (of this rank) of every file planned from its label pass."""
        self.embedder.compute(self.plans, progress)

    def settle(self, files: list[Path], limit: int | None, progress: tqdm) -> None:
        """Compute, then re-read the files found damaged; re-plan what follows one whose count of
        rows considered changed (only matters with a limit)."""
        while True:
            self.compute(progress)
            redo = next((p for p in self.plans if not p.plain and (p.damaged or p.needed())), None)
            if redo is None:
                return
            before = redo.considered
            _plain_read(redo, self.args, self.embedder)
            if limit is not None and redo.considered != before:
                used = sum(p.considered for p in self.plans[:redo.index + 1])
                self.plan(files, redo.index + 1, limit - used)


def assemble(plans: list[_FilePlan], skips: SkipLog) -> tuple[list[tuple[Clip, RowOutcome]], int, int]:
    """The clips of a settled run that have an embedding, with their outcomes, in reading order
    (files in order, rows in order), and the counts (reused from the cache, computed). The others
    are counted in their file's skips, which go into ``skips`` file by file. A file counted as
    unreadable is warned about here, once, from the counts that are reported (its reads ran with
    ``warn=False``: the label pass and the plain read of a damaged file both meet it)."""
    used: list[tuple[Clip, RowOutcome]] = []
    reused = computed = 0
    for plan in plans:
        for clip in plan.clips:
            outcome = plan.known[clip.meta.row]
            if outcome.reason:
                plan.log.add(outcome.reason, clip.meta, detail=outcome.detail)
                continue
            computed += clip.meta.row in plan.computed
            reused += clip.meta.row not in plan.computed
            used.append((clip, outcome))
        for example in plan.log.examples("unreadable_file"):
            log.warning("skipping %s: %s", plan.path, example["detail"])
        skips.merge(plan.log)
    return used, reused, computed
