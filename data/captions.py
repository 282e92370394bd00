"""Captions of a parquet folder (``--text-column``), grouped into clips (``--clip-id-column``).

A text column holds one caption (a string) or several (a list of strings, or a string that is a
JSON/Python list literal); several columns (Clotho's ``caption_1`` ... ``caption_5``) are read
in the order given. Rows that share a clip id (AudioCaps' test split repeats each clip on five
rows, one caption each) are one clip with all their captions; the clip's audio is the first such
row's, embedded once. A row without a clip id (no such column, or a null/empty cell) is a clip
of its own.

This pass reads only the text and clip-id columns, in the order and with the ``limit`` of
``data.audioset.iter_clips``, so the audio pass (``hyperbolic.embedding.embeddings.embed_clips`` with
``keep=table.keep``) considers the same rows. A row with no usable caption (null, empty, only
blank strings) is a counted skip, reason ``no_caption``; an unreadable file is left to the audio
pass, which counts it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from data.audioset import ClipMeta, SkipLog, open_parquet_files
from data.errors import DatasetError
from data.labels import _is_missing, _parse_list_literal

log = logging.getLogger(__name__)

NO_CAPTION = "no_caption"


@dataclass
class CaptionClip:
    key: str                      # the clip id, or "<file>:<row>" for a row without one
    first: tuple[str, int]        # (file, row) whose audio is the clip's
    captions: list[str] = field(default_factory=list)
    rows: int = 0                 # rows of the folder that belong to the clip


@dataclass
class CaptionTable:
    text_columns: list[str]
    clip_id_column: str
    clips: dict[str, CaptionClip]               # in reading order of their first row
    by_row: dict[tuple[str, int], str]          # (file, row) -> clip key, rows with a caption only
    files_without_clip_id: list[str]
    rows_read: int = 0                          # rows considered (the limit counts these)

    def keep(self, meta: ClipMeta) -> bool:
        """Whether the audio of this row is embedded: the first row of a clip with a caption."""
        key = self.by_row.get((meta.file, meta.row))
        return key is not None and self.clips[key].first == (meta.file, meta.row)

    def clip_of(self, meta: ClipMeta) -> CaptionClip:
        return self.clips[self.by_row[(meta.file, meta.row)]]

    def summary(self) -> dict:
        rows = sum(c.rows for c in self.clips.values())
        return {"text_columns": list(self.text_columns), "clip_id_column": self.clip_id_column,
                "clips_with_captions": len(self.clips),
                "captions": sum(len(c.captions) for c in self.clips.values()),
                "rows_with_captions": rows, "rows_merged_into_an_earlier_clip": rows - len(self.clips),
                "files_without_clip_id_column": list(self.files_without_clip_id)}


def split_captions(cell, *, where: str) -> list[str]:
    """The captions of one cell, stripped, blank ones left out; ``where`` names the cell in errors."""
    if _is_missing(cell):
        return []
    if isinstance(cell, str):
        s = cell.strip()
        items = _parse_list_literal(s) if s else None
        items = [s] if items is None else items
    elif isinstance(cell, (list, tuple, np.ndarray)):
        items = list(np.asarray(cell, dtype=object).ravel()) if isinstance(cell, np.ndarray) else list(cell)
    else:
        raise DatasetError(f"{where} holds a {type(cell).__name__}; a caption cell must be a string, "
                           "a list of strings or null")
    out = []
    for item in items:
        if _is_missing(item):
            continue
        if not isinstance(item, str):
            raise DatasetError(f"{where} holds a list item of type {type(item).__name__}; captions must be strings")
        if item.strip():
            out.append(item.strip())
    return out


def read_captions(folder: str | Path, *, text_columns: list[str], clip_id_column: str = "video_id",
                  skips: SkipLog, limit: int | None = None) -> CaptionTable:
    """Read the captions of the first ``limit`` rows (all: None) of a folder; see the module doc."""
    if not text_columns:
        raise ValueError("text_columns must name at least one column")
    clips: dict[str, CaptionClip] = {}
    by_row: dict[tuple[str, int], str] = {}
    no_id: list[str] = []
    considered = 0
    for path, pf in open_parquet_files(folder):
        if limit is not None and considered >= limit:
            break
        present = pf.schema_arrow.names
        missing = [c for c in text_columns if c not in present]
        if missing:
            raise DatasetError(f"parquet file {path} has no column {missing[0]!r} (columns: {present}); "
                               "pass the column(s) that hold the captions as --text-column")
        has_id = clip_id_column in present
        if not has_id:
            no_id.append(path.name)
            log.warning("%s has no column %r: each of its rows is a clip of its own; if rows repeat a clip, "
                        "pass the column that names the clip as --clip-id-column", path.name, clip_id_column)
        columns = list(text_columns) + ([clip_id_column] if has_id else [])
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=1024, columns=columns):
                cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
                for r in range(batch.num_rows):
                    if limit is not None and considered >= limit:
                        break
                    considered += 1
                    _add_row(path, row, cols, r, text_columns, clip_id_column if has_id else None,
                             clips, by_row, skips)
                    row += 1
        except (pa.ArrowException, OSError) as err:
            log.warning("stopping the caption read of %s at row %d: %s", path, row, err)
    return CaptionTable(list(text_columns), clip_id_column, clips, by_row, no_id, considered)


def _add_row(path: Path, row: int, cols: dict, r: int, text_columns: list[str], id_column: str | None,
             clips: dict[str, CaptionClip], by_row: dict, skips: SkipLog) -> None:
    clip_id = None if id_column is None else cols[id_column][r]
    clip_id = None if _is_missing(clip_id) or not str(clip_id).strip() else str(clip_id).strip()
    captions = [c for col in text_columns
                for c in split_captions(cols[col][r], where=f"parquet file {path}, row {row}, column {col!r}")]
    meta = ClipMeta(path.name, row, "" if clip_id is None else clip_id)
    if not captions:
        skips.add(NO_CAPTION, meta, detail=f"no caption in {', '.join(text_columns)}")
        return
    key = clip_id if clip_id is not None else f"{path.name}:{row}"
    clip = clips.setdefault(key, CaptionClip(key, (path.name, row)))
    clip.captions.extend(captions)
    clip.rows += 1
    by_row[(path.name, row)] = key


def caption_counts(table: CaptionTable) -> Counter:
    """How many clips have each number of captions: ``{captions per clip: clips}``."""
    return Counter(len(c.captions) for c in table.clips.values())
