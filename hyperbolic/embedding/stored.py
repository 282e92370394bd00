"""Embeddings kept as files: the ``--embeddings DIR`` layout, read instead of a parquet folder and
CLAP, and written by ``test_clap_modelscope.py --export-embeddings DIR``.

``DIR/clips.parquet``, one row per clip:
    ``clip_id``   string, unique: the clip's name in results (``video_id``)
    ``embedding`` list<float32> of length D: the clip's audio embedding
    ``labels``    list<string>: the clip's class names (AudioSet-style: a child without its parent is normal)
``DIR/classes.parquet``, one row per prompt:
    ``name``      string: a class name (or an ontology node's name, see ``abstract``)
    ``embedding`` list<float32> of length D: the text embedding of that name's prompt
    ``abstract``  bool, optional (missing: all false): true for a prompt that is not a class, an
                  ontology node above the classes ("Human sounds"), used with ``--ontology`` only

The class list is the ``name`` of the rows that are not ``abstract``, in file order. Every
embedding is L2-normalised on read, as CLAP's output is. D is the length of the class
embeddings; a class row that is null, of another length, not finite or zero is an error (the class
list cannot lose a class quietly); such a clip row is skipped and counted (``wrong_dimension``,
``missing_embedding``, ``non_finite_embedding``, ``zero_embedding``), as are a clip without an id
(``missing_clip_id``), a repeated id (``duplicate_clip_id``, the later row) and, where labels are
required (training), a clip with no known label (``no_known_label``, as for parquet folders).
Labels that name no class are counted in ``unknown_labels``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data.audioset import ClipMeta, SkipLog
from data.labels import LabelMatcher, label_key
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.errors import EmbeddingsError

CLIPS_FILE = "clips.parquet"
CLASSES_FILE = "classes.parquet"
CLIP_COLUMNS = ("clip_id", "embedding", "labels")
CLASS_COLUMNS = ("name", "embedding")
METADATA_KEY = b"hyperbolic_clap"   # parquet schema metadata: JSON of how the file was made

__all__ = ["CLASSES_FILE", "CLIPS_FILE", "EmbeddingsError", "StoredEmbeddings", "read_class_names", "read_embeddings",
           "write_embeddings"]


@dataclass
class StoredEmbeddings:
    """What an ``--embeddings`` folder holds, read and checked (see the module docstring)."""

    folder: Path
    clips: ClipEmbeddings            # metas: file ``clips.parquet``, the row, video_id = clip_id
    class_names: list[str]           # the class list
    class_embeddings: torch.Tensor   # (C, D) float32, L2-normalised, in class order
    parent_names: list[str]          # the ``abstract`` rows' names, in file order
    parent_embeddings: torch.Tensor  # (A, D) float32, L2-normalised
    skips: SkipLog                   # clip rows not used, by reason; unknown labels
    rows_in_file: int                # rows of clips.parquet
    rows_read: int                   # rows considered (the first ``limit``), skipped ones included

    @property
    def dim(self) -> int:
        return int(self.class_embeddings.shape[1])

    @property
    def prompt_names(self) -> list[str]:
        """Every row's name: the classes, then the abstract parents."""
        return [*self.class_names, *self.parent_names]

    @property
    def text_embeddings(self) -> torch.Tensor:
        """(C + A, D): the rows of ``prompt_names``."""
        return torch.cat([self.class_embeddings, self.parent_embeddings])

    def has_prompt(self, name: str) -> bool:
        """Whether a row of classes.parquet (class or abstract) is named ``name`` (by ``label_key``)."""
        return label_key(name) in self._index()

    def prompt_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """(len(names), D): the stored text embedding of each name (class or abstract row)."""
        index = self._index()
        missing = [n for n in names if label_key(n) not in index]
        if missing:
            raise EmbeddingsError(f"{self.folder / CLASSES_FILE} has no row named {'; '.join(missing[:5])} "
                                  f"({len(missing)} missing); add their prompt embeddings")
        table = self.text_embeddings
        return table[[index[label_key(n)] for n in names]] if names else table[:0]

    def _index(self) -> dict[str, int]:
        return {label_key(n): i for i, n in enumerate(self.prompt_names)}


def _embedding_matrix(column: pa.ChunkedArray, path: Path) -> tuple[list[np.ndarray | None], list[int]]:
    """Each row's embedding as float32 (None for a null cell) and its length."""
    try:
        arr = column.combine_chunks().cast(pa.list_(pa.float32()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise EmbeddingsError(f"{path}: column 'embedding' has type {column.type}; it must be a list of "
                              f"float32 (one embedding per row) ({err})") from None
    offsets = arr.offsets.to_numpy()
    values = arr.values.fill_null(float("nan")).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    rows = [values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(arr))]
    return rows, [0 if r is None else len(r) for r in rows]


def _open(path: Path, required: Sequence[str], what: str) -> pa.Table:
    if not path.is_file():
        raise EmbeddingsError(f"{path} does not exist; an --embeddings folder holds {CLIPS_FILE} and {CLASSES_FILE} "
                              "(docs/data.md)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise EmbeddingsError(f"{path} cannot be read as parquet ({err})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise EmbeddingsError(f"{path} has no column {', '.join(map(repr, missing))} (columns: "
                              f"{', '.join(table.column_names) or 'none'}); {what} needs {', '.join(required)}")
    return table


def _read_classes(folder: Path) -> tuple[list[str], np.ndarray, list[bool]]:
    path = folder / CLASSES_FILE
    table = _open(path, CLASS_COLUMNS, "a class table")
    names = table.column("name").to_pylist()
    if "abstract" in table.column_names and not pa.types.is_boolean(table.column("abstract").type):
        raise EmbeddingsError(f"{path}: column 'abstract' has type {table.column('abstract').type}; it must be "
                              "bool (true for an ontology node that is not a class)")
    abstract = (table.column("abstract").to_pylist() if "abstract" in table.column_names else [False] * len(names))
    rows, lengths = _embedding_matrix(table.column("embedding"), path)
    if not names:
        raise EmbeddingsError(f"{path} holds no row; it needs one row per class")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise EmbeddingsError(f"{path}, row {i}: name {name!r} is not a non-empty string")
        if label_key(name) in seen:
            raise EmbeddingsError(f"{path}, rows {seen[label_key(name)]} and {i}: the name {name!r} appears twice "
                                  "(ignoring case and spacing); keep one row per name")
        seen[label_key(name)] = i
    dim = lengths[0]
    for i, (name, row, n) in enumerate(zip(names, rows, lengths)):
        problem = ("has no embedding" if row is None else f"has a {n}-d embedding, row 0 a {dim}-d one" if n != dim
                   else "has an empty embedding" if n == 0 else "has a non-finite value" if not np.isfinite(row).all()
                   else "has an all-zero embedding" if not row.any() else None)
        if problem:
            raise EmbeddingsError(f"{path}, row {i} ({name!r}) {problem}; every class needs a finite, non-zero "
                                  "text embedding of one length")
    if all(abstract):
        raise EmbeddingsError(f"{path}: every row is abstract, so there is no class; mark the classes abstract=false")
    return names, np.stack(rows), [bool(a) for a in abstract]


def read_class_names(folder: str | Path) -> list[str]:
    """The class list of an ``--embeddings`` folder (classes.parquet's rows that are not abstract)."""
    names, _, abstract = _read_classes(Path(folder))
    return [n for n, a in zip(names, abstract) if not a]


# A row whose norm is this close to 1 is a unit vector to float32 precision (CLAP's output, an
# export) and is kept as written: dividing by its norm again would only add rounding, and an
# export read back would then not give bit-identical scores.
UNIT_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def _unit(x: np.ndarray) -> torch.Tensor:
    """Rows L2-normalised (in float64), as float32; rows already of unit norm are kept as written."""
    norm = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    out = np.where(np.abs(norm - 1) <= UNIT_TOLERANCE, x, x / norm).astype(np.float32)
    return torch.from_numpy(out)


def _clip_problem(row: np.ndarray | None, n: int, dim: int) -> tuple[str, str] | None:
    if row is None:
        return "missing_embedding", "null embedding"
    if n != dim:
        return "wrong_dimension", f"{n}-d embedding, the classes are {dim}-d"
    if not np.isfinite(row).all():
        return "non_finite_embedding", "NaN or infinite value"
    if not row.any():
        return "zero_embedding", "all-zero embedding (no direction to normalise)"
    return None


def read_embeddings(folder: str | Path, *, limit: int | None = None, require_labels: bool = False) -> StoredEmbeddings:
    """Read and check an ``--embeddings`` folder (module docstring).

    limit: only the first ``limit`` rows of clips.parquet are considered (None: all), as
    ``--num-samples`` does for a parquet folder. require_labels: skip (and count) clips without a
    known label, as training does; otherwise they are kept unlabelled, as evaluation does."""
    folder = Path(folder)
    names, class_rows, abstract = _read_classes(folder)
    dim = class_rows.shape[1]
    class_names = [n for n, a in zip(names, abstract) if not a]
    parent_names = [n for n, a in zip(names, abstract) if a]
    path = folder / CLIPS_FILE
    table = _open(path, CLIP_COLUMNS, "a clip table")
    rows_in_file = table.num_rows
    if limit is not None:
        table = table.slice(0, limit)
    ids = table.column("clip_id").to_pylist()
    label_cells = table.column("labels").to_pylist()
    rows, lengths = _embedding_matrix(table.column("embedding"), path)
    matcher = LabelMatcher(class_names)
    skips = SkipLog()
    kept, seen_ids, class_of = [], set(), {}
    labels, first, raw, metas = [], [], [], []
    for i, (clip_id, cell, row, n) in enumerate(zip(ids, label_cells, rows, lengths)):
        meta = ClipMeta(CLIPS_FILE, i, "" if clip_id is None else str(clip_id))
        problem = _clip_problem(row, n, dim)
        if problem is None and (clip_id is None or not str(clip_id).strip()):
            problem = "missing_clip_id", "null or empty clip_id"
        if problem is None and meta.video_id in seen_ids:
            problem = "duplicate_clip_id", f"clip_id {meta.video_id!r} appears in an earlier row"
        if problem is not None:
            skips.add(problem[0], meta, detail=problem[1])
            continue
        try:
            written = matcher.split(cell)
        except TypeError as err:
            raise EmbeddingsError(f"{path}, row {i}, column 'labels': {err}") from None
        for w in written:  # a whole label names one class or none; the same strings recur across clips
            if w not in class_of:
                class_of[w] = matcher.match([w])[0]
        per_label = [class_of[w] for w in written]
        found = sorted({k for ks in per_label for k in ks})
        unknown = [w for w, ks in zip(written, per_label) if not ks]
        skips.unknown_labels.update(unknown)
        if require_labels and not found:
            skips.add("no_known_label", meta, detail=f"unknown labels {unknown}" if unknown else "no labels")
            continue
        seen_ids.add(meta.video_id)
        kept.append(i)
        labels.append(found)
        first.append(next((ks[0] for ks in per_label if ks), None))
        raw.append(written)
        metas.append(meta)
    audio = _unit(np.stack([rows[i] for i in kept])) if kept else torch.empty(0, dim)
    clips = ClipEmbeddings(audio, labels, first, raw, metas, [float("nan")] * len(kept))
    class_emb = _unit(class_rows[[i for i, a in enumerate(abstract) if not a]])
    parent_idx = [i for i, a in enumerate(abstract) if a]
    parent_emb = _unit(class_rows[parent_idx]) if parent_idx else torch.empty(0, dim)
    return StoredEmbeddings(folder, clips, class_names, class_emb, parent_names, parent_emb, skips,
                            rows_in_file=rows_in_file, rows_read=table.num_rows)


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    offsets = np.arange(0, matrix.size + 1, max(1, matrix.shape[1]), dtype=np.int32)[:matrix.shape[0] + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


def _write_table(table: pa.Table, path: Path, source: dict | None) -> None:
    if source is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(source).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a crash never leaves half a file under the real name


def check_writable(folder: str | Path) -> Path:
    """The export folder, refused when it holds either file already (exports are never overwritten)."""
    folder = Path(folder)
    there = [name for name in (CLIPS_FILE, CLASSES_FILE) if (folder / name).exists()]
    if there:
        raise EmbeddingsError(f"--export-embeddings {folder} already holds {', '.join(there)}; exports are never "
                              "overwritten, choose a new folder or remove them")
    return folder


def write_embeddings(folder: str | Path, *, clip_ids: Sequence[str], audio, labels: Sequence[Sequence[str]],
                     class_names: Sequence[str], class_embeddings, parent_names: Sequence[str] = (),
                     parent_embeddings=None, source: dict | None = None) -> Path:
    """Write the ``--embeddings`` layout into ``folder`` (created; refused if it holds either file).

    audio (N, D), class_embeddings (C, D), parent_embeddings (A, D): arrays or tensors, written as
    float32 as given (the reader normalises). labels: class names per clip. parent_names: rows
    written with ``abstract`` true. source: JSON-able facts stored in the files' metadata."""
    folder = check_writable(folder)
    audio = np.asarray(audio, dtype=np.float32)
    class_embeddings = np.asarray(class_embeddings, dtype=np.float32)
    parents = (np.zeros((0, class_embeddings.shape[1]), np.float32) if parent_embeddings is None
               else np.asarray(parent_embeddings, dtype=np.float32))
    if not (len(clip_ids) == len(audio) == len(labels)):
        raise ValueError(f"clip_ids, audio and labels differ in length ({len(clip_ids)}, {len(audio)}, {len(labels)})")
    if len(class_names) != len(class_embeddings) or len(parent_names) != len(parents):
        raise ValueError("each class and parent name needs one embedding row")
    folder.mkdir(parents=True, exist_ok=True)
    _write_table(pa.table({"clip_id": pa.array([str(c) for c in clip_ids], pa.string()),
                           "embedding": _list_column(audio.reshape(len(audio), -1)),
                           "labels": pa.array([list(map(str, row)) for row in labels], pa.list_(pa.string()))}),
                 folder / CLIPS_FILE, source)
    _write_table(pa.table({"name": pa.array([*class_names, *parent_names], pa.string()),
                           "embedding": _list_column(np.concatenate([class_embeddings, parents])),
                           "abstract": pa.array([False] * len(class_names) + [True] * len(parent_names))}),
                 folder / CLASSES_FILE, source)
    return folder


def export_clip_ids(clips: ClipEmbeddings) -> list[str]:
    """A unique id per clip: its ``video_id`` where that is present and unique among the clips,
    else ``file:row``."""
    counts: dict[str, int] = {}
    for m in clips.metas:
        counts[m.video_id] = counts.get(m.video_id, 0) + 1
    return [m.video_id if m.video_id and counts[m.video_id] == 1 else f"{m.file}:{m.row}" for m in clips.metas]


def export_labels(clips: ClipEmbeddings, class_names: Sequence[str]) -> list[list[str]]:
    """Each clip's known labels as class names, in the order the file wrote them (so the first
    label, which ``--text-pairing first-label`` uses, stays first)."""
    matcher = LabelMatcher(class_names)
    out = []
    for raw, known in zip(clips.raw_labels, clips.label_indices):
        order: list[int] = []
        for label in raw:
            order += [k for k in matcher.match([label])[0] if k in known and k not in order]
        order += [k for k in known if k not in order]
        out.append([class_names[k] for k in order])
    return out
