"""AudioSet class names and matching free-form label cells to class indices.

A label is a class name or the class's AudioSet machine id ("mid", e.g. ``/m/09x0r`` for
Speech): the published AudioSet parquet shards carry ids in ``labels`` beside the names in
``human_labels``. Ids come from the class-label file's ``mid`` column when it is a CSV with one,
else from the shipped 527-class list ``CLAP/class_labels/audioset_class_labels_indices.csv``
(by class name), and a matched id is recorded as its class name, so both columns give the same
clips, labels and results.

Matching is on a normalised key: case-folded, whitespace collapsed, and spaces around
commas ignored, so "beep,bleep", "Beep,  bleep" and " Beep, bleep " all name the
class "Beep, bleep". Many AudioSet names contain commas, which is why a label string
is not simply split on commas (see `LabelMatcher.match`).
"""

from __future__ import annotations

import ast
import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DatasetError

AUDIOSET_CLASS_CSV = Path(__file__).resolve().parent.parent / "CLAP" / "class_labels" / "audioset_class_labels_indices.csv"


def label_key(name: str) -> str:
    """The matching key of a label: case-folded, whitespace collapsed, comma-spacing ignored."""
    return ",".join(" ".join(piece.split()) for piece in name.split(",")).casefold()


def _from_index_map(index_to_name: dict[int, str], path: Path) -> list[str]:
    n = len(index_to_name)
    missing = sorted(set(range(n)) - set(index_to_name))
    if missing:
        extra = sorted(i for i in index_to_name if not 0 <= i < n)
        raise DatasetError(
            f"class label file {path}: indices are not contiguous 0..{n - 1}; "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"out of range {extra[:10]}{' ...' if len(extra) > 10 else ''}. Fix the indices in the file."
        )
    return [index_to_name[i] for i in range(n)]


def _parse_index(value: Any, path: Path, where: str) -> int:
    if isinstance(value, bool):
        raise DatasetError(f"class label file {path}: {where}: index {value!r} is not an integer")
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"class label file {path}: {where}: index {value!r} is not an integer") from None
    if isinstance(value, float) and value != i:
        raise DatasetError(f"class label file {path}: {where}: index {value!r} is not an integer")
    return i


def _load_json(path: Path) -> list[str]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"class label file {path} is not valid UTF-8 JSON: {e}") from e
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, dict) or not obj:
        raise DatasetError(
            f"class label file {path}: expected a JSON list of names or a non-empty dict "
            f"(index->name or name->index), got {type(obj).__name__}"
        )
    index_to_name: dict[int, str] = {}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values()):
        # name -> index, e.g. {"Speech": 0, ...}
        for name, i in obj.items():
            if i in index_to_name:
                raise DatasetError(
                    f"class label file {path}: index {i} is given to both "
                    f"{index_to_name[i]!r} and {name!r}; each index must name one class"
                )
            index_to_name[i] = name
    elif all(isinstance(v, str) for v in obj.values()):
        # index -> name, e.g. {"0": "Speech", ...} as in CLAP/class_labels
        for k, name in obj.items():
            index_to_name[_parse_index(k, path, f"key {k!r}")] = name
    else:
        raise DatasetError(
            f"class label file {path}: a dict must map index->name (all values strings) "
            "or name->index (all values integers); this one mixes them"
        )
    return _from_index_map(index_to_name, path)


def _load_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "index" not in fields or "display_name" not in fields:
            raise DatasetError(
                f"class label file {path}: CSV needs columns 'index' and 'display_name' "
                f"(as in AudioSet's class_labels_indices.csv); found {', '.join(fields) or 'no header'}"
            )
        index_to_name: dict[int, str] = {}
        for line_no, row in enumerate(reader, start=2):
            i = _parse_index(row["index"], path, f"line {line_no}")
            if i in index_to_name:
                raise DatasetError(f"class label file {path}: line {line_no}: index {i} appears twice")
            index_to_name[i] = row["display_name"]
    return _from_index_map(index_to_name, path)


def _load_text(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            # A blank line would shift every later index by one.
            raise DatasetError(
                f"class label file {path}: line {line_no} is blank; one class name per line, "
                "line N+1 is class N. Remove the blank line."
            )
    return lines


def load_class_labels(path: str | Path) -> list[str]:
    """Class names in index order from a `.json`, `.csv` or plain-text (any other suffix) file.

    JSON: `{"0": "Speech", ...}` (index->name), `{"Speech": 0, ...}` (name->index), or a
    list. CSV: columns `index` and `display_name` (others, e.g. `mid`, are ignored).
    Text: one name per line, line 1 is index 0. Raises DatasetError naming the file for a
    missing file, non-contiguous indices, empty or duplicate names (case-insensitive).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"class label file {path} does not exist or is not a file; pass the path of "
            "e.g. CLAP/class_labels/audioset_class_labels_indices.json"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        names = _load_json(path)
    elif suffix == ".csv":
        names = _load_csv(path)
    else:
        names = _load_text(path)
    if not names:
        raise DatasetError(f"class label file {path} holds no class names")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"class label file {path}: class {i} has name {name!r}; names must be non-empty strings")
        k = label_key(name)
        if k in seen:
            raise DatasetError(
                f"class label file {path}: classes {seen[k]} ({names[seen[k]]!r}) and {i} ({name!r}) "
                "have the same name ignoring case and spacing; labels could not tell them apart"
            )
        seen[k] = i
    return list(names)


def _csv_ids(path: Path) -> dict[str, str]:
    """``label_key(display_name) -> mid`` of a CSV with ``display_name`` and ``mid`` columns; {} without."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"display_name", "mid"} <= set(reader.fieldnames or []):
            return {}
        return {label_key(row["display_name"]): row["mid"].strip() for row in reader if row.get("mid")}


def load_class_ids(path: str | Path | None, class_names: list[str]) -> list[str | None]:
    """The AudioSet machine id of each class (None where there is none): from ``path``'s own
    ``mid`` column when it is a CSV that has one, else from the shipped AudioSet list by name."""
    ids: dict[str, str] = {}
    if path is not None and Path(path).suffix.lower() == ".csv" and Path(path).is_file():
        ids = _csv_ids(Path(path))
    if not ids and AUDIOSET_CLASS_CSV.is_file():
        ids = _csv_ids(AUDIOSET_CLASS_CSV)
    return [ids.get(label_key(name)) for name in class_names]


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _parse_list_literal(s: str) -> list[Any] | None:
    """The items of `s` if it is a JSON or Python list/tuple literal of strings, else None."""
    if s[0] not in "[(":
        return None
    try:
        value = json.loads(s)
    except ValueError:
        try:
            # literal_eval evaluates literals only, never code; deep nesting can still
            # exhaust the stack or memory, which just means "not a list literal".
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or _is_missing(v) for v in value):
        return list(value)
    return None


class LabelMatcher:
    """Maps label cells to class indices; see `match`. ``ids``: the AudioSet machine id of each
    class (``load_class_ids``; None where a class has none), matched like a name."""

    def __init__(self, class_names: Iterable[str], ids: Iterable[str | None] | None = None):
        self.class_names = list(class_names)
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.class_names):
            k = label_key(name)
            if k in self._index:
                raise ValueError(
                    f"class names {self._index[k]} ({self.class_names[self._index[k]]!r}) and {i} "
                    f"({name!r}) are the same ignoring case and spacing"
                )
            self._index[k] = i
        self._ids: dict[str, int] = {}  # label_key(mid) -> class; names win over ids on a clash
        for i, mid in enumerate(ids or []):
            if mid and label_key(mid) not in self._index:
                self._ids.setdefault(label_key(mid), i)
        self._max_pieces = max((name.count(",") + 1 for name in self.class_names), default=1)

    def __len__(self) -> int:
        return len(self.class_names)

    def match(self, cell: Any) -> tuple[list[int], list[str]]:
        """`(sorted unique class indices, unknown labels in written order)` for one cell.

        The labels are those of `split(cell)`; matching is on `label_key`.
        """
        found: set[int] = set()
        unknown: list[str] = []
        for label in self.split(cell):
            key = label_key(label)
            i = self._index.get(key, self._ids.get(key))
            if i is None:
                unknown.append(label)
            else:
                found.add(i)
        return sorted(found), unknown

    def split(self, cell: Any) -> list[str]:
        """The labels of one cell in written order, stripped; of repeats (by `label_key`)
        the first is kept.

        - None, NaN, "" or an empty list -> `[]`.
        - list/tuple/numpy array: each item is one whole label (never split on commas).
        - string: a JSON or Python list literal (`'["Speech", "Beep, bleep"]'`) is
          treated as that list; else the whole string if it names a class; else it is
          split on commas and, left to right, the longest run of pieces that names a
          class is one label ("Speech, Beep, bleep" -> "Speech", "Beep, bleep"); a piece
          that starts no class name is a label of its own (an unknown one).
        Items that are not strings become `str(item)` (and so unknown). A label that is a
        class's machine id is returned as that class's name.
        """
        if _is_missing(cell):
            return []
        if isinstance(cell, str):
            s = cell.strip()
            if not s:
                return []
            items = _parse_list_literal(s)
            if items is None:
                return self._split_string(s)
        elif isinstance(cell, (list, tuple, np.ndarray)):
            items = list(np.asarray(cell, dtype=object).ravel()) if isinstance(cell, np.ndarray) else list(cell)
        else:
            raise TypeError(
                f"label cell has type {type(cell).__name__}; expected a string, a list of strings or None"
            )
        labels: dict[str, str] = {}  # key -> first spelling
        for item in items:
            if _is_missing(item):
                continue
            text = item.strip() if isinstance(item, str) else str(item)
            if text:
                text = self._as_name(text)
                labels.setdefault(label_key(text), text)
        return list(labels.values())

    def _as_name(self, label: str) -> str:
        i = self._ids.get(label_key(label))
        return label if i is None else self.class_names[i]

    def _split_string(self, s: str) -> list[str]:
        if label_key(s) in self._index:
            return [s]
        if label_key(s) in self._ids:
            return [self._as_name(s)]
        pieces = s.split(",")
        labels: dict[str, str] = {}  # key -> first spelling
        start = 0
        while start < len(pieces):
            if not pieces[start].strip():
                start += 1
                continue
            stop = start + 1  # a piece that starts no class name stands alone
            for end in range(min(len(pieces), start + self._max_pieces), start, -1):
                if label_key(",".join(pieces[start:end])) in self._index:
                    stop = end
                    break
            text = self._as_name(",".join(pieces[start:stop]).strip())
            labels.setdefault(label_key(text), text)
            start = stop
        return list(labels.values())
