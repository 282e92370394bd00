"""Helpers several test files share."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pyarrow.parquet as pq


def run_main(script, argv) -> tuple[int, str]:
    """``script.main(argv)`` -> (exit status, stderr). Usage errors (argparse) exit via SystemExit."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = script.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def corrupt_audio_page(path: Path, row_group: int = 1) -> None:
    """Flip bytes in the middle of ``row_group``'s audio page: page checksums catch it there."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(1)
    assert chunk.path_in_schema == "audio.bytes"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    mid = start + chunk.total_compressed_size // 2
    data[mid:mid + 4] = bytes(b ^ 0x55 for b in data[mid:mid + 4])
    path.write_bytes(bytes(data))
