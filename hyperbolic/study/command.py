"""``python -m hyperbolic.study``: parse the flags, run this worker's cells, rebuild the summary.

Every flag of ``train_hyperbolic_clap.py`` sets the recipe each cell trains with; the grid's own
flags are ``hyperbolic.cli.study_parser``'s study group. The study folder (``--output-dir``):

- ``study_config.json``: what the cells' results depend on (the recipe, the eval clips, the
  bootstrap), written by the first run; a later run (or another worker) with different values
  is refused, since its cells would not be comparable. Adding geometries, sizes, fractions or
  seeds is fine: finished cells are reused.
- ``data.json``: the data facts (clip counts, classes, embedding size).
- ``cells/<key>/``: one folder per cell (``hyperbolic.study.cell``), ``cells/<key>.claim`` while a
  worker runs it (``hyperbolic.study.grid``).
- ``study.json`` (``config``, ``data``, ``cells``, ``summary``, ``missing``), ``study.md`` (the
  tables) and ``study_*.png``: rebuilt by every worker at its end from every finished cell.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from hyperbolic.cli import explicit_dests, study_parser
from hyperbolic.config import StudyConfig, TrainConfig, default_of
from hyperbolic.outputs import atomic_write_bytes, atomic_write_json, setup_logging
from hyperbolic.study.grid import (
    Cell,
    StudyError,
    claim,
    is_finished,
    make_grid,
    parse_shard,
    release,
    release_stale_claims,
    shard_cells,
)

log = logging.getLogger("hyperbolic.study")

# Training flags a study does not take: each cell is its own run in the study folder.
NOT_IN_A_STUDY = {"demo": "--demo", "resume": "--resume (rerun the same study command: finished cells are reused)",
                  "geometry": "--geometry (use --geometries)", "export_onnx": "--export-onnx",
                  "use_swanlab": "--use-swanlab", "text_column": "--text-column (a study scores classes)",
                  "overwrite": "--overwrite (finished cells are reused; use a new --output-dir to start over)"}
# Settings that change where or how fast a cell runs, never its numbers.
RUN_ONLY = ("output_dir", "device", "num_workers", "cache_dir", "no_cache", "keep_epochs", "resume", "overwrite",
            "use_swanlab", "swanlab_project", "swanlab_workspace", "swanlab_mode", "embed_batch_size")


def parse_args(argv=None) -> tuple[StudyConfig, bool]:
    """The flags, checked: those only a command line has here (the training flags a study does not
    take, the data source, --shard), every setting by ``StudyConfig.problems`` (the grid, then the
    recipe's ``TrainConfig.problems``, as for ``train_hyperbolic_clap.py``)."""
    parser = study_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    typed = explicit_dests(study_parser(), sys.argv[1:] if argv is None else [str(a) for a in argv])
    if args.label_column is None:
        args.label_column = default_of(TrainConfig, "label_column")
    messages = [m for failed, m in [
        *[(dest in typed, f"{flag} does not apply to a study") for dest, flag in NOT_IN_A_STUDY.items()],
        (not _data_source(args), "--parquet-dir (or --embeddings) is required: the clips the cells train on"),
        (len(args.c) > 1 or len(args.temperature) > 1,
         "one --c and one --temperature per study (a sweep of them is not a study axis)"),
    ] if failed]
    try:
        parse_shard(args.shard)
    except StudyError as err:
        messages.append(str(err))
    fields = TrainConfig.__dataclass_fields__
    recipe = TrainConfig(**{**{k: v for k, v in vars(args).items() if k in fields and k != "text_column"},
                            "c": args.c[0], "temperature": args.temperature[0]})
    study = StudyConfig(recipe=recipe, **{k: getattr(args, k) for k in StudyConfig.__dataclass_fields__
                                          if k != "recipe"})
    messages += [m for m in study.problems() if m not in messages]
    for message in messages:
        parser.error(message)
    return study, args.verbose


def _data_source(args: argparse.Namespace) -> str | None:
    return args.parquet_dir or getattr(args, "embeddings", None)


def fingerprint(study: StudyConfig) -> dict:
    """What every cell's numbers depend on besides its own axes."""
    recipe = {k: v for k, v in asdict(study.recipe).items() if k not in RUN_ONLY}
    own_eval = study.eval_parquet_dir or study.eval_embeddings
    return {"recipe": recipe, "eval_parquet_dir": study.eval_parquet_dir, "eval_embeddings": study.eval_embeddings,
            "eval_fraction": None if own_eval else study.eval_fraction,
            "bootstrap": study.bootstrap, "bootstrap_seed": study.bootstrap_seed}


def check_folder(study: StudyConfig, root: Path) -> None:
    """Write ``study_config.json``, or refuse a folder whose cells were made differently."""
    path, mine = root / "study_config.json", fingerprint(study)
    if path.exists():
        theirs = json.loads(path.read_text())
        # A setting added to the code after the folder was made, at its default, is no difference.
        added = {k for k in set(mine["recipe"]) - set(theirs.get("recipe", {}))
                 if mine["recipe"][k] == default_of(TrainConfig, k)}
        mine = {**mine, "recipe": {k: v for k, v in mine["recipe"].items() if k not in added}}
        if theirs != mine:
            diff = sorted({*_diff(theirs, mine)})
            raise StudyError(f"--output-dir {root} holds a study whose cells were made with other settings "
                             f"({'; '.join(diff[:6])}); its cells would not be comparable. Rerun with those "
                             "settings, or use a new --output-dir")
        return
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, mine)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted({*a, *b}):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} in the folder, {y!r} now")
    return out


def grid_of(study: StudyConfig) -> list[Cell]:
    return make_grid(study.geometries, study.proj_dims, study.fractions, study.seeds, probe=study.probe)


def run_study(study: StudyConfig, root: Path, *, load_data) -> dict:
    """Run this worker's unfinished cells (``load_data()`` is called once, only if one is left),
    then rebuild the summary. Returns ``{"ran", "reused", "claimed_elsewhere", "cells", "seconds"}``.
    KeyboardInterrupt propagates after the running cell's claim is released."""
    from hyperbolic.study.cell import run_cell
    problems = study.problems()  # as parse_args checks them, for a configuration built in code too
    if problems:
        raise StudyError("\n".join(problems))
    root = Path(root)
    check_folder(study, root)
    cells = grid_of(study)
    mine = shard_cells(cells, parse_shard(study.shard))
    freed = release_stale_claims(root)
    if freed:
        log.warning("released %d claim(s) of workers on this host that no longer run: %s", len(freed), ", ".join(freed))
    started = time.perf_counter()
    todo = [] if study.summary_only else [c for c in mine if not is_finished(root, c)]
    stats = {"ran": [], "reused": len(mine) - len(todo), "claimed_elsewhere": [], "cells": len(cells)}
    if todo:
        data = load_data()
        atomic_write_json(root / "data.json", data.facts())
        bar = tqdm(todo, desc=f"study cells (shard {study.shard})", unit="cell", dynamic_ncols=True)
        for cell in bar:
            if is_finished(root, cell):
                stats["reused"] += 1
                continue
            if not claim(root, cell, study.shard):
                stats["claimed_elsewhere"].append(cell.key)
                continue
            try:
                bar.set_postfix_str(cell.key)
                record = run_cell(study, data, cell, root)
            finally:
                release(root, cell)
            stats["ran"].append(cell.key)
            bar.write(f"{cell.key}: mAP {record['metrics']['mAP']:.4f}  acc@1 {record['metrics']['acc@1']:.4f}  "
                      f"{record['seconds']['total']:.1f}s")
    stats["seconds"] = round(time.perf_counter() - started, 3)
    write_summary(study, root, cells)
    return stats


def write_summary(study: StudyConfig, root: Path, cells: list[Cell]) -> dict:
    """study.json, study.md and the plots from every finished cell."""
    from hyperbolic.study.plots import plot_study
    from hyperbolic.study.summary import markdown_table, read_cells, summarize
    records = read_cells(root)
    facts = json.loads((root / "data.json").read_text()) if (root / "data.json").exists() else {}
    rows = summarize(root, records, embed_dim=facts.get("embed_dim")) if records else []
    done = {r["key"] for r in records}
    missing = [c.key for c in cells if c.key not in done]
    timing = {"cells_wall_seconds": round(sum(r["seconds"]["total"] for r in records), 1),
              "cells_cpu_seconds": round(sum(r.get("cpu_seconds", {}).get("total", 0.0) for r in records), 1)}
    out = {"config": {**study.to_dict(), "recipe": study.recipe.to_dict()}, "data": facts, "timing": timing,
           "cells": records, "summary": rows, "missing": missing}
    atomic_write_json(root / "study.json", out)
    table = markdown_table(rows, embed_dim=facts.get("embed_dim"))
    if missing:
        table += f"\n{len(missing)} of {len(cells)} cells not finished yet (study.json `missing`).\n"
    atomic_write_bytes(root / "study.md", table.encode("utf-8"))
    if rows:
        plot_study(rows, root, embed_dim=facts.get("embed_dim") or 0)
    return out


def main(argv=None) -> int:
    study, verbose = parse_args(argv)
    setup_logging(verbose)
    epochs_log = logging.getLogger("hyperbolic.training.train")
    level = epochs_log.level
    if not verbose:  # the bar and one line per cell; the epochs are in each cell's setup.json
        epochs_log.setLevel(logging.WARNING)
    from hyperbolic.errors import UserError
    from hyperbolic.study.data import load_study_data
    root = Path(study.recipe.output_dir)
    try:
        stats = run_study(study, root, load_data=lambda: load_study_data(study))
    except KeyboardInterrupt:
        print(f"interrupted: the running cell is lost, every finished cell is kept in {root}/cells; the same "
              "command goes on from there", file=sys.stderr)
        return 130
    except UserError as err:
        log.error("%s", err)
        return 2
    finally:
        epochs_log.setLevel(level)  # a caller's own training runs log their epochs again
    log.info("%d cells run, %d reused, %d claimed by other workers; %s", len(stats["ran"]), stats["reused"],
             len(stats["claimed_elsewhere"]), root / "study.md")
    print((root / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
