"""Training the projector on frozen CLAP embeddings.

Data flow: parquet -> CLAP embeddings (once, ``hyperbolic.training.data``) -> split -> epochs over
the (N, D) matrix -> checkpoints + setup.json in the run folder (``hyperbolic.training.run_folder``).
``fit`` is the epoch loop over tensors (restore, then per epoch train / validate / save, with
``hyperbolic.training.trainer.Trainer`` doing one step); ``train`` runs one fit per (c, temperature)
combination of a sweep, all from the same embeddings.
"""

from __future__ import annotations

import itertools
import logging
import math
import shlex
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from data.audioset import describe_skipped
from hyperbolic import __version__
from hyperbolic.config import TrainConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.evaluation.tables import format_sweep_table
from hyperbolic.hierarchy.cones import EntailmentObjective
from hyperbolic.model import checkpoint
from hyperbolic.outputs import atomic_write_json
from hyperbolic.training.data import TrainingData, training_data
from hyperbolic.training.run_folder import (
    continue_in_run_dir,
    missing_dirs,
    prepare_output_dir,
    prune_checkpoints,
    remove_empty_dirs,
    resume_point,
    sweep_dir_name,
)
from hyperbolic.training.threads import probe_threads, trainer_step
from hyperbolic.training.trainer import Trainer, TrainingError, lr_factor, upgrade_optimizer_state

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


def _check_finite(value: torch.Tensor, what: str, epoch: int, batch: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(f"non-finite {what} at epoch {epoch}, batch {batch}; training stopped. "
                            "The last good checkpoint is kept; try a lower --learning-rate or --clip-r.")


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
    training_clips: dict | None = None  # TrainingData.training_clips: the checkpoint's leakage guard
    best: float | None = None
    best_epoch: int | None = None
    stale: int = 0
    start: int = 1
    resumed_threads: int | None = None   # the resumed checkpoint's training_threads (0: from before the probe)


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
    threads = (_choose_threads(run, train_clips, before, num_texts=data.prompts.shape[0]) if run.start <= cfg.epochs
               else before)
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
            improved, note = _record(run, epoch, row)
            _save(run, epoch, row, improved, embed_dim=clips.audio.shape[1])
            _log_epoch(cfg, row, improved, note)
            if tracker is not None:
                tracker.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch)
    except KeyboardInterrupt:
        raise TrainingInterrupted(checkpoint.epoch_of(last) if (last := checkpoint.latest_epoch_file(out)) else 0, out) from None
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
    setup = {"config": cfg.to_dict(), "hyperbolic_clap_version": __version__, **data.extra, "history": [], "summary": None}
    return Run(cfg, trainer, scheduler, torch.Generator().manual_seed(cfg.seed), setup, split_ids, data.extra, out,
               training_clips=data.training_clips)


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
    run.resumed_threads = int(ckpt.get("training_threads", 0))
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


# Every selection metric but val_loss is a fraction in [0, 1]: at 1.0 it cannot rank later epochs.
SELECT_METRIC_MAX = 1.0


def _record(run: Run, epoch: int, row: dict) -> tuple[bool, str]:
    """Append the epoch's row to the history; update best / stale. Returns (new best?, a note
    for the epoch line). An epoch that ties the best on ``--select-metric`` is the new best when
    its val_loss is lower (a saturated metric, R@10 = 1.0 on a few validation clips, would
    otherwise keep the first epoch without a word); the note says when it ties or saturates."""
    key, history = run.cfg.select_metric, run.setup["history"]
    metric = row[key]
    higher_is_better = key != "val_loss"
    note = ""
    if run.best is None:
        improved = True
    elif metric == run.best and higher_is_better:
        best_loss = history[run.best_epoch - 1]["val_loss"]
        improved = row["val_loss"] < best_loss
        note = (f"ties epoch {run.best_epoch} on {key}; val_loss {row['val_loss']:.4f} "
                f"{'<' if improved else '>='} {best_loss:.4f} decides")
    else:
        improved = metric > run.best if higher_is_better else metric < run.best
    if higher_is_better and metric >= SELECT_METRIC_MAX and all(r[key] < SELECT_METRIC_MAX for r in history):
        log.warning("%s reached %g at epoch %d, its maximum: it cannot tell later epochs apart, so ties on it are "
                    "broken on val_loss (more validation clips, or --select-metric val_loss, give a metric "
                    "with room)", key, SELECT_METRIC_MAX, epoch)
    if improved:
        run.best, run.best_epoch, run.stale = metric, epoch, 0
    else:
        run.stale += 1
    history.append(row)
    return improved, note


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
        "embed_dim": embed_dim, "proj_dim": trainer.projector.proj_dim, "geometry": cfg.geometry, "clip_r": cfg.clip_r,
        "clip_mode": cfg.clip_mode, "prompt_template": cfg.prompt_template,
        "best_metric": run.best, "best_epoch": run.best_epoch, "stale_epochs": run.stale,
        "history": run.setup["history"], "split": run.split_ids, "config": cfg.to_dict(), **run.extra,
        "training_clips": run.training_clips,
        "training_threads": torch.get_num_threads(),
    }
    checkpoint.save_epoch(run.out, epoch, ckpt, best=improved)
    prune_checkpoints(run.out, epoch=epoch, best_epoch=run.best_epoch, keep_epochs=cfg.keep_epochs)
    run.setup["summary"] = _summary(cfg, run.setup["history"], run.best_epoch, run.out)
    atomic_write_json(run.out / "setup.json", run.setup)


def _log_epoch(cfg: TrainConfig, row: dict, improved: bool, note: str = "") -> None:
    ball = ("" if "val_audio_radius_median" not in row else
            "  radius audio {:.2f} text {:.2f}  on clip sphere audio {:.0f}% text {:.0f}%".format(
                row["val_audio_radius_median"], row["val_text_radius_median"],
                100 * row["val_audio_on_clip_sphere"], 100 * row["val_text_on_clip_sphere"]))
    # The metric that selects the best epoch is always on the line (val_loss and val_mAP already are).
    selected = ("" if cfg.select_metric in ("val_loss", "val_mAP")
                else f"  {cfg.select_metric} {row[cfg.select_metric]:.4f}")
    log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_mAP %.4f%s  c %.4g  tau %.4g (eff. %.4g)  lr %.3g  "
             "%.2fs%s%s%s", row["epoch"], cfg.epochs, row["train_loss"], row["val_loss"], row["val_mAP"], selected,
             row["c"], row["temperature"], row["effective_temperature"], row["lr"], row["seconds"], ball,
             "  *best*" if improved else "", f"  ({note})" if note else "")


# The earlier rule, kept for checkpoints written before the probe (``_choose_threads``): projector
# work per thread before a second thread pays (forward + backward flops of one step).
STEP_FLOPS_PER_THREAD = 1e9


def training_threads(batch_size: int, num_prompts: int, dim: int, available: int) -> int:
    """Intra-op threads for the epoch loop: one per STEP_FLOPS_PER_THREAD of a step's projector
    work ``6 (batch + prompts) dim^2`` (forward and backward of the dim x dim linear map over the
    batch and the prompts), between 1 and ``available``. A function of the step only, so a
    resumed run uses the same count (and the same floating-point reductions)."""
    flops = 6 * (batch_size + num_prompts) * dim * dim
    return max(1, min(available, int(flops // STEP_FLOPS_PER_THREAD)))


def _choose_threads(run: Run, train_clips: ClipEmbeddings, available: int, *, num_texts: int) -> int:
    """Intra-op threads for the epochs: the faster of 1 and ``available`` for this run's step,
    measured (``threads.probe_threads``); logged and kept in setup.json and every checkpoint
    (``training_threads``). A resumed run keeps the count its checkpoint ran on, so it makes the
    same floating-point reductions as the uninterrupted run; a checkpoint from before the probe
    gets the earlier rule (``training_threads``) it ran on."""
    cfg, dim, prompts = run.cfg, train_clips.audio.shape[1], len(run.trainer.seen)
    texts = (f"{prompts} prompts" if not cfg.text_column else  # caption runs contrast with texts, not classes
             f"{num_texts} texts (captions{' and class prompts' if prompts else ''})")
    shape = f"a {cfg.batch_size}-clip x {dim}-d step over {texts}"
    if run.resumed_threads is not None:
        threads = run.resumed_threads or training_threads(cfg.batch_size, prompts, dim, available)
        log.info("training on %d intra-op thread%s (of %d) for %s: the count the resumed run used", threads,
                 "" if threads == 1 else "s", available, shape)
        run.setup["training_threads"] = {"threads": threads, "available": available, "from": "resumed checkpoint"}
        return threads
    threads, per_step = probe_threads(trainer_step(run.trainer, train_clips, cfg.batch_size), available)
    measured = "; ".join(f"{n} thread{'' if n == 1 else 's'}: {1000 * s:.2f} ms" for n, s in per_step.items())
    log.info("training on %d intra-op thread%s (of %d) for %s%s", threads, "" if threads == 1 else "s", available,
             shape, f" (measured per step: {measured})" if per_step else "")
    run.setup["training_threads"] = {"threads": threads, "available": available,
                                     "seconds_per_step": {str(n): s for n, s in per_step.items()}}
    return threads


def _summary(cfg: TrainConfig, history: list[dict], best_epoch: int, out: Path) -> dict:
    best_row = history[best_epoch - 1]
    key = cfg.select_metric
    tied = [row.get("epoch", i + 1) for i, row in enumerate(history) if row[key] == best_row[key]]
    return {"best_epoch": best_epoch, f"best_{cfg.select_metric}": best_row[cfg.select_metric],
            "select_metric": key, "epochs_tied_on_select_metric": tied,
            "tie_break": "val_loss" if key != "val_loss" else None,
            "select_metric_saturated": key != "val_loss" and best_row[key] >= SELECT_METRIC_MAX,
            "best_val_mAP": best_row["val_mAP"], "best_val_loss": best_row["val_loss"],
            "best_train_loss": best_row["train_loss"],
            "best_checkpoint": str(checkpoint.epoch_path(out, best_epoch, best=True)),
            "epochs_run": len(history), "c": history[-1]["c"], "temperature": history[-1]["temperature"],
            "effective_temperature": history[-1].get("effective_temperature")}


def _plot_curves(out: Path) -> None:
    try:
        from hyperbolic.evaluation.plots import plot_training_curves
    except ImportError:  # matplotlib missing: curves are optional
        return
    plot_training_curves(out / "setup.json", out / "training_curves.png")


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


def train(cfg: TrainConfig, *, c_values: list[float] | None = None,
          temperatures: list[float] | None = None) -> dict:
    """Embed the folder with the frozen CLAP once, then fit one projector per (c, temperature).

    A single combination writes into ``output_dir``; several write one subfolder each plus
    ``sweep.json``. Returns the summary (of the winner, for a sweep)."""
    c_values, temperatures = list(c_values or [cfg.c]), list(temperatures or [cfg.temperature])
    for c, t in itertools.product(c_values, temperatures):  # the checks the script runs on its flags
        replace(cfg, c=c, temperature=t).validate()
    combos = list(itertools.product(c_values, temperatures))
    if cfg.resume:
        cfg = continue_in_run_dir(cfg, combos)
    _swanlab_module(cfg)
    created = missing_dirs(Path(cfg.output_dir))
    out = prepare_output_dir(cfg)
    try:
        data = training_data(cfg)
    except Exception:
        # An error before any epoch leaves no empty run folder behind (docs/data.md); Ctrl-C and a
        # killed process keep it, so --resume RUN_DIR (or the same command) goes on from the cache.
        remove_empty_dirs(created)
        raise
    data.extra["sweep"] = {"c": list(c_values), "temperature": list(temperatures)}  # for --resume RUN_DIR alone
    tracker = _swanlab(cfg, out)
    try:
        if len(combos) == 1:
            run_cfg = replace(cfg, c=combos[0][0], temperature=combos[0][1])
            summary = fit(run_cfg, data, out, tracker=tracker, resume=resume_point(out, cfg))
        else:
            summary = _sweep(cfg, combos, data, out)
        log.info("%s (examples under data.skipped in setup.json)", describe_skipped(data.extra["data"]["skipped"]))
        return summary
    except TrainingInterrupted as stop:
        if stop.run_dir == out:
            raise
        raise TrainingInterrupted(stop.epoch, out, part=stop.run_dir.name) from None
    finally:
        if tracker is not None:
            tracker.finish()


def sweep_rank(row: dict, *, select_metric: str) -> tuple[float, ...]:
    """A sweep combination's rank (higher wins): its best ``--select-metric``, a tie broken on the
    lower val_loss as between the epochs of one run (``_record``); still tied, the first one."""
    if select_metric == "val_loss":
        return (-row["best_val_loss"],)
    return (row["selected_by"], -row["best_val_loss"])


def _sweep(cfg: TrainConfig, combos: list[tuple[float, float]], data: TrainingData, out: Path) -> dict:
    rows = []
    for c, temperature in combos:
        run_dir = out / sweep_dir_name(c, temperature)
        run_dir.mkdir(exist_ok=True)
        log.info("sweep: c=%g temperature=%g -> %s", c, temperature, run_dir)
        run_cfg = replace(cfg, c=c, temperature=temperature, output_dir=str(run_dir))
        summary = fit(run_cfg, data, run_dir, resume=resume_point(run_dir, cfg))
        rows.append({"c": c, "temperature": temperature,
                     "effective_temperature": summary["effective_temperature"], "best_val_mAP": summary["best_val_mAP"],
                     "best_val_loss": summary["best_val_loss"], "best_epoch": summary["best_epoch"],
                     "best_checkpoint": summary["best_checkpoint"], "output_dir": str(run_dir),
                     "selected_by": summary[f"best_{cfg.select_metric}"]})
    winner = max(rows, key=partial(sweep_rank, select_metric=cfg.select_metric))
    atomic_write_json(out / "sweep.json", {"config": cfg.to_dict(), "select_metric": cfg.select_metric,
                                           "runs": rows, "winner": winner})
    print(format_sweep_table(rows, winner))
    return {**winner, "sweep": rows}
