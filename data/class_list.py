"""The class list of a run: a file (``data.labels.load_class_labels``) or, with
``--class-labels from-data``, the sorted distinct labels of the folder's label column.

``from-data`` suits folders whose label column names one class per row or a short list, as
ESC-50 (``category``: ``dog_bark``) and UrbanSound8K (``class``: ``children_playing``) are
published: a list cell gives its items, a string cell its comma-separated pieces (so an AudioSet
name with a comma, "Beep, bleep", would be cut in two: give AudioSet its class file). Labels that
differ only in case or spacing are one class (the first spelling, in reading order, names it).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from data.audioset import open_parquet_files
from data.errors import DatasetError
from data.labels import LabelMatcher, label_key, load_class_labels

FROM_DATA = "from-data"


def distinct_labels(folder: str | Path, *, label_column: str, limit: int | None = None) -> list[str]:
    """Sorted distinct labels of the first ``limit`` rows (all: None), files in sorted order."""
    splitter = LabelMatcher([])
    first: dict[str, str] = {}
    considered = 0
    for path, pf in open_parquet_files(folder):
        if limit is not None and considered >= limit:
            break
        if label_column not in pf.schema_arrow.names:
            raise DatasetError(f"parquet file {path} has no column {label_column!r} (columns: "
                               f"{', '.join(pf.schema_arrow.names)}); pass the column that holds the class names as "
                               "--label-column (ESC-50: category, UrbanSound8K: class)")
        try:
            for batch in pf.iter_batches(batch_size=4096, columns=[label_column]):
                for cell in batch.column(0).to_pylist():
                    if limit is not None and considered >= limit:
                        break
                    considered += 1
                    try:
                        labels = splitter.split(cell)
                    except TypeError as err:
                        raise DatasetError(
                            f"parquet file {path}, column {label_column!r}: {err}; --class-labels {FROM_DATA} "
                            "needs class names (UrbanSound8K: --label-column class, not classID)") from err
                    for label in labels:
                        first.setdefault(label_key(label), label)
        except (pa.ArrowException, OSError):
            continue
    if not first:
        raise DatasetError(f"--class-labels {FROM_DATA}: column {label_column!r} of {folder} holds no label")
    return sorted(first.values())


def resolve_class_names(class_labels: str, *, parquet_dir: str | Path, label_column: str,
                        limit: int | None = None) -> list[str]:
    """``load_class_labels(class_labels)``, or ``distinct_labels`` for ``from-data``."""
    if str(class_labels) == FROM_DATA:
        return distinct_labels(parquet_dir, label_column=label_column, limit=limit)
    return load_class_labels(class_labels)
