"""Decoding for the extraction engine (``hyperbolic.embedding.extraction``): which rows of a file
form a unit, which shard decodes it, and ``DecodeStream``, the iterable a DataLoader (or this
process) runs to turn a file's needed rows into mel features, in units, with the skips it met.
Nothing here runs the model."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data.audio import MAX_SAMPLES, Segmenting
from data.audioset import Clip, ClipMeta, SkipLog, combine_shards, iter_clips
from data.labels import LabelMatcher
from hyperbolic.embedding.clap import audio_features


def unit_bounds(path: Path, unit_rows: int) -> list[tuple[int, int]]:
    """[start, end) rows of each unit of ``iter_clips(read_batch_rows=unit_rows)``, in order."""
    meta = pq.ParquetFile(path).metadata
    bounds, row0 = [], 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        bounds += [(row0 + s, row0 + min(s + unit_rows, n)) for s in range(0, n, unit_rows)]
        row0 += n
    return bounds


class RecordingSkipLog(SkipLog):
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
class DecodeJob:
    index: int                 # the file's position in the run
    path: Path
    limit: int | None          # iter_clips limit for this file (what the run's limit leaves)
    needed: frozenset[int]     # rows to decode and embed


def as_is(item):
    return item


def shard_of(unit: int, file_index: int, count: int) -> int:
    """The shard (``combine_shards`` index, of ``count``) that unit ``unit`` of the run's
    ``file_index``-th file belongs to. The offset by file spreads single-unit files over shards."""
    return (unit + file_index) % count


def feature_batches(clips: list[Clip], *, feature_extractor, sampling_rate: int,
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


class DecodeStream(IterableDataset):
    """Decode the needed rows of each job's file; yields plain tuples (picklable, no collation):

    ("seconds", file, rows, seconds)  the recording lengths of the rows of the batches that follow
    ("batch", file, rows, video_ids, features)  the needed rows of one unit, mel features ready
    ("skip", file, row, video_id, reason, detail)  a needed row that could not be decoded
    ("damaged", file, detail)   the read of the file failed part-way
    ("done", file)              this worker has finished its share of the file
    In a DataLoader worker it reads only its shard of units; in the main process, all of them.
    """

    def __init__(self, jobs: list[DecodeJob], *, matcher: LabelMatcher, label_column: str | None,
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
        # in this process, decoding takes turns with the forward and may use its threads; a worker
        # decodes on the one thread torch gives it
        threads = torch.get_num_threads() if info is None else 1
        for job in self.jobs:
            yield from self._file(job, *shard, threads)
            yield ("done", job.index)

    def _file(self, job: DecodeJob, shard: int, count: int, threads: int = 1) -> Iterator[tuple]:
        try:
            bounds = unit_bounds(job.path, self.unit_rows)
        except (pa.ArrowException, OSError) as e:  # changed since the label pass: the plain read judges
            yield ("damaged", job.index, f"cannot read the parquet footer: {e}")
            return
        starts = [b[0] for b in bounds]
        mine = [b for u, b in enumerate(bounds) if shard_of(u, job.index, count) == shard]
        # iter_clips counts `limit` in this shard's rows, so pass the number of its rows below
        # the file's limit: the shards together then consider exactly the unsharded rows.
        limit = None if job.limit is None else sum(max(0, min(e, job.limit) - s) for s, e in mine)
        skips = RecordingSkipLog()
        clips = iter_clips([job.path], matcher=self.matcher, skips=skips, label_column=self.label_column,
                           limit=limit, decode=True, require_labels=self.require_labels,
                           read_batch_rows=self.unit_rows, shard=((shard - job.index) % count, count),
                           max_samples=None if self.segmenting is not None else MAX_SAMPLES, warn=False,
                           only_rows=job.needed.__contains__,  # rows cached already: not decoded
                           decode_threads=threads)
        last: dict[int, int] = {}  # unit -> its last needed row: its batch goes out with that row
        for row in job.needed:
            unit = bisect.bisect_right(starts, row) - 1
            last[unit] = max(last.get(unit, -1), row)
        pending: list[Clip] = []
        for clip in clips:
            yield from self._events(job, skips)
            unit = bisect.bisect_right(starts, clip.meta.row) - 1
            if pending and bisect.bisect_right(starts, pending[0].meta.row) - 1 != unit:
                yield from self._batches(job, pending)  # (a unit whose last needed row failed to decode)
                pending = []
            pending.append(clip)
            if clip.meta.row == last[unit]:  # complete: out now, not once the next unit's first clip is
                yield from self._batches(job, pending)  # decoded (for nothing, if the reader stops here)
                pending = []
        yield from self._events(job, skips)
        if pending:
            yield from self._batches(job, pending)

    def _events(self, job: DecodeJob, skips: RecordingSkipLog) -> Iterator[tuple]:
        for reason, meta, detail in skips.drain():
            if meta is None:
                yield ("damaged", job.index, detail)
            elif meta.row in job.needed:  # the label pass yielded it, so this is a decode failure
                yield ("skip", job.index, meta.row, meta.video_id, reason, detail)

    def _batches(self, job: DecodeJob, clips: list[Clip]) -> Iterator[tuple]:
        yield ("seconds", job.index, [c.meta.row for c in clips], [c.seconds for c in clips])
        for batch in feature_batches(clips, feature_extractor=self.feature_extractor,
                                      sampling_rate=self.sampling_rate, segmenting=self.segmenting,
                                      max_windows=self.unit_rows):
            yield ("batch", job.index, *batch)
