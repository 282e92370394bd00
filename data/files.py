"""Temporary files that become users' files: same folder, then ``os.replace``, with the mode
an ordinary ``open(path, "w")`` would give.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and ``os.replace``
keeps that mode, so without ``chmod`` every result, checkpoint and cache file would be private
to its owner even where the user's umask shares files with a group (a shared cluster).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask. ``os.umask`` can only be read by setting it, so it is set and put back
    at once (the two calls are not atomic with respect to other threads creating files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """What ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def temp_beside(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s folder, already given
    ``new_file_mode()``, so the ``os.replace`` onto ``path`` leaves the usual mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp
