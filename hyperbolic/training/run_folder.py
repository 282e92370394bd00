"""A run's folder (``--output-dir``): what it holds, creating it without overwriting an earlier
run, pruning old epoch checkpoints, and continuing a run from it (``--resume``: its settings,
the checkpoint to start from, a sweep's subfolders). The checkpoint format itself is
``hyperbolic.model.checkpoint``'s."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

from hyperbolic.config import TrainConfig, default_of
from hyperbolic.model import checkpoint
from hyperbolic.training.trainer import TrainingError

log = logging.getLogger("hyperbolic.training.train")


def prune_checkpoints(out: Path, *, epoch: int, best_epoch: int, keep_epochs: int) -> list[Path]:
    """Called once ``epoch``'s files are written: remove every ``best_projection_epoch_*.pth``
    but ``best_epoch``'s, and (``keep_epochs > 0``) the per-epoch checkpoints older than the
    newest ``keep_epochs`` up to ``epoch``. Returns the removed paths.

    Removal comes after the newer file is in place (``atomic_torch_save`` has replaced it), so
    a crash at any point leaves a best checkpoint and a checkpoint to resume from."""
    removed = [p for p in out.glob("best_projection_epoch_*.pth") if checkpoint.epoch_of(p) != best_epoch]
    if keep_epochs > 0:
        removed += [p for p in out.glob("projection_epoch_*.pth") if checkpoint.epoch_of(p) <= epoch - keep_epochs]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


RUN_FILES = ("projection_epoch_*.pth", "best_projection_epoch_*.pth", "setup.json", "sweep.json",
             "training_curves.png")


def missing_dirs(path: Path) -> list[Path]:
    """The folders ``path.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_empty_dirs(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that exists and is empty: what an early error
    leaves of the folders ``prepare_output_dir`` created."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_output_dir(cfg: TrainConfig) -> Path:
    """Refuse a non-empty output dir without --resume or --overwrite; touch nothing."""
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise TrainingError(f"--output-dir {out} is not empty; pass --resume {out} to continue that run, "
                            "--overwrite to replace its files, or choose another --output-dir")
    return out


def prepare_output_dir(cfg: TrainConfig) -> Path:
    """Create the output dir. A non-empty one needs --resume or --overwrite; --overwrite removes
    the earlier run's files first, so none of them is later taken for this run's."""
    out = check_output_dir(cfg)
    if cfg.overwrite and out.exists():
        for folder in [out, *(d for d in out.glob("c*_t*") if d.is_dir())]:
            for pattern in RUN_FILES:
                for old in folder.glob(pattern):
                    log.info("--overwrite: removing %s", old)
                    old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# A run whose configuration predates these fields trained with these values, not today's defaults.
RECIPE_BEFORE_DEFAULTS_CHANGED = {"clip_mode": "straight-through", "init_radius": None, "negatives": "in-batch"}


def resume_settings(resume: str | Path, given: dict) -> tuple[TrainConfig, list[float], list[float]] | None:
    """``--resume RUN_DIR`` (or a checkpoint): the run's configuration, with ``given`` (the flags
    typed on this command line, TrainConfig field -> value) on top, and the run's sweep lists
    (c values, temperatures). Flags that differ from the run are refused later by
    ``load_resume_checkpoint``, except those of ``RESUME_MAY_DIFFER``.

    The configuration is read from RUN_DIR/setup.json, else from a sweep's first
    RUN_DIR/c*_t*/setup.json, else (a .pth) from the checkpoint's own ``config``. None: a folder
    that holds none of them (a run stopped before its first epoch began): the command line alone
    then describes the run."""
    path = Path(resume)
    if not path.exists():
        raise TrainingError(f"--resume {path} does not exist; pass the run's --output-dir or one of its "
                            "projection_epoch_*.pth")
    if path.is_file():
        setups = [checkpoint.load_resumable(path)]
    else:
        own = path / "setup.json"
        files = [own] if own.is_file() else sorted(path.glob("c*_t*/setup.json"))
        if not files:
            return None
        setups = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    config = dict(setups[0]["config"])
    fields = TrainConfig.__dataclass_fields__
    unknown = sorted(k for k in config if k not in fields)
    if unknown:
        log.warning("--resume %s: the run has settings this version does not know, ignored: %s", path,
                    ", ".join(unknown))
    values = {**RECIPE_BEFORE_DEFAULTS_CHANGED, **{k: v for k, v in config.items() if k in fields}}
    if "holdout_seed" not in config:  # a run before --holdout-seed held out classes with its --seed
        values["holdout_seed"] = config.get("seed", default_of(TrainConfig, "seed"))
    # A sweep's lists come from its folders (a run before "sweep" was recorded: the combinations
    # started so far); a single run or one checkpoint is its own c and temperature.
    sweep = {"c": [config["c"]], "temperature": [config["temperature"]]}
    if path.is_dir() and not (path / "setup.json").is_file():
        sweep = setups[0].get("sweep") or {
            "c": list(dict.fromkeys(s["config"]["c"] for s in setups)),
            "temperature": list(dict.fromkeys(s["config"]["temperature"] for s in setups))}
    c_values = list(given.pop("c_values", sweep["c"]))
    temperatures = list(given.pop("temperatures", sweep["temperature"]))
    values.update(given, c=c_values[0], temperature=temperatures[0], resume=str(path))
    values.setdefault("overwrite", False)
    return TrainConfig(**values), c_values, temperatures


def resume_point(run_dir: Path, cfg: TrainConfig) -> Path | None:
    """The checkpoint to continue from inside ``run_dir`` (None: start fresh)."""
    if not cfg.resume:
        return None
    resume = Path(cfg.resume)
    if resume.suffix == ".pth":
        return resume
    return checkpoint.latest_epoch_file(run_dir)


def sweep_dir_name(c: float, temperature: float) -> str:
    return f"c{c:g}_t{temperature:g}"


SWEEP_DIR = re.compile(r"c[^_/\\]+_t[^_/\\]+")  # the names sweep_dir_name gives


def _check_sweep_resume(resume: Path, combinations: int) -> None:
    """A sweep resumes from its folder (each combination from its own latest checkpoint); a
    checkpoint file, or one combination's folder, holds a single (c, temperature)."""
    if resume.suffix == ".pth":
        folder = resume.parent
        sweep = folder.parent if SWEEP_DIR.fullmatch(folder.name) else folder
        raise TrainingError(f"--resume {resume} is the checkpoint of one (c, temperature) run, but --c/--temperature "
                            f"ask for a sweep of {combinations} combinations; resume the sweep from its folder: "
                            f"--resume {sweep} (each combination continues from its latest checkpoint), or resume "
                            f"this one run with a single --c and --temperature")
    if resume.is_dir() and SWEEP_DIR.fullmatch(resume.name) and any(resume.glob("projection_epoch_*.pth")):
        raise TrainingError(f"--resume {resume} is one combination of a sweep, but --c/--temperature ask for "
                            f"{combinations} combinations; resume the sweep from its folder: --resume {resume.parent}")


def continue_in_run_dir(cfg: TrainConfig, combos: list[tuple[float, float]]) -> TrainConfig:
    """``--resume``: the run folder to continue, checked; the run writes there."""
    if len(combos) > 1:
        _check_sweep_resume(Path(cfg.resume), len(combos))
    resume = Path(cfg.resume)
    if not resume.exists():
        raise TrainingError(f"--resume {resume} does not exist; pass the run's output dir or one of its "
                            "projection_epoch_*.pth")
    run_dir = resume.parent if resume.is_file() else resume
    if cfg.output_dir != str(run_dir):
        log.info("--resume: continuing in %s", run_dir)
    return replace(cfg, output_dir=str(run_dir))
