"""Zero-shot evaluation: plain CLAP (cosine) and trained projectors on the same clips.

Data flow: parquet -> CLAP clip embeddings (once) -> per model: project -> (N, C) scores ->
metrics -> results JSON. Clips without a known label get predictions but stay out of metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher, load_class_labels
from hyperbolic.clap import FrozenClap, resolve_device
from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE, EvalConfig
from hyperbolic.embeddings import embed_clips, embed_prompts, prompts_for
from hyperbolic.metrics import classification_metrics, per_class_ap
from hyperbolic.outputs import atomic_write_json, unique_path
from hyperbolic.projector import Projector, similarity

log = logging.getLogger(__name__)

SCORE_CHUNK = 4096  # clips scored at a time: bounds memory at SCORE_CHUNK x C floats per step


class CheckpointError(ValueError):
    """A projection checkpoint that is missing, unreadable or does not fit the CLAP model."""


@dataclass
class ScoringModel:
    """How to turn CLAP embeddings into class scores: cosine, or projector + geometry."""

    name: str
    prompt_template: str
    projector: Projector | None = None
    geometry: str = "cosine"
    c: float | None = None
    temperature: float | None = None
    legacy_distance: bool = False
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def scores(self, audio: torch.Tensor, text: torch.Tensor) -> np.ndarray:
        """(N, D) audio and (C, D) prompt embeddings -> (N, C) float32 scores, chunked over N."""
        if self.projector is None:
            return np.concatenate([(audio[i:i + SCORE_CHUNK] @ text.T).numpy()
                                   for i in range(0, len(audio), SCORE_CHUNK)] or [np.empty((0, len(text)))])
        t = self.projector(text, c=self.c)
        parts = [similarity(self.projector(audio[i:i + SCORE_CHUNK], c=self.c), t, geometry=self.geometry,
                            c=self.c, temperature=self.temperature, legacy_distance=self.legacy_distance).numpy()
                 for i in range(0, len(audio), SCORE_CHUNK)]
        return np.concatenate(parts) if parts else np.empty((0, len(text)), dtype=np.float32)


def load_projection(path: str | Path, *, embed_dim: int | None = None, c_flag: float | None = None,
                    temperature_flag: float | None = None, legacy_distance: bool = False) -> ScoringModel:
    """Read a checkpoint written by train_hyperbolic_clap.py (or by the earlier public scripts).

    c, temperature, geometry and prompt template come from the checkpoint; a differing flag is
    reported in ``info["ignored_flags"]``, never silently used.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--projection-checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointError(f"--projection-checkpoint {path} is not a readable torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "projection_state_dict" not in ckpt:
        raise CheckpointError(f"--projection-checkpoint {path} has no 'projection_state_dict'; "
                              "is it a projection checkpoint from train_hyperbolic_clap.py?")
    state = ckpt["projection_state_dict"]
    weight = state.get("linear.weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise CheckpointError(f"{path}: projection_state_dict has no square 'linear.weight'")
    dim = weight.shape[1]
    if embed_dim is not None and dim != embed_dim:
        raise CheckpointError(f"{path}: projector expects {dim}-d embeddings but the CLAP model gives "
                              f"{embed_dim}-d; use the checkpoint trained on this CLAP model")
    legacy_format = "config" not in ckpt
    geometry = ckpt.get("geometry", "hyperbolic")
    projector = Projector(dim, geometry=geometry, clip_r=ckpt.get("clip_r", 0.9))
    projector.load_state_dict(state)
    projector.eval()
    c = float(ckpt.get("c", 1.0 if c_flag is None else c_flag))
    temperature = float(ckpt.get("temperature", 1.0 if temperature_flag is None else temperature_flag))
    ignored = {}
    if c_flag is not None and not np.isclose(c_flag, c):
        ignored["c"] = c_flag
    if temperature_flag is not None and not np.isclose(temperature_flag, temperature):
        ignored["temperature"] = temperature_flag
    for flag, value in ignored.items():
        log.warning("--%s %s differs from the checkpoint's %s=%s; using the checkpoint's value",
                    flag, value, flag, {"c": c, "temperature": temperature}[flag])
    info = {"projection_checkpoint": str(path), "epoch": ckpt.get("epoch"), "geometry": geometry,
            "c": c, "temperature": temperature, "clip_r": projector.clip_r, "embed_dim": dim,
            "checkpoint_format": "legacy (no config)" if legacy_format else ckpt.get("format_version"),
            "legacy_distance": legacy_distance, "ignored_flags": ignored}
    return ScoringModel(name=path.stem, prompt_template=ckpt.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
                        projector=projector, geometry=geometry, c=c, temperature=temperature,
                        legacy_distance=legacy_distance, info=info)


def _predictions(scores, clips, class_names, top_k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    out = []
    for i, meta in enumerate(clips.metas):
        out.append({
            "sample_id": i, "video_id": meta.video_id, "file": meta.file, "row": meta.row,
            "predicted_top1": class_names[order[i, 0]],
            "top_k_predictions": [{"rank": r + 1, "classname": class_names[k], "similarity": float(scores[i, k])}
                                  for r, k in enumerate(order[i])],
            "ground_truth_human_labels": clips.raw_labels[i],
            "ground_truth_indices": clips.label_indices[i],
        })
    return out


def _model_block(model: ScoringModel, scores, targets, labelled, clips, class_names, cfg, model_path,
                 rows_read):
    metrics = classification_metrics(scores[labelled], targets[labelled], set_k=cfg.set_k,
                                     threshold=cfg.threshold) if labelled.any() else None
    if metrics is not None:
        metrics.update(valid_samples=int(labelled.sum()), total_samples=rows_read)
    hyperbolic = model.projector is not None and model.geometry == "hyperbolic"
    model_info = {"model_type": "hyperbolic_clap_modelscope" if hyperbolic else (
                      "euclidean_projection_clap_modelscope" if model.projector is not None else "modelscope"),
                  "model_path": model_path, "use_hyperbolic": hyperbolic,
                  "prompt_template": model.prompt_template, **model.info}
    model_info.setdefault("projection_checkpoint", None)
    model_info.setdefault("c", None)
    model_info.setdefault("temperature", None)
    return {
        "model_info": model_info,
        "similarity_stats": {"min": float(scores.min()), "max": float(scores.max()),
                             "mean": float(scores.mean()), "std": float(scores.std())},
        "metrics": metrics,
        "per_class": per_class_ap(scores[labelled], targets[labelled], class_names) if labelled.any() else [],
        "predictions": _predictions(scores, clips, class_names, cfg.top_k),
    }


def evaluate(cfg: EvalConfig, models: list[ScoringModel] | None = None) -> tuple[dict, Path]:
    """Evaluate every model on the same clips; write the results JSON; return (results, path)."""
    device = resolve_device(cfg.device)
    class_names = load_class_labels(cfg.class_labels)
    matcher = LabelMatcher(class_names)
    clap = FrozenClap.load(cfg.checkpoint, device)
    if models is None:
        models = build_models(cfg, clap.embed_dim)
    skips = SkipLog()
    clips = embed_clips(clap, cfg.parquet_dir, matcher=matcher, skips=skips, label_column=cfg.label_column,
                        limit=cfg.num_samples, batch_size=cfg.embed_batch_size, require_labels=False)
    if len(clips) == 0:
        raise ValueError(f"no clip of {cfg.parquet_dir} could be read (skipped: {skips.to_dict()})")
    rows_read = len(clips) + skips.rows_skipped()
    targets = clips.targets(len(class_names))
    labelled = targets.any(axis=1)
    prompt_cache: dict[str, torch.Tensor] = {}
    blocks = []
    for model in models:
        template = model.prompt_template
        if template not in prompt_cache:
            prompt_cache[template] = embed_prompts(clap, prompts_for(class_names, template))
        scores = model.scores(clips.audio, prompt_cache[template])
        blocks.append((model, _model_block(model, scores, targets, labelled, clips, class_names, cfg,
                                           str(clap.path), rows_read)))
    test_info = {"timestamp": datetime.now().isoformat(), "parquet_dir": str(cfg.parquet_dir),
                 "num_samples": cfg.num_samples, "device": str(device), "model_path": str(clap.path),
                 "class_labels": str(cfg.class_labels), "num_classes": len(class_names),
                 "clips_read": rows_read, "clips_embedded": len(clips),
                 "clips_with_known_label": int(labelled.sum())}
    data_quality = {"skipped": skips.to_dict(), "unknown_labels": skips.unknown_labels_list()}
    if len(blocks) == 1:
        results = {"test_info": test_info, **blocks[0][1], **data_quality}
    else:
        results = {"test_info": test_info, "models": {m.name: block for m, block in blocks}, **data_quality}
    path = unique_path(cfg.output_json or Path(cfg.result_dir) /
                       f"clap_modelscope_results_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json")
    atomic_write_json(path, results)
    return results, path


def build_models(cfg: EvalConfig, embed_dim: int) -> list[ScoringModel]:
    plain = ScoringModel(name="clap_cosine", prompt_template=cfg.prompt_template or DEFAULT_PROMPT_TEMPLATE)
    if not cfg.use_hyperbolic:
        return [plain]
    return [load_projection(cfg.projection_checkpoint, embed_dim=embed_dim, c_flag=cfg.c,
                            temperature_flag=cfg.temperature, legacy_distance=cfg.legacy_distance)]


def format_metrics_table(results: dict) -> str:
    """Side-by-side metrics of every model block, one row per metric."""
    blocks = results.get("models") or {results["model_info"]["model_type"]: results}
    names = list(blocks)
    keys = ["mAP", "mAUC", "d_prime", "map", "acc@1", "acc@3", "acc@5", "acc@10", "precision_micro",
            "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro", "valid_samples",
            "total_samples"]
    width = max(14, *(len(n) for n in names))
    lines = [f"{'metric':<16}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for key in keys:
        row = []
        for n in names:
            value = (blocks[n]["metrics"] or {}).get(key)
            row.append("-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
        lines.append(f"{key:<16}" + "".join(f"{v:>{width + 2}}" for v in row))
    return "\n".join(lines)
