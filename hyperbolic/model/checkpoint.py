"""Projection checkpoints: the one place that writes, reads and checks them.

What ``train_hyperbolic_clap.py`` writes every epoch (``FORMAT_VERSION`` 2) is a dict with the
keys users know from the earlier public scripts: ``epoch``, ``projection_state_dict``
(``linear.weight``, ``linear.bias``), ``optimizer_state_dict``, ``train_loss``, ``val_loss``,
``c``, ``temperature``, ``embed_dim``; plus ``format_version``, ``config`` (the effective
``TrainConfig``, so a checkpoint describes itself), ``proj_dim`` (D of ``linear.weight`` (D, d);
a checkpoint without it has D = d, the only size there was), ``geometry``, ``clip_r``,
``prompt_template``, ``val_mAP``, the train/val ``split`` and what ``--resume`` needs
(``scheduler_state_dict``, ``geometry_state_dict``, ``generator_state``, ``best_metric``,
``best_epoch``, ``stale_epochs``, ``history``), and the run's extras (``holdout_classes``,
``class_names``, ...).

The earlier scripts' checkpoints have the first eight keys and no ``config``: they load for
evaluation and export as they are (``read_projection``), and are refused by ``--resume``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hyperbolic import __version__
from hyperbolic.errors import CheckpointError  # noqa: F401 (re-exported)
from hyperbolic.model.projector import CLIP_MODES, GEOMETRIES, Projector
from hyperbolic.outputs import atomic_torch_save

FORMAT_VERSION = 2
LEGACY_FORMAT = "legacy (no config)"  # model_info.checkpoint_format of an earlier scripts' checkpoint
# Settings that may differ when a run is resumed: where and how it runs, not what it computes.
RESUME_MAY_DIFFER = {"resume", "overwrite", "output_dir", "device", "num_workers", "cache_dir", "no_cache",
                     "keep_epochs", "use_swanlab", "swanlab_project", "swanlab_workspace", "swanlab_mode"}


# ------------------------------------------------------------------------------ writing

def epoch_path(out: Path, epoch: int, *, best: bool = False) -> Path:
    return out / f"{'best_' if best else ''}projection_epoch_{epoch}.pth"


def epoch_of(path: Path) -> int:
    """The epoch in the name of a checkpoint file (``epoch_path``'s inverse)."""
    return int(path.stem.rsplit("_", 1)[1])


def save_epoch(out: Path, epoch: int, ckpt: dict, *, best: bool) -> None:
    """Write ``projection_epoch_{epoch}.pth`` (and ``best_projection_epoch_{epoch}.pth`` when
    ``best``), each atomically. The per-epoch file is written last: a run killed before it
    resumes from the previous epoch and rewrites this epoch's files identically. The code's
    version is recorded beside what the caller gives (``hyperbolic_clap_version``)."""
    ckpt = {**ckpt, "hyperbolic_clap_version": __version__}
    if best:
        atomic_torch_save(epoch_path(out, epoch, best=True), ckpt)
    atomic_torch_save(epoch_path(out, epoch), ckpt)


def latest_epoch_file(out: Path) -> Path | None:
    """The ``projection_epoch_*.pth`` of the highest epoch in ``out``, or None."""
    found = sorted(out.glob("projection_epoch_*.pth"), key=epoch_of)
    return found[-1] if found else None


# ------------------------------------------------------------------------------ reading

def positive_float(value, what: str, path: Path) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: {what} {value!r} is not a number") from None
    if not np.isfinite(out) or out <= 0:
        raise CheckpointError(f"{path}: {what} must be a finite number > 0 (got {out})")
    return out


@dataclass
class ProjectionCheckpoint:
    """A checked projection checkpoint: the projector (eval mode) and what it was trained with.

    ``c`` and ``temperature`` are the checkpoint's, or the defaults ``read_projection`` was given
    where it has none; ``prompt_template`` and ``entailment_k`` are None where it has none."""

    path: Path
    raw: dict
    projector: Projector
    geometry: str
    c: float
    temperature: float
    prompt_template: str | None
    entailment_k: float | None
    config: dict

    @property
    def embed_dim(self) -> int:
        """d, the CLAP embedding size the projector reads."""
        return self.projector.linear.weight.shape[1]

    @property
    def proj_dim(self) -> int:
        """D, the size of the projected points."""
        return self.projector.proj_dim

    @property
    def legacy_format(self) -> bool:
        """Written by the earlier public scripts (no ``config``)."""
        return "config" not in self.raw

    @property
    def format(self):
        return LEGACY_FORMAT if self.legacy_format else self.raw.get("format_version")


def resolve_checkpoint(path: str | Path) -> Path:
    """``--projection-checkpoint``: a .pth as given; a training run's folder -> its best checkpoint
    (the newest ``best_projection_epoch_*.pth``: one is written each time validation improves); a
    sweep's folder -> the winner's (``sweep.json``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    sweep = path / "sweep.json"
    if sweep.is_file():
        try:
            return Path(json.loads(sweep.read_text(encoding="utf-8"))["winner"]["best_checkpoint"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"--projection-checkpoint {path}: its sweep.json names no winner ({err}); "
                                  "pass one of its c*_t*/best_projection_epoch_*.pth") from None
    best = sorted(path.glob("best_projection_epoch_*.pth"), key=epoch_of)
    if not best:
        raise CheckpointError(f"--projection-checkpoint {path} is a folder without best_projection_epoch_*.pth; "
                              "pass a training run's --output-dir or a .pth checkpoint file")
    return best[-1]


def read_projection(path: str | Path, *, embed_dim: int | None = None, c_default: float = 1.0,
                    temperature_default: float = 1.0) -> ProjectionCheckpoint:
    """Read and check a projection checkpoint (this codebase's or the earlier scripts');
    CheckpointError naming the file for one that is missing, torn, not a projection
    checkpoint, or trained on CLAP embeddings of another size than ``embed_dim``."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"--projection-checkpoint {path} does not exist; pass a .pth checkpoint file or "
                              "a training run's --output-dir (its best checkpoint is used)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointError(f"--projection-checkpoint {path} is not a readable torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "projection_state_dict" not in ckpt:
        raise CheckpointError(f"--projection-checkpoint {path} has no 'projection_state_dict'; "
                              "is it a projection checkpoint from train_hyperbolic_clap.py?")
    state = ckpt["projection_state_dict"]
    weight = state.get("linear.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise CheckpointError(f"{path}: projection_state_dict has no 2-d 'linear.weight'")
    proj_dim, dim = weight.shape
    # Checkpoints before --proj-dim have no "proj_dim" and a square layer (D = d).
    if ckpt.get("proj_dim", dim) != proj_dim:
        raise CheckpointError(f"{path}: proj_dim {ckpt.get('proj_dim')!r} does not match its linear.weight "
                              f"{tuple(weight.shape)} (D, d); the file is inconsistent, use another checkpoint")
    if embed_dim is not None and dim != embed_dim:
        raise CheckpointError(f"{path}: projector expects {dim}-d embeddings but the CLAP model gives "
                              f"{embed_dim}-d; use the checkpoint trained on this CLAP model")
    geometry = ckpt.get("geometry", "hyperbolic")
    if geometry not in GEOMETRIES:
        raise CheckpointError(f"{path}: unknown geometry {geometry!r} (known: {', '.join(GEOMETRIES)})")
    # The clip mode only shapes training gradients (the value is the same); runs before it
    # existed trained with the straight-through rule.
    clip_mode = ckpt.get("clip_mode") if ckpt.get("clip_mode") in CLIP_MODES else "straight-through"
    projector = Projector(dim, geometry=geometry, clip_r=ckpt.get("clip_r", 0.9), clip_mode=clip_mode,
                          proj_dim=proj_dim)
    try:
        projector.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: projection_state_dict does not fit a {dim}-d -> {proj_dim}-d projector "
                              f"({err})") from err
    projector.eval()
    c = positive_float(ckpt.get("c", c_default), "c", path)
    temperature = positive_float(ckpt.get("temperature", temperature_default), "temperature", path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    entailment_k = (positive_float(config["entailment_k"], "config entailment_k", path)
                    if config.get("entailment_k") is not None else None)
    return ProjectionCheckpoint(path=path, raw=ckpt, projector=projector, geometry=geometry, c=c,
                                temperature=temperature, prompt_template=ckpt.get("prompt_template"),
                                entailment_k=entailment_k, config=config)


def load_resumable(path: Path) -> dict:
    """A checkpoint ``--resume`` can continue from: readable, this codebase's, with its config and
    shuffling state (the earlier scripts' checkpoints have neither)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"--resume {path} is not a readable checkpoint ({err}); resume from the run's "
                              "folder or an earlier projection_epoch_*.pth of it, or start again with "
                              "--overwrite") from err
    if not isinstance(ckpt, dict) or "generator_state" not in ckpt or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"--resume {path} is not a resumable checkpoint of train_hyperbolic_clap.py")
    return ckpt


def read_resume(path: Path, config: dict, split_ids: dict, embed_dim: int) -> dict:
    """Read and check a checkpoint to resume from (``config``: the resuming run's, as
    ``TrainConfig.to_dict``); every problem names the file and the fix."""
    ckpt = load_resumable(path)
    if ckpt.get("embed_dim") != embed_dim:
        raise CheckpointError(f"--resume {path} was trained on {ckpt.get('embed_dim')}-d CLAP embeddings, this "
                              f"CLAP model gives {embed_dim}-d; resume with the --checkpoint the run used")
    weight = ckpt.get("projection_state_dict", {}).get("linear.weight")
    proj_dim = config.get("proj_dim") or embed_dim
    if isinstance(weight, torch.Tensor) and weight.shape[0] != proj_dim:
        raise CheckpointError(f"--resume {path} projects to {weight.shape[0]} dimensions, this run asks for "
                              f"--proj-dim {proj_dim}; resume with the run's --proj-dim {weight.shape[0]}")
    differ = {k: (v, config.get(k)) for k, v in ckpt["config"].items()
              if k not in RESUME_MAY_DIFFER and config.get(k) != v}
    if differ:
        listing = ", ".join(f"--{k.replace('_', '-')} {new!r} (run: {old!r})" for k, (old, new) in differ.items())
        raise CheckpointError(f"--resume {path}: settings differ from the run being resumed: {listing}; resume "
                              "with the run's settings (see its setup.json), or start a new run")
    if ckpt.get("split") != split_ids:
        raise CheckpointError(f"--resume {path}: its train/val split differs from this run's data; "
                              "resume with the same --parquet-dir, --num-samples, --seed and --train-ratio")
    return ckpt
