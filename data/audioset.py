"""Stream clips out of an AudioSet-style parquet folder.

A folder holds `*.parquet` files (read in sorted name order, not recursively), each with
an `audio` column (see `data.audio.decode_audio_cell` for the cell layouts), a label
column (`human_labels` by default: a list of class names or a string, per file), and
optionally `video_id`. Files are streamed with `ParquetFile.iter_batches`, one row group
at a time and only the needed columns, and a waveform is decoded only when its clip is
yielded: memory holds at most one row group's encoded audio (pyarrow buffers a row
group's column chunk) plus the clip being used, never a folder's waveforms.

Nothing is dropped silently: every row that is not yielded is counted exactly once in
a `SkipLog` under a reason, with a few examples; a file that cannot be read is counted
once under "unreadable_file" and logged; structural problems (a missing folder or
column, a cell layout this reader does not know) raise DatasetError.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.audio import MAX_SAMPLES, AudioDecodeError, decode_audio_cell, to_mono_48k
from data.errors import DatasetError
from data.labels import LabelMatcher

logger = logging.getLogger(__name__)

AUDIO_COLUMN = "audio"
VIDEO_ID_COLUMN = "video_id"
MAX_EXAMPLES = 5

__all__ = [
    "Clip",
    "ClipMeta",
    "DatasetError",
    "LabelCounter",
    "SkipLog",
    "combine_shards",
    "describe_skipped",
    "count_rows",
    "iter_clips",
    "list_parquet_files",
]


@dataclass(frozen=True)
class ClipMeta:
    file: str  # file name relative to the folder
    row: int  # row index within that file
    video_id: str  # "" when the file has no video_id column (or the cell is null)


@dataclass
class Clip:
    meta: ClipMeta
    label_indices: list[int]
    raw_labels: list[str]  # the cell's labels as written, in order, known and unknown (LabelMatcher.split)
    waveform: np.ndarray | None  # 48 kHz mono float32 (samples,); None when decode=False
    seconds: float | None = None  # the recording's length as decoded, before any crop; None when decode=False


class LabelCounter(Counter):
    """Counts of label strings that matched no class."""

    def to_dict(self, top: int | None = None) -> list[dict[str, Any]]:
        """`[{"label", "count"}]`, most frequent first, ties by label (stable across shards)."""
        items = sorted(self.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"label": k, "count": v} for k, v in items[:top]]


class SkipLog:
    """What was not yielded, and why: a count and up to MAX_EXAMPLES examples per reason."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._rows = 0  # adds with a meta: skipped rows, as opposed to skipped files
        self._file_counts: Counter[str] = Counter()  # adds without a meta (whole or partly unread files), by reason
        self._examples: dict[str, list[dict[str, Any]]] = {}
        self.unknown_labels = LabelCounter()

    def add(self, reason: str, meta: ClipMeta | None = None, *, file: str | None = None, detail: str = "") -> None:
        """Count one skipped row (`meta`) or one skipped file (`file`, no meta)."""
        self._counts[reason] += 1
        self._rows += meta is not None
        self._file_counts[reason] += meta is None
        examples = self._examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(
                {
                    "file": meta.file if meta is not None else file,
                    "row": meta.row if meta is not None else None,
                    "video_id": meta.video_id if meta is not None else None,
                    "detail": detail,
                }
            )

    def count(self, reason: str) -> int:
        return self._counts[reason]

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def rows_skipped(self) -> int:
        """Skipped rows (adds with a meta); files counted without a meta are not rows."""
        return self._rows

    def files_skipped(self) -> int:
        """Files counted without a meta (not readable, or read only up to a damaged row group)."""
        return sum(self._file_counts.values())

    def examples(self, reason: str) -> list[dict[str, Any]]:
        """The kept examples of ``reason`` (at most MAX_EXAMPLES)."""
        return list(self._examples.get(reason, []))

    def summary(self) -> str:
        """``describe_skipped(self.to_dict())``: the closing line of a run."""
        return describe_skipped(self.to_dict())

    def unknown_labels_list(self, top: int | None = None) -> list[dict[str, Any]]:
        """`unknown_labels.to_dict(top)`: `[{"label", "count"}]`, most frequent first."""
        return self.unknown_labels.to_dict(top)

    @property
    def reasons(self) -> list[str]:
        return sorted(self._counts)

    def merge(self, other: SkipLog) -> SkipLog:
        """Add `other`'s counts, examples (up to the cap) and unknown labels into self."""
        self._rows += other._rows
        self._file_counts.update(other._file_counts)
        for reason, n in other._counts.items():
            self._counts[reason] += n
            mine = self._examples.setdefault(reason, [])
            mine.extend(other._examples.get(reason, [])[: MAX_EXAMPLES - len(mine)])
        self.unknown_labels.update(other.unknown_labels)
        return self

    def describe(self, label_column: str | None = None) -> str:
        """One line for a message: counts by reason, the commonest unknown labels, and with rows
        lacking a known label, the flags that decide which labels are read."""
        if not self.total:
            return "nothing skipped"
        text = ", ".join(f"{self._counts[r]} {r}" for r in self.reasons)
        unknown = [item["label"] for item in self.unknown_labels_list(3)]
        if unknown:
            text += f"; commonest unknown labels: {', '.join(repr(u) for u in unknown)}"
        if self._counts["no_known_label"] and label_column is not None:
            text += (f"; check --label-column (now {label_column!r}) and --class-labels: a row's labels must "
                     "name a class or its AudioSet id")
        return text

    def to_dict(self) -> dict[str, Any]:
        """``total`` (files + rows), ``files_skipped``, ``rows_skipped``, and per reason its
        ``count``, how many of them are ``files`` and up to MAX_EXAMPLES ``examples``."""
        return {
            "total": self.total,
            "files_skipped": self.files_skipped(),
            "rows_skipped": self.rows_skipped(),
            "reasons": {
                r: {"count": self._counts[r], "files": self._file_counts[r], "examples": list(self._examples.get(r, []))}
                for r in self.reasons
            },
        }


def describe_skipped(skipped: dict[str, Any] | None) -> str:
    """The closing line of a run from a ``SkipLog.to_dict()`` block (as the results JSON and
    setup.json hold it): files and rows skipped, each by reason, e.g. ``skipped: 1 file
    (1 unreadable_file), 3 rows (2 decode_error, 1 no_known_label)``. A block written before
    files were told apart from rows counts every skip as a row."""
    reasons = (skipped or {}).get("reasons") or {}
    files = {r: v.get("files", 0) for r, v in reasons.items() if v.get("files", 0)}
    rows = {r: v["count"] - files.get(r, 0) for r, v in reasons.items() if v["count"] - files.get(r, 0)}
    parts = []
    for what, counts in (("file", files), ("row", rows)):
        n = sum(counts.values())
        if n:
            by = ", ".join(f"{counts[r]} {r}" for r in sorted(counts))
            parts.append(f"{n} {what}{'' if n == 1 else 's'} ({by})")
    return "skipped: " + (", ".join(parts) if parts else "nothing")


def list_parquet_files(folder: str | Path) -> list[Path]:
    """Sorted `*.parquet` files directly inside `folder`; DatasetError if there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"dataset folder {folder} does not exist; pass a folder of .parquet files")
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} is not a folder; pass the folder that holds the .parquet files")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file())
    if not files:
        nested = sorted(folder.glob("*/*.parquet"))[:3]
        hint = (
            f" (there are some one level down, e.g. {', '.join(str(p) for p in nested)}; pass that subfolder)"
            if nested
            else ""
        )
        raise DatasetError(f"dataset folder {folder} holds no .parquet file{hint}")
    return files


def open_parquet_files(folder: str | Path):
    """``(path, pyarrow.parquet.ParquetFile)`` for each file of ``list_parquet_files(folder)`` whose
    footer can be read; an unreadable file is passed over here (the audio pass counts it as a skip)."""
    for path in list_parquet_files(folder):
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError):
            continue
        yield path, pf


def count_rows(folder: str | Path) -> tuple[int, list[str]]:
    """``(rows, unreadable)``: the rows the folder's parquet files hold, from their footers (no
    data is read), and the names of the files whose footer cannot be read (their rows are not
    in the count)."""
    rows, unreadable = 0, []
    for path in list_parquet_files(folder):
        try:
            with pq.ParquetFile(path) as pf:
                rows += pf.metadata.num_rows
        except (pa.ArrowException, OSError):
            unreadable.append(path.name)
    return rows, unreadable


def combine_shards(*, rank: int = 0, world_size: int = 1, worker_id: int = 0, num_workers: int = 1) -> tuple[int, int]:
    """`shard=(index, count)` for DataLoader worker `worker_id` of distributed rank `rank`."""
    if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
        raise ValueError(
            f"need 0 <= rank < world_size and 0 <= worker_id < num_workers; "
            f"got rank={rank}, world_size={world_size}, worker_id={worker_id}, num_workers={num_workers}"
        )
    return rank * num_workers + worker_id, world_size * num_workers


def _resolve_files(folder_or_files: str | Path | Iterable[str | Path]) -> list[tuple[Path, str]]:
    if isinstance(folder_or_files, (str, os.PathLike)):
        return [(p, p.name) for p in list_parquet_files(folder_or_files)]
    files = [Path(p) for p in folder_or_files]
    if not files:
        raise DatasetError("iter_clips got an empty list of parquet files; pass a folder or at least one file")
    names = [p.name for p in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(
            f"parquet files {dup} appear more than once by name; clips are identified by file name, "
            "so pass files with distinct names"
        )
    for p in files:
        if not p.is_file():
            raise DatasetError(f"parquet file {p} does not exist or is not a file")
    return list(zip(files, names))


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count; got {shard!r}")
    return index, count


def iter_clips(
    folder_or_files: str | Path | Iterable[str | Path],
    *,
    matcher: LabelMatcher,
    skips: SkipLog,
    label_column: str | None = "human_labels",
    limit: int | None = None,
    decode: bool = True,
    require_labels: bool = True,
    read_batch_rows: int = 64,
    shard: tuple[int, int] | None = None,
    max_samples: int | None = MAX_SAMPLES,
    warn: bool = True,
    only_rows: Callable[[int], bool] | None = None,
    decode_threads: int = 1,
) -> Iterator[Clip]:
    """Yield the clips of a parquet folder (or of a list of files, in the order given).

    Per row: labels are matched first (unknown ones counted in
    `skips.unknown_labels`); with `require_labels`, a row with no known label is
    skipped as "no_known_label" without decoding; then, with `decode`, the audio is
    decoded to 48 kHz mono and a failure is skipped under its AudioDecodeError reason.
    Every skipped row is counted in `skips` exactly once.

    limit: the first `limit` rows *considered* (of this shard), skipped rows included,
        so `limit=N` reads exactly N rows and yields at most N clips. None: all rows.
    decode: False yields `waveform=None` and does not read the audio column at all
        (its presence is still checked), so bad audio is not detected then.
    label_column: None reads no labels (every clip gets `[]`; use with
        `require_labels=False`).
    shard: `(index, count)`. Each file's rows are cut into units of `read_batch_rows`
        rows (per row group) numbered across files in order, and unit `u` belongs to
        shard `u % count`. Shards are disjoint and their union is the unsharded stream;
        a shard reads only the row groups that hold its units. See `combine_shards`.
    max_samples: waveforms keep their first `max_samples` samples at 48 kHz (the 10 s rule of
        `data.audio`); None keeps whole recordings (for `data.audio.Segmenting`).
    only_rows: a predicate on a file's row number; rows it rejects are considered (they count
        towards `limit`) but neither matched, decoded, yielded nor counted (the extraction engine's
        rows already cached). None: every row.
    decode_threads: with `decode`, the rows of one unit (`read_batch_rows` rows) are decoded and
        resampled on up to this many threads before they are processed in order (libsndfile and
        soxr release the GIL); each row is decoded alone as with 1, so clips, skips and their
        order are the same for any count.
    Unreadable files (not parquet, torn, corrupt pages) are logged (unless `warn` is False: a
    caller that reads a file more than once warns itself, once) and counted under
    "unreadable_file" by each shard that meets them; clips already yielded from a file
    that fails part-way stay yielded, and the count's detail says how many rows were lost.
    """
    if label_column is None and require_labels:
        raise ValueError("label_column=None reads no labels, so it needs require_labels=False")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None (got {limit})")
    if read_batch_rows < 1:
        raise ValueError(f"read_batch_rows must be >= 1 (got {read_batch_rows})")
    read = _FolderRead(matcher, skips, label_column, limit, decode, require_labels, read_batch_rows,
                       _check_shard(shard), max_samples, warn, only_rows, decode_threads)
    files = _resolve_files(folder_or_files)
    for path, name in files:
        if read.done():
            return
        yield from read.file_clips(path, name)


@dataclass
class _FolderRead:
    """One ``iter_clips`` call: its arguments, and the counts that carry from one file to the next."""

    matcher: LabelMatcher
    skips: SkipLog
    label_column: str | None
    limit: int | None
    decode: bool
    require_labels: bool
    batch_rows: int
    shard: tuple[int, int]           # (index, count), checked
    max_samples: int | None
    warn: bool = True                # log each unreadable file as it is met
    only_rows: Callable[[int], bool] | None = None  # rows to process (others only considered)
    decode_threads: int = 1          # threads decoding the rows of a unit (_rows)
    considered: int = 0              # rows considered so far, skipped ones included: what `limit` counts
    unit: int = 0                    # global unit counter, identical in every shard

    def done(self) -> bool:
        return self.limit is not None and self.considered >= self.limit

    def file_clips(self, path: Path, name: str) -> Iterator[Clip]:
        """The clips of one file, in row order: this shard's units, up to the limit; a read that
        fails part-way is counted, and the units it did not reach are still numbered."""
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
            row_group_rows = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        except (pa.ArrowException, OSError) as e:
            if self.warn:
                logger.warning("skipping %s: not a readable parquet file (%s)", path, e)
            self.skips.add("unreadable_file", file=name, detail=f"cannot open as parquet: {e}")
            return
        shard_index, shard_count = self.shard
        with pf:
            columns = _columns_to_read(pf.schema_arrow, path, self.label_column, self.decode)
            row0 = 0
            for g, n_rows in enumerate(row_group_rows):
                n_units = -(-n_rows // self.batch_rows)
                mine = [u % shard_count == shard_index for u in range(self.unit, self.unit + n_units)]
                self.unit += n_units
                if any(mine):
                    reader = _RowGroupReader(pf, g, columns, self.batch_rows)
                    unit: list[tuple[int, dict[str, Any]]] = []   # rows of one unit, not yet processed
                    for offset, cells in reader:
                        if not mine[offset // self.batch_rows]:
                            continue
                        if unit and (self.done() or offset // self.batch_rows != (unit[0][0] - row0) // self.batch_rows):
                            yield from self._rows(unit, name, path)
                            unit = []
                        if self.done():
                            return
                        self.considered += 1
                        if self.only_rows is None or self.only_rows(row0 + offset):
                            unit.append((row0 + offset, cells))
                    yield from self._rows(unit, name, path)
                    if reader.error is not None:
                        self._stopped(path, name, g, row0, reader, row_group_rows)
                        return
                row0 += n_rows

    def _rows(self, unit: list[tuple[int, dict[str, Any]]], name: str, path: Path) -> Iterator[Clip]:
        """Process the rows of one unit in order (their audio decoded beforehand on
        ``decode_threads`` threads when there is more than one)."""
        decoded = [None] * len(unit)
        if self.decode and self.decode_threads > 1 and len(unit) > 1:
            with ThreadPoolExecutor(min(self.decode_threads, len(unit))) as pool:
                decoded = list(pool.map(lambda r: _decoded_cell(r[1], self.max_samples), unit))
        for (row, cells), ready in zip(unit, decoded):
            clip = _process_row(
                cells, name, row, path, self.matcher, self.skips, self.label_column,
                self.decode, self.require_labels, max_samples=self.max_samples, decoded=ready,
            )
            if clip is not None:
                yield clip

    def _stopped(self, path: Path, name: str, group: int, row0: int, reader: _RowGroupReader,
                 row_group_rows: list[int]) -> None:
        """Count a read that failed in row group ``group`` (its first row is ``row0``), and number
        the units of the row groups after it, as a whole read would."""
        lost = sum(row_group_rows) - row0 - reader.rows_read
        if self.warn:
            logger.warning("stopping %s at row %d: %s", path, row0 + reader.rows_read, reader.error)
        self.skips.add(
            "unreadable_file",
            file=name,
            detail=f"read failed in row group {group} after row {row0 + reader.rows_read}; "
            f"up to {lost} later rows of this file not read: {reader.error}",
        )
        self.unit += sum(-(-n // self.batch_rows) for n in row_group_rows[group + 1 :])


def _columns_to_read(schema: pa.Schema, path: Path, label_column: str | None, decode: bool) -> list[str]:
    present = schema.names
    needed = [AUDIO_COLUMN] + ([label_column] if label_column is not None else [])
    for col in needed:
        if col not in present:
            raise DatasetError(
                f"parquet file {path} has no column {col!r} (its columns: {', '.join(present)}); "
                + (_label_column_hint(schema) if col == label_column else "the audio must be in a column named 'audio'")
            )
    columns = ([AUDIO_COLUMN] if decode else []) + ([label_column] if label_column is not None else [])
    if VIDEO_ID_COLUMN in present:
        columns.append(VIDEO_ID_COLUMN)
    return columns


def _label_column_hint(schema: pa.Schema) -> str:
    """The fix for a missing label column: the label flag, and the caption flag too, since a
    folder of captions (AudioCaps, Clotho) read without ``--text-column`` lands here as well."""
    text_columns = [f.name for f in schema if f.name not in (AUDIO_COLUMN, VIDEO_ID_COLUMN)
                    and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    example = text_columns[0] if text_columns else "caption"
    return (
        "pass the column that holds the class labels with --label-column (e.g. --label-column labels "
        f"for AudioSet's machine ids); if the rows hold captions (free text), pass --text-column {example} "
        "instead (caption retrieval, or caption training)"
    )


class _RowGroupReader:
    """Yields `(row offset in the group, {column: python value})`; stops at a read error.

    A read error is kept in `.error` rather than raised, so the caller can count it and
    move on; errors raised while the caller handles a row are never caught here.
    """

    def __init__(self, pf: pq.ParquetFile, group: int, columns: list[str], batch_rows: int):
        self._batches = pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
        self.rows_read = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            try:
                batch = next(self._batches)
                cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as e:
                self.error = e
                return
            for r in range(batch.num_rows):
                self.rows_read += 1
                yield self.rows_read - 1, {name: values[r] for name, values in cols.items()}


def _process_row(
    cells: dict[str, Any],
    name: str,
    row: int,
    path: Path,
    matcher: LabelMatcher,
    skips: SkipLog,
    label_column: str | None,
    decode: bool,
    require_labels: bool,
    *,
    max_samples: int | None = MAX_SAMPLES,
    decoded: tuple[np.ndarray, float] | Exception | None = None,
) -> Clip | None:
    """One row: its labels, then (with ``decode``) its audio, decoded here or given as
    ``decoded`` (what ``_decoded_cell`` returned for it)."""
    vid = cells.get(VIDEO_ID_COLUMN)
    meta = ClipMeta(name, row, "" if vid is None else str(vid))
    indices: list[int] = []
    unknown: list[str] = []
    raw: list[str] = []
    if label_column is not None:
        try:
            raw = matcher.split(cells[label_column])
            indices, unknown = matcher.match(raw)
        except TypeError as e:
            raise DatasetError(f"parquet file {path}, row {meta.row}, column {label_column!r}: {e}") from e
        skips.unknown_labels.update(unknown)
    if require_labels and not indices:
        detail = f"unknown labels {unknown}" if unknown else "no labels"
        skips.add("no_known_label", meta, detail=detail)
        return None
    waveform, seconds = None, None
    if decode:
        result = _decoded_cell(cells, max_samples) if decoded is None else decoded
        if isinstance(result, AudioDecodeError):
            skips.add(result.reason, meta, detail=str(result))
            return None
        if isinstance(result, Exception):
            raise DatasetError(f"parquet file {path}, row {meta.row}, column {AUDIO_COLUMN!r}: {result}") from result
        waveform, seconds = result
    return Clip(meta=meta, label_indices=indices, raw_labels=raw, waveform=waveform, seconds=seconds)


def _decoded_cell(cells: dict[str, Any], max_samples: int | None) -> tuple[np.ndarray, float] | Exception:
    """A row's audio at 48 kHz mono and its recording length in seconds, or the error that
    stopped it (``AudioDecodeError``: the clip is skipped; TypeError/ValueError: a bad cell)."""
    try:
        wave, sr = decode_audio_cell(cells[AUDIO_COLUMN])
        return to_mono_48k(wave, sr, max_samples=max_samples), wave.shape[-1] / sr
    except (TypeError, ValueError) as e:  # AudioDecodeError is a ValueError
        return e


def audio_digests(folder: str | Path, metas: Iterable[ClipMeta]) -> list[str | None]:
    """sha256 (first 32 hex digits) of each clip's encoded audio bytes, in the order of ``metas``:
    identical audio under different ids has one digest. Reads only the ``audio`` column of the
    files the clips come from; a cell without bytes (a path-only cell) or a file that cannot be
    read gives None (and the caller counts it)."""
    import hashlib

    metas = list(metas)
    wanted: dict[str, dict[int, list[int]]] = {}
    for i, meta in enumerate(metas):
        wanted.setdefault(meta.file, {}).setdefault(meta.row, []).append(i)
    out: list[str | None] = [None] * len(metas)
    for name, rows in wanted.items():
        try:
            pf = pq.ParquetFile(Path(folder) / name)
            start = 0
            for batch in pf.iter_batches(batch_size=256, columns=[AUDIO_COLUMN]):
                cells = batch.column(0)
                for r in range(start, start + len(batch)):
                    if r in rows:
                        cell = cells[r - start].as_py()
                        data = cell.get("bytes") if isinstance(cell, dict) else cell
                        if isinstance(data, (bytes, bytearray)) and data:
                            digest = hashlib.sha256(data).hexdigest()[:32]
                            for i in rows[r]:
                                out[i] = digest
                start += len(batch)
        except (OSError, pa.ArrowException) as err:
            logger.warning("audio digests: %s could not be read (%s); its clips get no digest", name, err)
    return out
