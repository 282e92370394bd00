"""One cell of a study: train (``hyperbolic.training.train.fit``, the recipe's epochs with
selection on the validation part), then score the selected checkpoint on the eval clips.

A cell writes, in ``cells/<key>/``: the run folder of ``fit`` (checkpoints, setup.json), then
``bootstrap.npz`` (mAP and acc@1 of each paired clip resample, for the summary) and, last and
atomically, ``cell.json`` (the record the summary reads; its presence means "finished").
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hyperbolic.config import StudyConfig, TrainConfig
from hyperbolic.evaluation.hierarchy import HierarchyContext, cone_block, hierarchy_block
from hyperbolic.evaluation.scoring import ScoringModel, load_projection, usage_block
from hyperbolic.hierarchy.ontology import Ontology
from hyperbolic.metrics.bootstrap import bootstrap_samples
from hyperbolic.metrics.classification import classification_metrics
from hyperbolic.outputs import atomic_write_bytes, atomic_write_json
from hyperbolic.study.data import StudyData
from hyperbolic.study.grid import CELL_FILE, COSINE, PROBE, Cell, StudyError, cell_dir
from hyperbolic.training.data import Split, TrainingData
from hyperbolic.training.train import fit

log = logging.getLogger(__name__)

METRICS = ("mAP", "acc@1", "acc@5")
BOOTSTRAP_FILE = "bootstrap.npz"
# A selected epoch is "parked" when at least this fraction of the validation audio sits on the clip
# sphere: the model then ranks (nearly) like cosine of directions, the failure docs/geometry.md
# describes for high learning rates.
PARKED = 0.9


def cell_config(recipe: TrainConfig, cell: Cell, out: Path, embed_dim: int) -> TrainConfig:
    """The recipe with the cell's geometry, seed and projection size, writing into ``out``."""
    changes = {"geometry": cell.geometry, "seed": cell.seed, "output_dir": str(out), "resume": None}
    if cell.proj_dim is not None and cell.proj_dim != embed_dim:
        changes["proj_dim"] = cell.proj_dim
    cfg = replace(recipe, **changes)
    problems = cfg.problems()  # the checks train() runs, for the cell's own geometry and size
    if problems:
        raise StudyError(f"cell {cell.key}: " + "; ".join(problems))
    return cfg


def run_cell(study: StudyConfig, data: StudyData, cell: Cell, root: Path) -> dict:
    """Run one cell from scratch (a folder left by an interrupted attempt is emptied first) and
    write its files; returns the record written to cell.json."""
    out = cell_dir(root, cell)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = (time.perf_counter(), time.process_time())
    if cell.geometry == COSINE:
        model, training = ScoringModel(name=COSINE, prompt_template=study.recipe.prompt_template), {}
    elif cell.geometry == PROBE:
        return _finish(study, data, cell, out, started, *_probe(data, cell))
    else:
        model, training = _train(study, data, cell, out)
    train_seconds = (time.perf_counter() - started[0], time.process_time() - started[1])
    scores, block = score_model(model, data, study.recipe)
    return _finish(study, data, cell, out, started, scores, {**block, **training}, train_seconds)


def _train(study: StudyConfig, data: StudyData, cell: Cell, out: Path) -> tuple[ScoringModel, dict]:
    cfg = cell_config(study.recipe, cell, out, data.embed_dim)
    rows = data.fraction_rows(cell.fraction, cell.seed)
    extra = {"class_names": data.class_names, "study_cell": cell.to_dict(),
             "holdout_classes": data.extra.get("holdout_classes", []),
             "data": {"clips": len(rows) + len(data.val), "train_clips": len(rows), "val_clips": len(data.val)}}
    training = TrainingData(data.clips, data.prompts, Split(rows, list(data.val)), seen=data.seen,
                            hierarchy=data.hierarchy, extra=extra)
    summary = fit(cfg, training, out)
    history = summary_history(out)
    model = load_projection(summary["best_checkpoint"], name=cell.key)
    return model, {"checkpoint": summary["best_checkpoint"], "train_clips": len(rows),
                   "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                   "best_val_mAP": summary["best_val_mAP"], **epoch_stability(history, summary["best_epoch"])}


def summary_history(out: Path) -> list[dict]:
    return json.loads((out / "setup.json").read_text())["history"]


def epoch_stability(history: list[dict], best_epoch: int) -> dict:
    """Per epoch, the fraction of the validation audio and prompts on the clip sphere (hyperbolic
    runs); the largest jump between consecutive epochs; whether the selected epoch is parked."""
    audio = [row.get("val_audio_on_clip_sphere") for row in history]
    if not audio or audio[0] is None:
        return {"on_clip_sphere_by_epoch": None, "on_clip_sphere_max_jump": None, "selected_epoch_parked": None}
    jumps = [abs(b - a) for a, b in zip(audio, audio[1:])]
    return {"on_clip_sphere_by_epoch": {"audio": audio, "text": [row["val_text_on_clip_sphere"] for row in history],
                                        "val_mAP": [row["val_mAP"] for row in history]},
            "on_clip_sphere_max_jump": max(jumps) if jumps else 0.0,
            "selected_epoch_parked": bool(audio[best_epoch - 1] >= PARKED)}


def score_model(model: ScoringModel, data: StudyData, recipe: TrainConfig) -> tuple[np.ndarray, dict]:
    """(N_eval, C) scores of ``model`` and its figures: metrics, ball usage, and with an ontology
    mistake severity, norm-vs-depth correlation and the entailment-cone fractions."""
    audio_pts = model.project(data.eval_clips.audio)
    text_pts = model.project(data.prompts[:data.num_classes])
    scores = model.score_points(audio_pts, text_pts)
    targets = data.eval_targets()
    metrics = classification_metrics(scores, targets)
    block = {"metrics": {k: metrics[k] for k in METRICS}, "ball_usage": _usage(model, audio_pts, text_pts, scores)}
    if data.hierarchy is not None:
        block["hierarchy"] = _hierarchy(model, data, recipe, audio_pts, text_pts, scores, targets)
    return scores, block


def _usage(model, audio_pts, text_pts, scores) -> dict | None:
    usage = usage_block(model, audio_pts, text_pts, scores)
    if usage is None:
        return None
    return {"audio_on_clip_sphere": usage["audio"]["on_clip_sphere"],
            "text_on_clip_sphere": usage["text"]["on_clip_sphere"],
            "audio_radius_median": usage["audio"]["relative_radius"]["median"],
            "text_radius_median": usage["text"]["relative_radius"]["median"],
            "top1_same_as_cosine": usage["top1_same_as_cosine"],
            "rank_corr_with_cosine": usage["rank_corr_with_cosine"]}


def _hierarchy(model, data: StudyData, recipe: TrainConfig, audio_pts, text_pts, scores, targets) -> dict:
    hier = HierarchyContext(Ontology.load(recipe.ontology), data.hierarchy)
    prompt_pts = model.project(data.prompts)
    clip_labels = data.hierarchy.training_labels(data.eval_clips.label_indices)
    cones = cone_block(model, prompt_pts, audio_pts, clip_labels, hier)
    block = hierarchy_block(model, audio_pts, text_pts, scores, targets, hier, data.class_names, cones)
    rho = (cones.get("norm_depth") or {}).get("rho")
    return {"mistake_severity": block["mistake_severity"], "hier_dist@5": block["hier_dist@5"],
            "prompt_pairs_in_cone": cones.get("prompt_pairs_in_cone"),
            "clip_label_pairs_in_cone": cones.get("clip_label_pairs_in_cone"),
            "norm_depth_rho": rho, "cone_K": cones.get("K"), "prompt_pairs": cones.get("prompt_pairs")}


def _probe(data: StudyData, cell: Cell):
    """The linear-probe ceiling of a (fraction, seed): (scores, block, train seconds)."""
    from hyperbolic.evaluation.probe import linear_probe  # the supervised ceiling (hyperbolic.evaluation.probe)
    started = (time.perf_counter(), time.process_time())
    rows = data.fraction_rows(cell.fraction, cell.seed)
    train = data.clips.subset(rows)
    classes = data.seen if data.seen is not None else list(range(data.num_classes))
    scores = np.asarray(linear_probe(train.audio, train.targets(data.num_classes), data.eval_clips.audio,
                                     classes=classes), dtype=np.float32)
    seconds = (time.perf_counter() - started[0], time.process_time() - started[1])
    metrics = classification_metrics(scores, data.eval_targets())
    return scores, {"metrics": {k: metrics[k] for k in METRICS}, "train_clips": len(rows)}, seconds


def _finish(study: StudyConfig, data: StudyData, cell: Cell, out: Path, started: tuple[float, float],
            scores: np.ndarray, block: dict, train_seconds: tuple[float, float]) -> dict:
    """Bootstrap the cell's scores, write bootstrap.npz, then cell.json (last: the cell is done).
    Times are (wall, CPU of this process) pairs; on a shared machine the CPU time is the cost."""
    boot_start = time.perf_counter(), time.process_time()
    samples = bootstrap_samples(scores, data.eval_targets(), n=study.bootstrap, seed=study.bootstrap_seed)
    buffer = io.BytesIO()
    np.savez(buffer, **{k.replace("@", "_at_"): v for k, v in samples.items()})
    atomic_write_bytes(out / BOOTSTRAP_FILE, buffer.getvalue())
    record = {**cell.to_dict(), "key": cell.key, **block,
              "bootstrap": {"n": study.bootstrap, "seed": study.bootstrap_seed, "file": BOOTSTRAP_FILE},
              "seconds": {"train": round(train_seconds[0], 3),
                          "bootstrap": round(time.perf_counter() - boot_start[0], 3),
                          "total": round(time.perf_counter() - started[0], 3)},
              "cpu_seconds": {"train": round(train_seconds[1], 3),
                              "bootstrap": round(time.process_time() - boot_start[1], 3),
                              "total": round(time.process_time() - started[1], 3)},
              "eval_clips": len(data.eval_clips)}
    atomic_write_json(out / CELL_FILE, record)
    return record


def read_samples(root: Path, record: dict) -> dict[str, np.ndarray]:
    """The bootstrap samples of a finished cell: ``{"mAP": (n,), "acc@1": (n,)}``."""
    with np.load(Path(root) / "cells" / record["key"] / record["bootstrap"]["file"]) as z:
        return {k.replace("_at_", "@"): z[k] for k in z.files}
