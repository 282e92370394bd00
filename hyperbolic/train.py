"""Training the projector on frozen CLAP embeddings.

Data flow: parquet -> CLAP embeddings (once) -> split -> epochs over the (N, D) matrix ->
checkpoints + setup.json. ``fit`` is the epoch loop over tensors; ``train`` wires it to the data
and runs one fit per (c, temperature) combination of a sweep, all from the same embeddings.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from data.audio import segmenting_from
from data.audioset import SkipLog
from data.class_list import resolve_class_names
from data.labels import LabelMatcher, load_class_ids
from hyperbolic import checkpoint
from hyperbolic.caption_train import CaptionTrainer, caption_training_data
from hyperbolic.config import TrainConfig
from hyperbolic.embeddings import (
    PROMPT_NAME_RULE,
    ClipEmbeddings,
    duration_report,
    embed_prompts,
    embed_run_clips,
    open_cache,
    open_clap,
    prompts_for,
)
from hyperbolic.entailment import EntailmentObjective, Hierarchy
from hyperbolic.ontology import Ontology
from hyperbolic.outputs import atomic_write_json
from hyperbolic.tables import format_sweep_table
from hyperbolic.trainer import Trainer, TrainingError, lr_factor, upgrade_optimizer_state

log = logging.getLogger(__name__)


class TrainingInterrupted(TrainingError):
    """Ctrl-C during the epochs. ``epoch``: the last epoch whose checkpoint is complete (0: none);
    ``run_dir``: the folder ``--resume`` continues (the sweep's root for a sweep)."""

    def __init__(self, epoch: int, run_dir: Path, part: str = ""):
        self.epoch, self.run_dir, self.part = epoch, Path(run_dir), part
        super().__init__(self.line())

    def line(self) -> str:
        where = f" of {self.part}" if self.part else ""
        done = (f"epoch {self.epoch}{where} is the last complete epoch" if self.epoch
                else f"no epoch{where} was complete")
        return (f"interrupted: {done}; continue with: python train_hyperbolic_clap.py "
                f"--resume {shlex.quote(str(self.run_dir))}")


@dataclass
class Split:
    train: list[int]
    val: list[int]


def split_indices(n: int, train_ratio: float, seed: int) -> Split:
    """Seeded permutation; the first ``round(n * train_ratio)`` clips train, the rest validate."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(round(n * train_ratio))
    if n_train < 1 or n_train >= n:
        raise TrainingError(
            f"--train-ratio {train_ratio} splits {n} usable clips into {n_train} train and "
            f"{n - n_train} validation clips; both need at least one (use more clips or another ratio)")
    return Split(train=sorted(order[:n_train]), val=sorted(order[n_train:]))


def choose_holdout(spec: str | None, class_names: list[str], present: list[int], seed: int) -> list[int]:
    """``--holdout-classes``: a fraction of the classes present in the data (seeded), or a file
    with one class name per line. Returns sorted class indices."""
    if not spec:
        return []
    path = Path(spec)
    if path.is_file():
        index = {name.casefold(): i for i, name in enumerate(class_names)}
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = [n for n in names if n.casefold() not in index]
        if unknown:
            raise TrainingError(f"--holdout-classes {path}: not in the class list: {'; '.join(unknown[:5])}")
        return sorted({index[n.casefold()] for n in names})
    try:
        fraction = float(spec)
    except ValueError:
        raise TrainingError(f"--holdout-classes must be a fraction in (0, 1) or an existing file (got {spec!r})")
    if not 0 < fraction < 1:
        raise TrainingError(f"--holdout-classes fraction must be in (0, 1) (got {fraction})")
    count = int(round(fraction * len(present)))
    if count < 1 or count >= len(present):
        raise TrainingError(f"--holdout-classes {fraction} of the {len(present)} classes present holds out "
                            f"{count}; need at least one held-out and one training class")
    order = torch.randperm(len(present), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(present[i] for i in order[:count])


def drop_holdout_clips(clips: ClipEmbeddings, holdout: list[int]) -> tuple[ClipEmbeddings, dict]:
    """Drop every clip that carries a held-out class, whatever its other labels.

    Keeping such a clip under its other labels (a {Music, Guitar} clip trained as Music with
    Guitar held out) would let held-out audio shape the projector, so the held-out classes
    would not be unseen at evaluation. Returns the kept clips and the counts:
    ``clips_dropped_holdout`` (every dropped clip) and ``clips_dropped_only_holdout_labels``
    (those of them with no other label, the earlier key)."""
    if not holdout:
        return clips, {"clips_dropped_holdout": 0, "clips_dropped_only_holdout_labels": 0}
    held = set(holdout)
    keep = [i for i, row in enumerate(clips.label_indices) if not held.intersection(row)]
    only = sum(1 for row in clips.label_indices if row and held.issuperset(row))
    return clips.subset(keep), {"clips_dropped_holdout": len(clips) - len(keep),
                                "clips_dropped_only_holdout_labels": only}


def _check_finite(value: torch.Tensor, what: str, epoch: int, batch: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(f"non-finite {what} at epoch {epoch}, batch {batch}; training stopped. "
                            "The last good checkpoint is kept; try a lower --learning-rate or --clip-r.")


def _epoch_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def prune_checkpoints(out: Path, *, epoch: int, best_epoch: int, keep_epochs: int) -> list[Path]:
    """Called once ``epoch``'s files are written: remove every ``best_projection_epoch_*.pth``
    but ``best_epoch``'s, and (``keep_epochs > 0``) the per-epoch checkpoints older than the
    newest ``keep_epochs`` up to ``epoch``. Returns the removed paths.

    Removal comes after the newer file is in place (``atomic_torch_save`` has replaced it), so
    a crash at any point leaves a best checkpoint and a checkpoint to resume from."""
    removed = [p for p in out.glob("best_projection_epoch_*.pth") if _epoch_of(p) != best_epoch]
    if keep_epochs > 0:
        removed += [p for p in out.glob("projection_epoch_*.pth") if _epoch_of(p) <= epoch - keep_epochs]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@dataclass
class Run:
    """What the epoch loop carries from one epoch to the next, and what a checkpoint restores."""

    cfg: TrainConfig
    trainer: Trainer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    setup: dict                      # setup.json: config, run facts, history, summary
    split_ids: dict
    extra: dict
    out: Path
    best: float | None = None
    best_epoch: int | None = None
    stale: int = 0
    start: int = 1


@dataclass
class TrainingData:
    """What every run of a sweep trains on, computed once: the clips' CLAP embeddings, the text
    embeddings they are contrasted with, and the split."""

    clips: ClipEmbeddings
    prompts: torch.Tensor                # (P, D): class prompts (+ the ontology's abstract parents), or caption texts
    split: Split
    seen: list[int] | None = None        # the class indices training may use; None: every class
    hierarchy: Hierarchy | None = None   # --ontology: its pairs and label expansion
    trainer_cls: Callable | None = None  # called like Trainer (captions: caption_train.CaptionTrainer)
    extra: dict = field(default_factory=dict)  # run facts for setup.json


def fit(cfg: TrainConfig, data: TrainingData, out: Path, *, tracker=None, resume: Path | None = None) -> dict:
    """Run the epochs; write checkpoints and setup.json under ``out``; return the summary.

    Restore (``resume``: a checkpoint of this same run; training continues after its epoch with
    its weights, optimizer, schedule and shuffling state, so the result equals an uninterrupted
    run), then per epoch: train, validate, save.
    """
    clips = data.clips
    train_clips, val_clips = clips.subset(data.split.train), clips.subset(data.split.val)
    run = _new_run(cfg, data, out, train_clips)
    if resume is not None:
        _restore(run, resume, embed_dim=clips.audio.shape[1])
    else:  # the configuration is in the folder from the start, so --resume RUN_DIR alone works
        atomic_write_json(out / "setup.json", run.setup)
    before = torch.get_num_threads()
    threads = training_threads(cfg.batch_size, len(run.trainer.seen), clips.audio.shape[1], before)
    if run.start <= cfg.epochs:
        log.info("training on %d intra-op thread%s (of %d) for a %d-clip x %d-d step over %d prompts", threads,
                 "" if threads == 1 else "s", before, cfg.batch_size, clips.audio.shape[1], len(run.trainer.seen))
    torch.set_num_threads(threads)
    try:
        for epoch in range(run.start, cfg.epochs + 1):
            if cfg.patience and run.stale >= cfg.patience:
                break
            started = time.time()
            train_loss = _train_epoch(run, train_clips, epoch)
            row = {"epoch": epoch, "train_loss": train_loss, **run.trainer.validate(val_clips),
                   **run.trainer.state(), "lr": run.scheduler.get_last_lr()[0],
                   "seconds": round(time.time() - started, 3)}
            improved = _record(run, epoch, row)
            _save(run, epoch, row, improved, embed_dim=clips.audio.shape[1])
            _log_epoch(cfg, row, improved)
            if tracker is not None:
                tracker.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_epoch_of(last) if (last := checkpoint.latest_epoch_file(out)) else 0, out) from None
    finally:
        torch.set_num_threads(before)
    if cfg.patience and run.stale >= cfg.patience:
        log.info("no %s improvement for %d epochs: stopped early", cfg.select_metric, cfg.patience)
    _plot_curves(out)
    return run.setup["summary"]


def _new_run(cfg: TrainConfig, data: TrainingData, out: Path, train_clips: ClipEmbeddings) -> Run:
    """The trainer (projector, geometry, objective, optimizer), the schedule and the shuffling
    generator of a fresh run."""
    clips, prompts, split, hierarchy = data.clips, data.prompts, data.split, data.hierarchy
    num_classes = prompts.shape[0] if hierarchy is None else hierarchy.num_classes
    seen = list(range(num_classes)) if data.seen is None else data.seen
    entailment = None if hierarchy is None else EntailmentObjective(
        hierarchy, K=cfg.entailment_k, exclude=sorted(set(range(num_classes)) - set(seen)))
    trainer = (data.trainer_cls or Trainer)(cfg, clips.audio.shape[1], prompts, seen, entailment=entailment,
                                            init_audio=train_clips.audio)
    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: lr_factor(s, total=total_steps, warmup=warmup, schedule=cfg.lr_schedule))
    split_ids = {part: [f"{clips.metas[i].file}:{clips.metas[i].row}:{clips.metas[i].video_id}" for i in rows]
                 for part, rows in (("train", split.train), ("val", split.val))}
    setup = {"config": cfg.to_dict(), **data.extra, "history": [], "summary": None}
    return Run(cfg, trainer, scheduler, torch.Generator().manual_seed(cfg.seed), setup, split_ids, data.extra, out)


def _restore(run: Run, resume: Path, *, embed_dim: int) -> None:
    """Load a checkpoint of this run (checked by ``checkpoint.read_resume``) into ``run``."""
    ckpt = checkpoint.read_resume(resume, run.cfg.to_dict(), run.split_ids, embed_dim)
    trainer = run.trainer
    trainer.projector.load_state_dict(ckpt["projection_state_dict"])
    trainer.geometry.load_state_dict(ckpt["geometry_state_dict"])
    trainer.optimizer.load_state_dict(upgrade_optimizer_state(ckpt["optimizer_state_dict"], trainer.optimizer,
                                                              trainer.params))
    run.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    run.generator.set_state(ckpt["generator_state"])
    run.best, run.best_epoch, run.stale = ckpt["best_metric"], ckpt["best_epoch"], ckpt["stale_epochs"]
    run.setup["history"] = list(ckpt["history"])
    run.setup["summary"] = _summary(run.cfg, run.setup["history"], run.best_epoch, run.out)
    run.start = ckpt["epoch"] + 1
    log.info("resuming %s after epoch %d", resume, ckpt["epoch"])


def _train_epoch(run: Run, train_clips: ClipEmbeddings, epoch: int) -> float:
    """One pass over the training clips in this epoch's shuffled order; the mean batch loss."""
    trainer, cfg = run.trainer, run.cfg
    trainer.projector.train()
    order = torch.randperm(len(train_clips), generator=run.generator).tolist()
    total, count = 0.0, 0
    for b, (audio, labels, first) in enumerate(trainer.batches(train_clips, order)):
        loss = trainer.batch_loss(audio, labels, first)
        _check_finite(loss, "loss", epoch, b)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, cfg.grad_clip)
        trainer.optimizer.step()
        trainer.geometry.clamp_()
        run.scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
    trainer.projector.eval()
    for p in trainer.params:
        _check_finite(p, "parameter", epoch, b)
    return total / count


def _record(run: Run, epoch: int, row: dict) -> bool:
    """Append the epoch's row to the history; update best / stale; True when it is the new best."""
    metric = row[run.cfg.select_metric]
    higher_is_better = run.cfg.select_metric != "val_loss"
    improved = run.best is None or (metric > run.best if higher_is_better else metric < run.best)
    if improved:
        run.best, run.best_epoch, run.stale = metric, epoch, 0
    else:
        run.stale += 1
    run.setup["history"].append(row)
    return improved


def _save(run: Run, epoch: int, row: dict, improved: bool, *, embed_dim: int) -> None:
    """The epoch's checkpoint (and the best one), pruning, then setup.json."""
    cfg, trainer = run.cfg, run.trainer
    ckpt = {
        "format_version": checkpoint.FORMAT_VERSION, "epoch": epoch,
        "projection_state_dict": trainer.projector.state_dict(),
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "geometry_state_dict": trainer.geometry.state_dict(),
        "generator_state": run.generator.get_state(),
        "train_loss": row["train_loss"], "val_loss": row["val_loss"], "val_mAP": row["val_mAP"],
        "c": row["c"], "temperature": row["temperature"], "effective_temperature": row["effective_temperature"],
        "embed_dim": embed_dim, "geometry": cfg.geometry, "clip_r": cfg.clip_r,
        "clip_mode": cfg.clip_mode, "prompt_template": cfg.prompt_template,
        "best_metric": run.best, "best_epoch": run.best_epoch, "stale_epochs": run.stale,
        "history": run.setup["history"], "split": run.split_ids, "config": cfg.to_dict(), **run.extra,
    }
    checkpoint.save_epoch(run.out, epoch, ckpt, best=improved)
    prune_checkpoints(run.out, epoch=epoch, best_epoch=run.best_epoch, keep_epochs=cfg.keep_epochs)
    run.setup["summary"] = _summary(cfg, run.setup["history"], run.best_epoch, run.out)
    atomic_write_json(run.out / "setup.json", run.setup)


def _log_epoch(cfg: TrainConfig, row: dict, improved: bool) -> None:
    ball = ("" if "val_audio_radius_median" not in row else
            "  radius audio %.2f text %.2f  on clip sphere audio %.0f%% text %.0f%%" % (
                row["val_audio_radius_median"], row["val_text_radius_median"],
                100 * row["val_audio_on_clip_sphere"], 100 * row["val_text_on_clip_sphere"]))
    log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_mAP %.4f  c %.4g  tau %.4g (eff. %.4g)  lr %.3g  "
             "%.2fs%s%s", row["epoch"], cfg.epochs, row["train_loss"], row["val_loss"], row["val_mAP"], row["c"],
             row["temperature"], row["effective_temperature"], row["lr"], row["seconds"], ball,
             "  *best*" if improved else "")


# Projector work per thread before a second thread pays (forward + backward flops of one step).
# Measured (docs/performance.md): one thread is fastest for the default step (16 clips, 527
# prompts, 512-d: ~0.85 GFLOP), and with other jobs on the cores several threads are 5-16x slower.
STEP_FLOPS_PER_THREAD = 1e9


def training_threads(batch_size: int, num_prompts: int, dim: int, available: int) -> int:
    """Intra-op threads for the epoch loop: one per STEP_FLOPS_PER_THREAD of a step's projector
    work ``6 (batch + prompts) dim^2`` (forward and backward of the dim x dim linear map over the
    batch and the prompts), between 1 and ``available``. A function of the step only, so a
    resumed run uses the same count (and the same floating-point reductions)."""
    flops = 6 * (batch_size + num_prompts) * dim * dim
    return max(1, min(available, int(flops // STEP_FLOPS_PER_THREAD)))


def _summary(cfg: TrainConfig, history: list[dict], best_epoch: int, out: Path) -> dict:
    best_row = history[best_epoch - 1]
    return {"best_epoch": best_epoch, f"best_{cfg.select_metric}": best_row[cfg.select_metric],
            "best_val_mAP": best_row["val_mAP"], "best_val_loss": best_row["val_loss"],
            "best_train_loss": best_row["train_loss"],
            "best_checkpoint": str(checkpoint.epoch_path(out, best_epoch, best=True)),
            "epochs_run": len(history), "c": history[-1]["c"], "temperature": history[-1]["temperature"],
            "effective_temperature": history[-1].get("effective_temperature")}


def _plot_curves(out: Path) -> None:
    try:
        from hyperbolic.plots import plot_training_curves
    except ImportError:  # matplotlib missing: curves are optional
        return
    plot_training_curves(out / "setup.json", out / "training_curves.png")


RUN_FILES = ("projection_epoch_*.pth", "best_projection_epoch_*.pth", "setup.json", "sweep.json",
             "training_curves.png")


def prepare_output_dir(cfg: TrainConfig) -> Path:
    """Create the output dir. A non-empty one needs --resume or --overwrite; --overwrite removes
    the earlier run's files first, so none of them is later taken for this run's."""
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise TrainingError(f"--output-dir {out} is not empty; pass --resume {out} to continue that run, "
                            "--overwrite to replace its files, or choose another --output-dir")
    if cfg.overwrite and out.exists():
        for folder in [out, *(d for d in out.glob("c*_t*") if d.is_dir())]:
            for pattern in RUN_FILES:
                for old in folder.glob(pattern):
                    log.info("--overwrite: removing %s", old)
                    old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


SWANLAB_DIR = "swanlog"  # under --output-dir: SwanLab's local and offline logs


def _swanlab_module(cfg: TrainConfig):
    """The swanlab module when --use-swanlab; checked before any embedding, so a missing package
    costs seconds, not an embedding pass."""
    if not cfg.use_swanlab:
        return None
    try:
        import swanlab
    except ImportError as err:
        raise TrainingError("--use-swanlab needs the swanlab package (in requirements.txt): "
                            "pip install -r requirements.txt, or drop --use-swanlab") from err
    return swanlab


def _swanlab(cfg: TrainConfig, out: Path):
    swanlab = _swanlab_module(cfg)
    if swanlab is None:
        return None
    kwargs = {"project": cfg.swanlab_project, "workspace": cfg.swanlab_workspace, "config": cfg.to_dict(),
              "log_dir": str(out / SWANLAB_DIR)}
    if cfg.swanlab_mode:
        kwargs["mode"] = {"cloud": "online"}.get(cfg.swanlab_mode, cfg.swanlab_mode)  # "cloud": earlier name
    swanlab.init(**kwargs)
    return swanlab


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
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises several types for torn or foreign files
            raise TrainingError(f"--resume {path} is not a readable checkpoint ({err}); resume from the "
                                "run's folder or an earlier projection_epoch_*.pth") from err
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise TrainingError(f"--resume {path} is not a resumable checkpoint of train_hyperbolic_clap.py")
        setups = [saved]
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


def _resume_point(run_dir: Path, cfg: TrainConfig) -> Path | None:
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


def train(cfg: TrainConfig, *, c_values: list[float] | None = None,
          temperatures: list[float] | None = None) -> dict:
    """Embed the folder with the frozen CLAP once, then fit one projector per (c, temperature).

    A single combination writes into ``output_dir``; several write one subfolder each plus
    ``sweep.json``. Returns the summary (of the winner, for a sweep)."""
    if cfg.learn_c and cfg.learn_temperature:
        raise TrainingError("learn_c with learn_temperature: c only moves the effective temperature tau*sqrt(c) "
                            "when the layer is learned, so the pair has a direction the loss cannot see; "
                            "learn one of them (--learn-c with --no-learn-temperature, or --learn-temperature)")
    c_values, temperatures = list(c_values or [cfg.c]), list(temperatures or [cfg.temperature])
    combos = list(itertools.product(c_values, temperatures))
    if cfg.resume:
        cfg = _continue_in_run_dir(cfg, combos)
    _swanlab_module(cfg)
    out = prepare_output_dir(cfg)
    data = training_data(cfg)
    data.extra["sweep"] = {"c": list(c_values), "temperature": list(temperatures)}  # for --resume RUN_DIR alone
    tracker = _swanlab(cfg, out)
    try:
        if len(combos) == 1:
            run_cfg = replace(cfg, c=combos[0][0], temperature=combos[0][1])
            return fit(run_cfg, data, out, tracker=tracker, resume=_resume_point(out, cfg))
        return _sweep(cfg, combos, data, out)
    except TrainingInterrupted as stop:
        if stop.run_dir == out:
            raise
        raise TrainingInterrupted(stop.epoch, out, part=stop.run_dir.name) from None
    finally:
        if tracker is not None:
            tracker.finish()


def _continue_in_run_dir(cfg: TrainConfig, combos: list[tuple[float, float]]) -> TrainConfig:
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


def training_data(cfg: TrainConfig) -> TrainingData:
    """Embed the clips and texts with the frozen CLAP (cached), keep held-out classes out, split,
    and check that the loss has something to contrast."""
    # Captions alone use no class list; with --label-column given too, its classes are mixed in.
    class_names = (resolve_class_names(cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column,
                                       limit=cfg.num_samples) if not cfg.text_column or cfg.caption_labels else [])
    matcher = LabelMatcher(class_names, load_class_ids(cfg.class_labels, class_names))
    clap, cache = open_clap(cfg), open_cache(cfg)
    skips = SkipLog()
    trainer_cls, caption_info = None, None
    if cfg.text_column:  # captions are the texts: hyperbolic.caption_train
        clips, prompts, caption_info = caption_training_data(cfg, clap, class_names=class_names, matcher=matcher,
                                                             cache=cache, skips=skips)
        trainer_cls = partial(CaptionTrainer, num_classes=len(class_names))
        holdout, hierarchy = [], None
        dropped = {"clips_dropped_holdout": 0, "clips_dropped_only_holdout_labels": 0}
    else:
        clips, holdout, dropped = _labelled_clips(cfg, clap, cache, class_names, matcher, skips)
        hierarchy = _hierarchy(cfg, class_names)
        prompt_names = class_names if hierarchy is None else list(hierarchy.prompt_names)
        prompts = embed_prompts(clap, prompts_for(prompt_names, cfg.prompt_template), cache=cache)
    split = split_indices(len(clips), cfg.train_ratio, cfg.seed)
    if len(split.val) == 1 and cfg.select_metric == "val_mAP":
        log.warning("--train-ratio %g leaves a single validation clip: average precision over one clip is 1.0 "
                    "for any model, so val_mAP cannot tell epochs apart and the first epoch stays best; use more "
                    "clips, a lower --train-ratio, or --select-metric val_loss", cfg.train_ratio)
    seen = [k for k in range(len(class_names)) if k not in set(holdout)]
    candidates = len(seen) if cfg.negatives == "all-classes" else len({k for row in clips.label_indices for k in row})
    if cfg.text_pairing == "all-labels" and candidates < 2:
        raise TrainingError(f"every clip's candidates are its own labels ({candidates} class in reach with "
                            f"--negatives {cfg.negatives}), so the loss has no negative and nothing trains; "
                            "use --negatives all-classes with a class list of several classes, or data with more classes")
    extra = {"clap": {"path": str(clap.path), "embed_dim": clap.embed_dim},
             "cache_dir": None if cache is None else str(cache.root),
             "class_names": class_names, "prompt_label_rule": PROMPT_NAME_RULE,
             "holdout_classes": [class_names[k] for k in holdout],
             "data": {"clips": len(clips), "train_clips": len(split.train), "val_clips": len(split.val),
                      **duration_report(clips, segmenting_from(cfg.segment, cfg.hop)),
                      **dropped,
                      "skipped": skips.to_dict(), "unknown_labels": skips.unknown_labels_list()}}
    if caption_info is not None:
        extra.update(text_column=list(cfg.text_column), captions=caption_info)
    if hierarchy is not None:
        extra["hierarchy"] = {"ontology": cfg.ontology, "unmatched": list(hierarchy.unmatched),
                              "extra_prompts": list(hierarchy.extra_names),
                              "parent_child_pairs": int(hierarchy.parent_child.shape[0])}
    log.info("%d clips (%d train / %d val), %d classes (%d held out)", len(clips), len(split.train),
             len(split.val), len(class_names), len(holdout))
    return TrainingData(clips, prompts, split, seen=seen, hierarchy=hierarchy, trainer_cls=trainer_cls, extra=extra)


def _labelled_clips(cfg: TrainConfig, clap, cache, class_names: list[str], matcher: LabelMatcher,
                    skips: SkipLog) -> tuple[ClipEmbeddings, list[int], dict]:
    """The clips with a known label, less those carrying a held-out class; the held-out class
    indices and the counts of clips dropped for them."""
    clips = embed_run_clips(cfg, clap, cache, matcher=matcher, skips=skips, label_column=cfg.label_column,
                            require_labels=True)
    present = sorted({k for row in clips.label_indices for k in row})
    holdout = choose_holdout(cfg.holdout_classes, class_names, present, cfg.seed)
    clips, dropped = drop_holdout_clips(clips, holdout)
    if dropped["clips_dropped_holdout"]:
        log.info("--holdout-classes: %d clips carry a held-out class and are left out of training and "
                 "validation (%d of them had no other label)", dropped["clips_dropped_holdout"],
                 dropped["clips_dropped_only_holdout_labels"])
    if len(clips) < 2:
        raise TrainingError(f"only {len(clips)} usable clips in {cfg.parquet_dir} "
                            f"(skipped: {skips.describe(cfg.label_column)}); training needs at least 2")
    return clips, holdout, dropped


def _hierarchy(cfg: TrainConfig, class_names: list[str]) -> Hierarchy | None:
    if not cfg.ontology:
        return None
    hierarchy = Hierarchy.build(Ontology.load(cfg.ontology), class_names, expand_ancestors=cfg.expand_ancestors)
    if hierarchy.unmatched:
        log.warning("%d of %d classes match no node of --ontology %s (first: %s)", len(hierarchy.unmatched),
                    len(class_names), cfg.ontology, "; ".join(hierarchy.unmatched[:5]))
    return hierarchy


def _sweep(cfg: TrainConfig, combos: list[tuple[float, float]], data: TrainingData, out: Path) -> dict:
    rows = []
    for c, temperature in combos:
        run_dir = out / sweep_dir_name(c, temperature)
        run_dir.mkdir(exist_ok=True)
        log.info("sweep: c=%g temperature=%g -> %s", c, temperature, run_dir)
        run_cfg = replace(cfg, c=c, temperature=temperature, output_dir=str(run_dir))
        summary = fit(run_cfg, data, run_dir, resume=_resume_point(run_dir, cfg))
        rows.append({"c": c, "temperature": temperature,
                     "effective_temperature": summary["effective_temperature"], "best_val_mAP": summary["best_val_mAP"],
                     "best_val_loss": summary["best_val_loss"], "best_epoch": summary["best_epoch"],
                     "best_checkpoint": summary["best_checkpoint"], "output_dir": str(run_dir),
                     "selected_by": summary[f"best_{cfg.select_metric}"]})
    key = (lambda r: -r["best_val_loss"]) if cfg.select_metric == "val_loss" else (lambda r: r["selected_by"])
    winner = max(rows, key=key)
    atomic_write_json(out / "sweep.json", {"config": cfg.to_dict(), "select_metric": cfg.select_metric,
                                           "runs": rows, "winner": winner})
    print(format_sweep_table(rows, winner))
    return {**winner, "sweep": rows}
