"""Writing what users keep: atomic files, never-overwritten result names, logging setup."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import torch

from data.files import temp_beside


def setup_logging(verbose: bool = False) -> None:
    """One logging setup for both scripts: ``HH:MM:SS level message`` on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        force=True)
    for noisy in ("modelscope", "transformers", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``: a crash leaves
    either the old file or the new one, never half a file. The file gets the mode an ordinary
    ``open(path, "w")`` would give under the umask (``data.files.temp_beside``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def atomic_torch_save(path: str | Path, obj) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def unique_path(path: str | Path) -> Path:
    """``path`` if free, else ``stem_1.ext``, ``stem_2.ext``, ...: results are never overwritten."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate
