"""The cells of a study, which worker runs which (``--shard I/N``), and atomic claims.

A cell is one training run (geometry, projection size D, fraction of the training part, seed) or
one reference model: ``clap-cosine`` (plain CLAP, once per study) and ``linear-probe`` (a
supervised linear classifier, per fraction and seed). Its folder is ``cells/<key>``; it is
finished when ``cells/<key>/cell.json`` exists (written atomically, last).

Claims: before running a cell a worker creates ``cells/<key>.claim`` with
``os.open(O_CREAT | O_EXCL)``, which exactly one process can do, so N workers sharing a folder
(even on several machines over a shared file system) never run a cell twice. The claim is removed
when the cell ends, finished or not (Ctrl-C included). A claim left by a worker that was killed
(kill -9, a lost node) stays; a claim from this host whose process is gone is released at start.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hyperbolic.errors import StudyError  # noqa: F401  (raised here and re-exported, as TrainingError is)

COSINE = "clap-cosine"
PROBE = "linear-probe"
REFERENCES = (COSINE, PROBE)
CELL_FILE = "cell.json"


@dataclass(frozen=True)
class Cell:
    geometry: str          # a training geometry, or COSINE / PROBE
    proj_dim: int | None   # None: the CLAP embedding size (and the reference rows)
    fraction: float        # of the training part
    seed: int

    @property
    def key(self) -> str:
        dim = "clap" if self.proj_dim is None else str(self.proj_dim)
        return f"{self.geometry}_d{dim}_f{self.fraction:g}_s{self.seed}"

    @property
    def config(self) -> tuple:
        """The configuration whose seeds the summary averages."""
        return (self.geometry, self.proj_dim, self.fraction)

    def to_dict(self) -> dict:
        return asdict(self)


def make_grid(geometries, proj_dims, fractions, seeds, *, probe: bool) -> list[Cell]:
    """Every cell, in a fixed order: the cosine reference, the probes, then the trained cells
    (geometry, D, fraction, seed nested in that order). Duplicates in a list are dropped."""
    dims = list(dict.fromkeys(proj_dims))
    fractions, seeds, geometries = (list(dict.fromkeys(x)) for x in (fractions, seeds, geometries))
    cells = [Cell(COSINE, None, 1.0, 0)]
    if probe:
        cells += [Cell(PROBE, None, f, s) for f in fractions for s in seeds]
    cells += [Cell(g, d, f, s) for g in geometries for d in dims for f in fractions for s in seeds]
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise StudyError(f"--shard must be I/N, worker I of N (got {text!r}); e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise StudyError(f"--shard I/N needs N >= 1 and 0 <= I < N (got {text!r}); SLURM: "
                         "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """The cells of worker I of N: positions k with k mod N == I (interleaved, so each worker gets
    a mix of cheap and costly cells)."""
    i, n = shard
    return [cell for k, cell in enumerate(cells) if k % n == i]


def cell_dir(root: Path, cell: Cell) -> Path:
    return Path(root) / "cells" / cell.key


def is_finished(root: Path, cell: Cell) -> bool:
    return (cell_dir(root, cell) / CELL_FILE).is_file()


def claim_path(root: Path, cell: Cell) -> Path:
    return Path(root) / "cells" / f"{cell.key}.claim"


def claim(root: Path, cell: Cell, shard: str) -> bool:
    """Create the cell's claim file; False when another worker holds it."""
    path = claim_path(root, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "shard": shard,
                   "claimed": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
    return True


def release(root: Path, cell: Cell) -> None:
    claim_path(root, cell).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def release_stale_claims(root: Path) -> list[str]:
    """Remove claims made on this host by processes that no longer exist; the cell keys freed.
    The claim is first renamed to a name only this process uses, then checked again, so a claim
    another worker just made in its place is never removed (it is renamed back)."""
    freed, host = [], socket.gethostname()
    for path in sorted((Path(root) / "cells").glob("*.claim")):
        mine = path.with_name(f"{path.name}.stale.{os.getpid()}")
        try:
            info = json.loads(path.read_text())
            if info.get("host") != host or _alive(int(info["pid"])):
                continue
            os.rename(path, mine)
        except (OSError, ValueError, KeyError):
            continue
        again = json.loads(mine.read_text())
        if again.get("host") == host and not _alive(int(again["pid"])):
            mine.unlink()
            freed.append(path.name[:-len(".claim")])
        elif not path.exists():
            os.rename(mine, path)
    return freed
