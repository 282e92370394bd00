"""Training the projector on frozen CLAP embeddings.

Data flow: parquet -> CLAP embeddings (once) -> split -> epochs over the (N, D) matrix ->
checkpoints + setup.json. ``fit`` is the epoch loop over tensors; ``train`` wires it to the data.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher, load_class_labels
from hyperbolic.clap import FrozenClap, resolve_device
from hyperbolic.config import TrainConfig
from hyperbolic.embeddings import ClipEmbeddings, embed_clips, embed_prompts, prompts_for
from hyperbolic.losses import clip_contrastive, multi_positive_contrastive
from hyperbolic.metrics import classification_metrics
from hyperbolic.outputs import atomic_torch_save, atomic_write_json
from hyperbolic.projector import Geometry, Projector, similarity

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2


class TrainingError(RuntimeError):
    """A run that cannot go on (bad split, diverged loss); the message says what to do."""


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


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Projector + geometry + objective over precomputed embeddings."""

    def __init__(self, cfg: TrainConfig, embed_dim: int, prompts: torch.Tensor):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.projector = Projector(embed_dim, geometry=cfg.geometry, clip_r=cfg.clip_r)
        self.geometry = Geometry(cfg.c, cfg.temperature, learn_c=cfg.learn_c and cfg.geometry == "hyperbolic",
                                 learn_temperature=cfg.learn_temperature)
        self.prompts = prompts
        params = [p for p in [*self.projector.parameters(), *self.geometry.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        c, tau = self.geometry.c, self.geometry.temperature
        return similarity(self.projector(audio, c=c), self.projector(text, c=c),
                          geometry=self.cfg.geometry, c=c, temperature=tau)

    def batch_loss(self, audio: torch.Tensor, labels: list[list[int]], first: list[int]) -> torch.Tensor:
        if self.cfg.text_pairing == "first-label":
            return clip_contrastive(self.logits(audio, self.prompts[first]))
        classes = sorted({k for row in labels for k in row})
        column = {k: j for j, k in enumerate(classes)}
        positives = torch.zeros(len(labels), len(classes), dtype=torch.bool)
        for i, row in enumerate(labels):
            positives[i, [column[k] for k in row]] = True
        return multi_positive_contrastive(self.logits(audio, self.prompts[classes]), positives)

    def batches(self, clips: ClipEmbeddings, order: list[int]):
        size = self.cfg.batch_size
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            yield (clips.audio[rows], [clips.label_indices[i] for i in rows],
                   [clips.first_label[i] for i in rows])

    @torch.no_grad()
    def validate(self, clips: ClipEmbeddings) -> dict:
        losses, sizes = [], []
        for audio, labels, first in self.batches(clips, list(range(len(clips)))):
            losses.append(float(self.batch_loss(audio, labels, first)))
            sizes.append(len(labels))
        scores = self.logits(clips.audio, self.prompts).numpy()
        targets = clips.targets(self.prompts.shape[0])
        return {
            "val_loss": float(np.average(losses, weights=sizes)),
            "val_mAP": classification_metrics(scores, targets)["mAP"],
            "val_mean_pos_sim": float(scores[targets].mean()),
            "val_mean_neg_sim": float(scores[~targets].mean()),
        }

    def state(self) -> dict:
        return {"c": float(self.geometry.c), "temperature": float(self.geometry.temperature)}


def _check_finite(value: torch.Tensor, what: str, epoch: int, batch: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(f"non-finite {what} at epoch {epoch}, batch {batch}; training stopped. "
                            "The last good checkpoint is kept; try a lower --learning-rate or --clip-r.")


def fit(cfg: TrainConfig, clips: ClipEmbeddings, prompts: torch.Tensor, split: Split, out: Path,
        *, extra: dict | None = None, tracker=None) -> dict:
    """Run the epochs; write checkpoints and setup.json under ``out``; return the summary."""
    trainer = Trainer(cfg, clips.audio.shape[1], prompts)
    train_clips, val_clips = clips.subset(split.train), clips.subset(split.val)
    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: lr_factor(s, total=total_steps, warmup=warmup, schedule=cfg.lr_schedule))
    higher_is_better = cfg.select_metric == "val_mAP"
    setup = {"config": cfg.to_dict(), **(extra or {}), "history": [], "summary": None}
    best, best_epoch, stale = None, None, 0
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        started = time.time()
        trainer.projector.train()
        order = torch.randperm(len(train_clips), generator=generator).tolist()
        total, count = 0.0, 0
        for b, (audio, labels, first) in enumerate(trainer.batches(train_clips, order)):
            loss = trainer.batch_loss(audio, labels, first)
            _check_finite(loss, "loss", epoch, b)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.optimizer.param_groups[0]["params"], cfg.grad_clip)
            trainer.optimizer.step()
            trainer.geometry.clamp_()
            scheduler.step()
            total += loss.item() * len(labels)
            count += len(labels)
        trainer.projector.eval()
        for p in trainer.projector.parameters():
            _check_finite(p, "projector weight", epoch, b)
        row = {"epoch": epoch, "train_loss": total / count, **trainer.validate(val_clips),
               **trainer.state(), "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 3)}
        metric = row[cfg.select_metric]
        improved = best is None or (metric > best if higher_is_better else metric < best)
        ckpt = {
            "format_version": CHECKPOINT_FORMAT, "epoch": epoch,
            "projection_state_dict": trainer.projector.state_dict(),
            "optimizer_state_dict": trainer.optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "geometry_state_dict": trainer.geometry.state_dict(),
            "train_loss": row["train_loss"], "val_loss": row["val_loss"], "val_mAP": row["val_mAP"],
            "c": row["c"], "temperature": row["temperature"], "embed_dim": clips.audio.shape[1],
            "geometry": cfg.geometry, "clip_r": cfg.clip_r, "prompt_template": cfg.prompt_template,
            "config": cfg.to_dict(), **(extra or {}),
        }
        atomic_torch_save(out / f"projection_epoch_{epoch}.pth", ckpt)
        if improved:
            best, best_epoch, stale = metric, epoch, 0
            atomic_torch_save(out / f"best_projection_epoch_{epoch}.pth", ckpt)
        else:
            stale += 1
        setup["history"].append(row)
        setup["summary"] = {"best_epoch": best_epoch, f"best_{cfg.select_metric}": best,
                            "best_checkpoint": str(out / f"best_projection_epoch_{best_epoch}.pth"),
                            "epochs_run": epoch,
                            "best_train_loss": setup["history"][best_epoch - 1]["train_loss"],
                            "best_val_loss": setup["history"][best_epoch - 1]["val_loss"]}
        atomic_write_json(out / "setup.json", setup)
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_mAP %.4f  c %.4g  tau %.4g  lr %.3g%s",
                 epoch, cfg.epochs, row["train_loss"], row["val_loss"], row["val_mAP"], row["c"],
                 row["temperature"], row["lr"], "  *best*" if improved else "")
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch)
        if cfg.patience and stale >= cfg.patience:
            log.info("no %s improvement for %d epochs: early stop", cfg.select_metric, cfg.patience)
            break
    return setup["summary"]


def prepare_output_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise TrainingError(f"--output-dir {out} is not empty; pass --overwrite to replace its "
                            "files, or choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _swanlab(cfg: TrainConfig):
    if not cfg.use_swanlab:
        return None
    try:
        import swanlab
    except ImportError as err:
        raise TrainingError("--use-swanlab needs the swanlab package: pip install swanlab") from err
    kwargs = {"project": cfg.swanlab_project, "workspace": cfg.swanlab_workspace, "config": cfg.to_dict()}
    if cfg.swanlab_mode:
        kwargs["mode"] = cfg.swanlab_mode
    swanlab.init(**kwargs)
    return swanlab


def train(cfg: TrainConfig) -> dict:
    """Embed the folder with the frozen CLAP, then fit the projector. Returns the summary."""
    out = prepare_output_dir(cfg)
    device = resolve_device(cfg.device)
    class_names = load_class_labels(cfg.class_labels)
    matcher = LabelMatcher(class_names)
    clap = FrozenClap.load(cfg.checkpoint, device)
    skips = SkipLog()
    clips = embed_clips(clap, cfg.parquet_dir, matcher=matcher, skips=skips, label_column=cfg.label_column,
                        limit=cfg.num_samples, batch_size=cfg.embed_batch_size, require_labels=True)
    if len(clips) < 2:
        raise TrainingError(f"only {len(clips)} usable clips in {cfg.parquet_dir} "
                            f"(skipped: {skips.to_dict()}); training needs at least 2")
    prompts = embed_prompts(clap, prompts_for(class_names, cfg.prompt_template))
    split = split_indices(len(clips), cfg.train_ratio, cfg.seed)
    extra = {"clap": {"path": str(clap.path), "embed_dim": clap.embed_dim},
             "data": {"clips": len(clips), "train_clips": len(split.train), "val_clips": len(split.val),
                      "skipped": skips.to_dict(), "unknown_labels": skips.unknown_labels_list()}}
    log.info("%d clips (%d train / %d val), %d classes", len(clips), len(split.train), len(split.val),
             len(class_names))
    tracker = _swanlab(cfg)
    try:
        summary = fit(cfg, clips, prompts, split, out, extra=extra, tracker=tracker)
    finally:
        if tracker is not None:
            tracker.finish()
    return summary
