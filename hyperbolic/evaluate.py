"""Zero-shot evaluation: plain CLAP (cosine) and trained projectors on the same clips.

Data flow: parquet -> CLAP clip embeddings (once) -> per model: project -> (N, C) scores ->
metrics -> results JSON (+ optional score matrices and plots). Clips without a known label get
predictions but stay out of every metric.

Which models run (``plan_models``):

- no projection checkpoint: plain CLAP alone, single-model layout;
- ``use_hyperbolic`` with exactly one checkpoint: that projector alone, single-model layout
  (what the earlier scripts' ``--use-hyperbolic`` did);
- otherwise (one checkpoint without ``use_hyperbolic``, or several checkpoints with or without
  it): a comparison of plain CLAP and every checkpoint, one block per model under "models".

Every model sees exactly the same clips, class names and bootstrap resamples.

Ground truth: a clip's labels that match a class. With ``expand_ancestors`` (needs an ontology)
it is closed under the ontology's ancestry (``expand_to_ancestors``) for the whole run: every
metric, per-class AP, bootstrap, hierarchy block and the npz targets use the same matrix, named
in ``test_info.ground_truth``; the set of labelled clips does not change. One ground truth per
file keeps every number of it comparable; run twice for both.

With an ontology, each model gets a ``hierarchy`` block (``hyperbolic.eval_hierarchy``).
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data.audio import segmenting_from
from data.audioset import SkipLog, count_rows
from data.errors import DatasetError
from data.class_list import FROM_DATA, resolve_class_names
from data.labels import LabelMatcher, load_class_ids
from hyperbolic import legacy
from hyperbolic.checkpoint import read_projection, resolve_checkpoint
from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE, EvalConfig
from hyperbolic.embeddings import (PROMPT_NAME_RULE, duration_report, embed_clips, embed_prompts, open_cache, open_clap,
                                   prompts_for)
from hyperbolic.entailment import DEFAULT_K
from hyperbolic.eval_hierarchy import HIER_K, HierarchyContext, cone_block, expand_to_ancestors, hierarchy_block
from hyperbolic.metrics import (
    bootstrap_ci,
    bootstrap_difference,
    bootstrap_samples,
    classification_metrics,
    legacy_set_metrics,
    per_class_ap,
    retrieval_metrics,
)
from hyperbolic.ontology import Ontology
from hyperbolic.outputs import atomic_write_bytes, atomic_write_json, unique_path
from hyperbolic.ball_usage import ball_usage
from hyperbolic.projector import Projector, effective_temperature, similarity

log = logging.getLogger(__name__)

SCORE_CHUNK = 4096  # clips scored at a time: bounds memory at SCORE_CHUNK x C floats per step
PLAIN_MODEL_NAME = "clap_cosine"
EXCLUDED_EXAMPLES = 5

PROJECTION_TEXT = {
    "cosine": "none: CLAP embeddings (unit vectors), cosine similarity",
    "euclidean": "linear, then L2-normalised; score <a, t> / tau",
    "hyperbolic": "linear, tangent norm clipped to clip_r of the ball radius, expmap0",
    "legacy": "earlier scripts: expmap0(linear(x)), then rescaled to |y| <= 0.9 (absolute)",
}
DISTANCE_TEXT = {
    "geodesic": "score -d_c(a, t) / tau, d_c the geodesic distance of the ball of curvature -c",
    "legacy": "earlier scripts: score -arcosh(1 + 2|a-t|^2 / ((1-|a|^2)(1-|t|^2))) / sqrt(c) / tau; "
              "c missing inside the fraction, so wrong geometry for c != 1",
}
BOOTSTRAP_NOTE = (
    "Percentile bootstrap over the labelled clips; every model uses the same resamples (same seed). "
    "A clip drawn m times counts m times but its copies do not rank against each other "
    "(metrics.bootstrap_samples), which removes the upward bias of resampled mAP that copies tied "
    "with each other gave. vs_clap_cosine: this model minus plain CLAP on each shared resample "
    "(paired), diff the difference of the point estimates."
)


@dataclass
class ScoringModel:
    """How to turn CLAP embeddings into class scores: cosine, or projector + geometry."""

    name: str
    prompt_template: str
    projector: Projector | None = None
    geometry: str = "cosine"
    c: float | None = None
    temperature: float | None = None
    legacy_distance: bool = False  # with it, the legacy projection too (hyperbolic.legacy.project)
    info: dict = field(default_factory=dict)
    entailment_k: float = DEFAULT_K  # cone aperture K for the --ontology cone numbers (hyperbolic only)

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) CLAP embeddings -> (N, D) points the scores are computed from."""
        if self.projector is None:
            return x.float()
        parts = [legacy.project(self.projector, x[i:i + SCORE_CHUNK], c=self.c) if self.legacy_distance
                 else self.projector(x[i:i + SCORE_CHUNK], c=self.c) for i in range(0, len(x), SCORE_CHUNK)]
        return torch.cat(parts) if parts else x.new_empty(0, x.shape[1])

    @torch.no_grad()
    def score_points(self, a: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        """(N, D) projected audio and (C, D) projected prompts -> (N, C) float32 scores."""
        parts = []
        for i in range(0, len(a), SCORE_CHUNK):
            chunk = a[i:i + SCORE_CHUNK]
            if self.projector is None:
                parts.append((chunk @ t.T).numpy())
            else:
                parts.append(similarity(chunk, t, geometry=self.geometry, c=self.c,
                                        temperature=self.temperature,
                                        legacy_distance=self.legacy_distance).numpy())
        return np.concatenate(parts) if parts else np.empty((0, len(t)), dtype=np.float32)

    def scores(self, audio: torch.Tensor, text: torch.Tensor) -> np.ndarray:
        """(N, D) audio and (C, D) prompt CLAP embeddings -> (N, C) float32 scores."""
        return self.score_points(self.project(audio), self.project(text))


def load_projection(path: str | Path, *, embed_dim: int | None = None, c_flag: float | None = None,
                    temperature_flag: float | None = None, legacy_distance: bool = False,
                    prompt_template_flag: str | None = None, name: str | None = None) -> ScoringModel:
    """Read a checkpoint written by train_hyperbolic_clap.py, or by the earlier public scripts.

    Earlier scripts' checkpoints have ``epoch``, ``projection_state_dict`` (``linear.weight``,
    ``linear.bias``), ``optimizer_state_dict``, ``train_loss``, ``val_loss``, ``c``,
    ``temperature``, ``embed_dim`` and no ``config``. c, temperature, geometry and prompt
    template come from the checkpoint; a differing flag is reported in
    ``info["ignored_flags"]``, never silently used. A checkpoint without a prompt template
    (the earlier scripts') takes ``prompt_template_flag``, else the default.
    ``legacy_distance`` (hyperbolic checkpoints only) selects the earlier scripts' projection
    and distance, to reproduce their numbers.
    """
    read = read_projection(path, embed_dim=embed_dim, c_default=1.0 if c_flag is None else c_flag,
                           temperature_default=1.0 if temperature_flag is None else temperature_flag)
    path, ckpt, projector, geometry = read.path, read.raw, read.projector, read.geometry
    c, temperature, dim, legacy_format = read.c, read.temperature, read.embed_dim, read.legacy_format
    ignored: dict = {}
    if c_flag is not None and not np.isclose(c_flag, c):
        ignored["c"] = c_flag
    if temperature_flag is not None and not np.isclose(temperature_flag, temperature):
        ignored["temperature"] = temperature_flag
    if "prompt_template" in ckpt:
        template, template_source = ckpt["prompt_template"], "checkpoint"
        if prompt_template_flag is not None and prompt_template_flag != template:
            ignored["prompt_template"] = prompt_template_flag
    elif prompt_template_flag is not None:
        template, template_source = prompt_template_flag, "--prompt-template"
    else:
        template, template_source = DEFAULT_PROMPT_TEMPLATE, "default"
    if legacy_distance and geometry != "hyperbolic":
        ignored["legacy_distance"] = True
        legacy_distance = False
    config = read.config
    # The cones are measured with the K the run trained with (train.py stores it in "config");
    # a run without an entailment term, or an earlier checkpoint, is measured at the default.
    if read.entailment_k is not None:
        entailment_k, k_source = read.entailment_k, "checkpoint config entailment_k"
    else:
        entailment_k, k_source = DEFAULT_K, "default (hyperbolic.entailment.DEFAULT_K)"
    for flag, value in ignored.items():
        log.warning("%s: --%s %s does not apply to this checkpoint (it has %s); ignored", path.name,
                    flag.replace("_", "-"), value,
                    {"c": c, "temperature": temperature, "prompt_template": f'"{template}"',
                     "legacy_distance": f"geometry {geometry}"}[flag])
    info = {"projection_checkpoint": str(path), "epoch": ckpt.get("epoch"), "geometry": geometry,
            "c": c, "temperature": temperature,
            "effective_temperature": effective_temperature(c, temperature) if geometry == "hyperbolic" else None,
            "clip_r": projector.clip_r, "embed_dim": dim,
            "checkpoint_format": read.format,
            "prompt_template_source": template_source, "legacy_distance": legacy_distance,
            "projection": PROJECTION_TEXT["legacy" if legacy_distance else geometry],
            "distance": (DISTANCE_TEXT["legacy" if legacy_distance else "geodesic"]
                         if geometry == "hyperbolic" else "cosine of unit vectors / tau"),
            "ignored_flags": ignored, "holdout_classes": list(ckpt.get("holdout_classes") or []),
            "entailment_k": entailment_k, "entailment_k_source": k_source,
            "training_hierarchy": {k: config.get(k) for k in ("ontology", "entailment_weight", "expand_ancestors")}
            if config else None}
    if legacy_format and geometry == "hyperbolic" and not legacy_distance:
        info["note"] = ("checkpoint of the earlier scripts, scored with this codebase's projection and "
                        "geodesic distance; --legacy-distance reproduces the earlier scripts' numbers")
        log.warning("%s: %s", path.name, info["note"])
    return ScoringModel(name=name or path.stem, prompt_template=template, projector=projector,
                        geometry=geometry, c=c, temperature=temperature, legacy_distance=legacy_distance,
                        info=info, entailment_k=entailment_k)


# ------------------------------------------------------------------------------ planning

def checkpoint_paths(cfg: EvalConfig) -> list[str]:
    """The checkpoints of ``--projection-checkpoint``, in the order given."""
    return list(cfg.projection_checkpoints)


def plan_models(cfg: EvalConfig) -> tuple[str, bool]:
    """``("single" | "comparison", include plain CLAP)``; see the module docstring."""
    paths = checkpoint_paths(cfg)
    if not paths:
        return "single", True
    if cfg.use_hyperbolic and len(paths) == 1:
        return "single", False
    return "comparison", True


def _safe_name(text: str) -> str:
    """A name usable as a JSON key, an npz key and in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def model_names(paths: list[str], *, reserved: tuple[str, ...] = (PLAIN_MODEL_NAME,)) -> list[str]:
    """Unique names for checkpoints: the file stem; when stems clash, ``<folder>-<stem>``;
    when those clash too, ``_2``, ``_3``, ... in order. ``reserved`` names are never used."""
    stems = [_safe_name(Path(p).stem) for p in paths]
    counts = Counter(stems)
    names = [_safe_name(f"{Path(p).resolve().parent.name}-{s}") if counts[s] > 1 or s in reserved else s
             for p, s in zip(paths, stems)]
    taken = set(reserved)
    out = []
    for n in names:
        candidate, k = n, 1
        while candidate in taken:
            k += 1
            candidate = f"{n}_{k}"
        taken.add(candidate)
        out.append(candidate)
    return out


def build_models(cfg: EvalConfig, embed_dim: int) -> list[ScoringModel]:
    """The models of ``plan_models``, plain CLAP first; every checkpoint is read and checked."""
    _, with_plain = plan_models(cfg)
    paths = [str(resolve_checkpoint(p)) for p in checkpoint_paths(cfg)]
    models = []
    if with_plain:
        models.append(ScoringModel(name=PLAIN_MODEL_NAME,
                                   prompt_template=cfg.prompt_template or DEFAULT_PROMPT_TEMPLATE,
                                   info={"projection": PROJECTION_TEXT["cosine"], "distance": "cosine",
                                         "legacy_distance": False}))
    for path, name in zip(paths, model_names(paths)):
        models.append(load_projection(path, embed_dim=embed_dim, c_flag=cfg.c, temperature_flag=cfg.temperature,
                                      legacy_distance=cfg.legacy_distance,
                                      prompt_template_flag=cfg.prompt_template, name=name))
    return models


# ------------------------------------------------------------------------------- blocks

GROUND_TRUTH_TEXT = {
    "labels": "the clip's labels that match a class",
    "labels+ancestors": "the clip's labels that match a class, plus every class above one of them in --ontology "
                        "(--expand-ancestors); used by every metric of this file and by the --save-scores targets",
}


def _predictions(scores, clips, class_names, top_k, expanded=None):
    """Top-k per clip with its ground truth; ``expanded`` (N, C) bool: the ancestor-closed
    ground truth, listed as ``ground_truth_indices_with_ancestors``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    out = []
    for i, meta in enumerate(clips.metas):
        extra = ({} if expanded is None else
                 {"ground_truth_indices_with_ancestors": np.flatnonzero(expanded[i]).tolist()})
        out.append({
            "sample_id": i, "video_id": meta.video_id, "file": meta.file, "row": meta.row,
            "predicted_top1": class_names[order[i, 0]],
            "top_k_predictions": [{"rank": r + 1, "classname": class_names[k], "similarity": float(scores[i, k])}
                                  for r, k in enumerate(order[i])],
            "ground_truth_human_labels": clips.raw_labels[i],
            "ground_truth_indices": clips.label_indices[i],
            **extra,
        })
    return out


def _metrics(scores, targets, cfg: EvalConfig, rows_read: int) -> dict:
    metrics = classification_metrics(scores, targets, set_k=cfg.set_k, threshold=cfg.threshold)
    metrics.update(retrieval_metrics(scores, targets))
    metrics.update(valid_samples=len(scores), total_samples=rows_read)
    return metrics


def _holdout_metrics(model: ScoringModel, scores, targets, class_names, cfg: EvalConfig, rows_read: int):
    """Metrics on the classes a checkpoint saw in training and on those it held out.

    Each part uses only its own score columns (ranking among that subset of classes) and the
    clips with at least one label in it."""
    held = {name.casefold() for name in model.info.get("holdout_classes", [])}
    if not held:
        return None
    out = {"holdout_classes": sorted(model.info["holdout_classes"])}
    unseen = np.array([name.casefold() in held for name in class_names])
    for part, cols in (("seen", ~unseen), ("unseen", unseen)):
        rows = targets[:, cols].any(axis=1)
        out[part] = (_metrics(scores[rows][:, cols], targets[rows][:, cols], cfg, rows_read)
                     if rows.any() else None)
    return out


def _bootstrap(scores, targets, metrics, cfg: EvalConfig) -> tuple[dict, dict]:
    """The model's bootstrap block and its per-resample values (for the paired differences)."""
    samples = bootstrap_samples(scores, targets, n=cfg.bootstrap, seed=cfg.bootstrap_seed)
    ci = bootstrap_ci(scores, targets, n=cfg.bootstrap, seed=cfg.bootstrap_seed, samples=samples)
    for key in ("mAP", "acc@1"):
        point = metrics[key]
        ci[key].update(point=point, contains_point=bool(ci[key]["low"] <= point <= ci[key]["high"]))
    ci["note"] = BOOTSTRAP_NOTE
    return ci, samples


def _paired_with_plain(blocks: dict[str, dict], samples: dict[str, dict]) -> None:
    """Add ``bootstrap.vs_clap_cosine`` to every other model's block when plain CLAP ran."""
    if PLAIN_MODEL_NAME not in samples:
        return
    plain = blocks[PLAIN_MODEL_NAME]["metrics"]
    for name, own in samples.items():
        if name != PLAIN_MODEL_NAME:
            blocks[name]["bootstrap"][f"vs_{PLAIN_MODEL_NAME}"] = bootstrap_difference(
                own, samples[PLAIN_MODEL_NAME], blocks[name]["metrics"], plain)


def _ball_usage(model: ScoringModel, audio_pts, text_pts, scores) -> dict | None:
    """``ball_usage.ball_usage`` of a hyperbolic model over every embedded clip (None otherwise).
    The clip sphere is ``clip_r`` of the radius, or for ``--legacy-distance`` the earlier scripts'
    absolute 0.9 (relative ``0.9 sqrt(c)``, no clip where that is >= 1)."""
    if model.projector is None or model.geometry != "hyperbolic":
        return None
    clip = legacy.MAX_NORM * model.c ** 0.5 if model.legacy_distance else model.projector.clip_r
    return ball_usage(audio_pts, text_pts, scores, c=model.c, clip_radius=clip)


def _model_info(model: ScoringModel, model_path: str) -> dict:
    hyperbolic = model.projector is not None and model.geometry == "hyperbolic"
    info = {"name": model.name,
            "model_type": "hyperbolic_clap_modelscope" if hyperbolic else (
                "euclidean_projection_clap_modelscope" if model.projector is not None else "modelscope"),
            "model_path": model_path, "use_hyperbolic": hyperbolic, "prompt_template": model.prompt_template,
            "prompt_label_rule": PROMPT_NAME_RULE,
            **model.info}
    for key in ("projection_checkpoint", "c", "temperature", "effective_temperature"):
        info.setdefault(key, None)
    return info


# ------------------------------------------------------------------------------ outputs

def save_scores(path: Path, score_sets: dict[str, np.ndarray], targets: np.ndarray, labelled: np.ndarray,
                class_names: list[str], clips) -> Path:
    """Write the npz: ``scores_<name>`` (N, C) float32 per model, ``model_names``, ``targets``
    (N, C) bool, ``labelled`` (N,) bool (rows that enter the metrics), ``class_names`` (C,),
    ``clip_file``, ``clip_row``, ``clip_video_id`` (N,). Rows are the embedded clips in reading order."""
    arrays = {f"scores_{name}": s for name, s in score_sets.items()}
    arrays.update(model_names=np.array(list(score_sets), dtype=str), targets=targets, labelled=labelled,
                  class_names=np.array(class_names, dtype=str),
                  clip_file=np.array([m.file for m in clips.metas], dtype=str),
                  clip_row=np.array([m.row for m in clips.metas], dtype=np.int64),
                  clip_video_id=np.array([m.video_id for m in clips.metas], dtype=str))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


PLOT_CLIPS_MAX = 5000  # clips drawn (faintly) on the disk: the first ones, enough to see where they sit


def _plots(json_path: Path, model: ScoringModel, block: dict, text_pts, class_names, hier,
           audio_pts=None, targets=None) -> dict:
    """``audio_pts`` (N, D) and ``targets`` (N, C): the labelled clips' points and ground truth
    (chance levels, label choice, the clips on the disk)."""
    from hyperbolic import plots  # matplotlib is imported only when plots are asked for
    written: dict = {}
    num_clips = None if targets is None else len(targets)
    if block["per_class"]:
        written["per_class_ap"] = str(plots.plot_per_class_ap(
            block["per_class"], unique_path(json_path.with_name(f"{json_path.stem}_{model.name}_per_class_ap.png")),
            title=f"{model.name}: per-class AP", num_clips=num_clips))
    if model.projector is not None and model.geometry == "hyperbolic":
        categories = edges = None
        if hier is not None:
            categories = [None if v is None else hier.ontology.name(hier.ontology.top_level(v)[0])
                          for v in hier.node_ids]
            edges = [tuple(p) for p in hier.hierarchy.edges(range(len(class_names))).tolist()]
        clips = None if audio_pts is None else audio_pts[:PLOT_CLIPS_MAX]
        xy, audio_xy = plots.disk_layout(text_pts, c=model.c, others=clips) if clips is not None else (
            plots.disk_layout(text_pts, c=model.c), None)
        held = {n.casefold() for n in model.info.get("holdout_classes", [])}
        written["poincare_disk"] = str(plots.plot_poincare_disk(
            xy, unique_path(json_path.with_name(f"{json_path.stem}_{model.name}_poincare.png")),
            c=model.c, names=class_names, categories=categories, edges=edges, audio_xy=audio_xy,
            held_out=[i for i, n in enumerate(class_names) if n.casefold() in held],
            counts=None if targets is None else targets.sum(axis=0).tolist(),
            title=f"{model.name}: class prompts and clips (c={model.c:.3g})"))
    else:
        written["poincare_disk"] = None
        written["poincare_disk_skipped"] = "not a hyperbolic model"
    return written


def _excluded(clips, labelled) -> dict:
    rows = np.flatnonzero(~labelled)
    return {"count": int(len(rows)), "reason": "no label of the row matches a class",
            "examples": [{"file": clips.metas[i].file, "row": clips.metas[i].row,
                          "video_id": clips.metas[i].video_id, "labels": clips.raw_labels[i]}
                         for i in rows[:EXCLUDED_EXAMPLES]]}


# ----------------------------------------------------------------------------- evaluate

def _rows_rule(num_samples: int | None, used: int, held: int, folder) -> str:
    """How many of the folder's rows were scored, and by which rule; logged when some were not."""
    if num_samples is None:
        rule = f"every row (--num-samples all): {used} of the {held} rows in the folder"
    else:
        rule = f"the first {num_samples} rows (--num-samples {num_samples}): {used} of the {held} rows in the folder"
    if num_samples is not None and used < held:
        log.info("scored the first %d of the %d rows in %s (--num-samples %d); --num-samples all scores "
                 "every row", used, held, folder, num_samples)
    return rule


def evaluate(cfg: EvalConfig, models: list[ScoringModel] | None = None) -> tuple[dict, Path]:
    """Evaluate every model on the same clips; write the results JSON (and the npz and plots
    when asked); return (results, path). With ``cfg.text_column``: caption retrieval instead
    (``hyperbolic.retrieval``)."""
    if cfg.text_column:
        from hyperbolic.retrieval import evaluate_captions
        return evaluate_captions(cfg, models)
    class_names = resolve_class_names(cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column,
                                      limit=cfg.num_samples)
    matcher = LabelMatcher(class_names, load_class_ids(cfg.class_labels, class_names))
    if cfg.expand_ancestors and not cfg.ontology:
        raise ValueError("expand_ancestors needs an ontology (--expand-ancestors needs --ontology PATH)")
    hier = (HierarchyContext.build(Ontology.load(cfg.ontology), class_names, expand_ancestors=cfg.expand_ancestors)
            if cfg.ontology else None)
    clap = open_clap(cfg)
    if models is None:
        models = build_models(cfg, clap.embed_dim)
    if len({m.name for m in models}) != len(models):
        raise ValueError(f"model names must be unique (got {', '.join(m.name for m in models)})")
    layout = "single" if len(models) == 1 else "comparison"
    if cfg.threshold is not None and len({m.geometry for m in models}) > 1:
        log.warning("--threshold %g applies to the raw scores of every model, and cosine, euclidean and "
                    "hyperbolic scores have different scales; compare the top-k rule (--set-k) instead",
                    cfg.threshold)
    cache = open_cache(cfg)
    skips = SkipLog()
    clips = embed_clips(clap, cfg.parquet_dir, matcher=matcher, skips=skips, label_column=cfg.label_column,
                        limit=cfg.num_samples, batch_size=cfg.embed_batch_size, require_labels=False,
                        cache=cache, num_workers=cfg.num_workers, segmenting=segmenting_from(cfg.segment, cfg.hop))
    if len(clips) == 0:
        raise DatasetError(f"no clip of {cfg.parquet_dir} could be read (skipped: {skips.describe(cfg.label_column)})")
    rows_read = len(clips) + skips.rows_skipped()
    rows_held, _ = count_rows(cfg.parquet_dir)
    durations = duration_report(clips, segmenting_from(cfg.segment, cfg.hop))
    rows_rule = _rows_rule(cfg.num_samples, rows_read, rows_held, cfg.parquet_dir)
    targets = clips.targets(len(class_names))
    labelled = targets.any(axis=1)
    if not labelled.any():
        log.warning("no clip has a label among the %d classes of %s (--label-column %r): metrics are null",
                    len(class_names), cfg.class_labels, cfg.label_column)
    annotated_positives = int(targets.sum())
    if cfg.expand_ancestors:
        # One ground truth for the whole run (every metric, the npz targets); the labelled set
        # is unchanged, since only clips with a label gain its ancestors.
        targets = expand_to_ancestors(targets, hier.hierarchy)
    # Cone pairs of each labelled clip, as prompt indices (with expand_ancestors: + every ancestor).
    clip_labels = (hier.hierarchy.training_labels([clips.label_indices[i] for i in np.flatnonzero(labelled)])
                   if hier is not None else None)

    prompt_cache: dict[str, torch.Tensor] = {}
    extra_cache: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict] = {}
    score_sets: dict[str, np.ndarray] = {}
    text_points: dict[str, torch.Tensor] = {}
    audio_points: dict[str, torch.Tensor] = {}
    boot_samples: dict[str, dict] = {}
    for model in models:
        template = model.prompt_template
        if template not in prompt_cache:
            prompt_cache[template] = embed_prompts(clap, prompts_for(class_names, template), cache=cache)
        audio_pts, text_pts = model.project(clips.audio), model.project(prompt_cache[template])
        scores = model.score_points(audio_pts, text_pts)
        s, t = scores[labelled], targets[labelled]
        metrics = _metrics(s, t, cfg, rows_read) if labelled.any() else None
        hierarchy = None
        if hier is not None and metrics:
            extra_names = list(hier.hierarchy.extra_names)
            if template not in extra_cache:
                # Abstract parents in a call of their own: the class prompts' embeddings (and so
                # every score) stay exactly what they are without --ontology.
                extra_cache[template] = (embed_prompts(clap, prompts_for(extra_names, template), cache=cache)
                                         if extra_names else prompt_cache[template][:0])
            labelled_pts = audio_pts[torch.from_numpy(labelled)]
            prompt_pts = torch.cat([text_pts, model.project(extra_cache[template])])
            hierarchy = hierarchy_block(model, labelled_pts, text_pts, s, t, hier, class_names,
                                        cone_block(model, prompt_pts, labelled_pts, clip_labels, hier))
        blocks[model.name] = {
            "model_info": _model_info(model, str(clap.path)),
            "similarity_stats": {"min": float(scores.min()), "max": float(scores.max()),
                                 "mean": float(scores.mean()), "std": float(scores.std())},
            "metrics": metrics,
            "metrics_by_split": (_holdout_metrics(model, s, t, class_names, cfg, rows_read)
                                 if metrics else None),
            "bootstrap": None,
            "hierarchy": hierarchy,
            "ball_usage": _ball_usage(model, audio_pts, text_pts, scores),
            "per_class": per_class_ap(s, t, class_names) if metrics else [],
            "predictions": _predictions(scores, clips, class_names, cfg.top_k,
                                        targets if cfg.expand_ancestors else None),
        }
        if cfg.bootstrap and metrics:
            blocks[model.name]["bootstrap"], boot_samples[model.name] = _bootstrap(s, t, metrics, cfg)
        if cfg.legacy_distance and metrics:
            blocks[model.name]["legacy_metrics"] = legacy_set_metrics(s, t, set_k=cfg.set_k, threshold=cfg.threshold)
        score_sets[model.name] = scores
        text_points[model.name] = text_pts
        if cfg.plots:
            audio_points[model.name] = audio_pts[torch.from_numpy(labelled)]
    _paired_with_plain(blocks, boot_samples)

    path = unique_path(cfg.output_json or Path(cfg.result_dir) /
                       f"clap_modelscope_results_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json")
    scores_file = None
    if cfg.save_scores:
        scores_file = save_scores(unique_path(cfg.save_scores), score_sets, targets, labelled, class_names, clips)
    comparison_plot = None
    if cfg.plots:
        for model in models:
            blocks[model.name]["plots"] = _plots(path, model, blocks[model.name], text_points[model.name],
                                                 class_names, hier, audio_points.get(model.name),
                                                 targets[labelled])
        if len(models) > 1 and any(b["per_class"] for b in blocks.values()):
            from hyperbolic import plots
            comparison_plot = str(plots.plot_ap_comparison(
                {name: b["per_class"] for name, b in blocks.items()},
                unique_path(path.with_name(f"{path.stem}_per_class_ap_models.png")), num_clips=int(labelled.sum())))

    test_info = {"timestamp": datetime.now().isoformat(), "parquet_dir": str(cfg.parquet_dir),
                 "num_samples": cfg.num_samples, "device": str(clap.device), "model_path": str(clap.path),
                 "class_labels": str(cfg.class_labels), "num_classes": len(class_names),
                 **({"class_names": class_names} if str(cfg.class_labels) == FROM_DATA else {}),
                 "label_column": cfg.label_column, "layout": layout, "models": [m.name for m in models],
                 "rows_in_folder": rows_held, "rows_used": rows_read, "rows_rule": rows_rule,
                 **durations,
                 "clips_read": rows_read, "clips_embedded": len(clips),
                 "clips_with_known_label": int(labelled.sum()),
                 "top_k": cfg.top_k, "set_k": cfg.set_k, "threshold": cfg.threshold,
                 "predicted_set_rule": f"top-{cfg.set_k}" if cfg.threshold is None else f"score>={cfg.threshold:g}",
                 "bootstrap": cfg.bootstrap, "bootstrap_seed": cfg.bootstrap_seed if cfg.bootstrap else None,
                 "legacy_distance": cfg.legacy_distance, "ontology": cfg.ontology,
                 "ground_truth": "labels+ancestors" if cfg.expand_ancestors else "labels",
                 "ground_truth_rule": GROUND_TRUTH_TEXT["labels+ancestors" if cfg.expand_ancestors else "labels"],
                 "ground_truth_positives": {"annotated": annotated_positives,
                                            "added_ancestors": int(targets.sum()) - annotated_positives},
                 "scores_file": None if scores_file is None else str(scores_file),
                 "comparison_plot": comparison_plot,
                 "cache_dir": None if cache is None else str(cache.root)}
    data_quality = {"skipped": skips.to_dict(), "unknown_labels": skips.unknown_labels_list(),
                    "excluded_from_metrics": _excluded(clips, labelled)}
    extra = {"ontology": hier.summary(cfg.ontology)} if hier is not None else {}
    if layout == "single":
        results = {"test_info": test_info, **next(iter(blocks.values())), **extra, **data_quality}
    else:
        summary = {name: {k: (b["metrics"] or {}).get(k) for k in SUMMARY_KEYS} for name, b in blocks.items()}
        results = {"test_info": test_info, "summary": summary, "models": blocks, **extra, **data_quality}
    atomic_write_json(path, results)
    return results, path


# ------------------------------------------------------------------------------- table

SUMMARY_KEYS = ("mAP", "mAUC", "d_prime", "map", "mAP_per_clip", "acc@1", "acc@5", "f1_micro", "f1_macro",
                "t2a_R@1", "t2a_mAP@10", "a2t_R@1")
TABLE_KEYS = ("mAP", "mAUC", "d_prime", "mAP_per_clip", "acc@1", "acc@3", "acc@5", "acc@10", "precision_micro",
              "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro", "t2a_R@1", "t2a_R@5",
              "t2a_R@10", "t2a_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "valid_samples", "total_samples")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fmt_diff(d: dict | None) -> str:
    """A paired difference as ``+0.1234 [+0.0800, +0.1600]``."""
    return "-" if not d else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def format_metrics_table(results: dict) -> str:
    """Side-by-side metrics of every model block, one row per metric."""
    blocks = results.get("models") or {results["model_info"].get("name", results["model_info"]["model_type"]):
                                       results}
    names = list(blocks)
    rows: list[tuple[str, list[str]]] = []
    for key in TABLE_KEYS:
        rows.append((key, [_fmt((b["metrics"] or {}).get(key)) for b in blocks.values()]))
    if any(b.get("bootstrap") for b in blocks.values()):
        for key in ("mAP", "acc@1"):
            rows.append((f"{key} 95% CI", [
                f"[{b['bootstrap'][key]['low']:.4f}, {b['bootstrap'][key]['high']:.4f}]" if b.get("bootstrap")
                else "-" for b in blocks.values()]))
        paired = f"vs_{PLAIN_MODEL_NAME}"
        if any((b.get("bootstrap") or {}).get(paired) for b in blocks.values()):
            for key in ("mAP", "acc@1"):
                rows.append((f"{key} - cosine", [_fmt_diff((b.get("bootstrap") or {}).get(paired, {}).get(key))
                                                 for b in blocks.values()]))
    if any(b.get("legacy_metrics") for b in blocks.values()):
        for key, label in (("precision_macro", "legacy P_macro"), ("recall_macro", "legacy R_macro"),
                           ("f1_macro", "legacy F1_macro")):
            rows.append((label, [
                _fmt(b["legacy_metrics"][key]) if b.get("legacy_metrics") else "-" for b in blocks.values()]))
    if any(b.get("ball_usage") for b in blocks.values()):
        for label, get in (("audio_on_clip", lambda u: u["audio"]["on_clip_sphere"]),
                           ("text_on_clip", lambda u: u["text"]["on_clip_sphere"]),
                           ("top1_same_cos", lambda u: u["top1_same_as_cosine"])):
            rows.append((label, [_fmt(get(b["ball_usage"])) if b.get("ball_usage") else "-"
                                 for b in blocks.values()]))
    if any(b.get("hierarchy") for b in blocks.values()):
        for label, get in (("rho(prompt,dep)", lambda h: h["prompt_norm_vs_depth"]["rho"]),
                           ("rho(audio,dep)", lambda h: h["audio_mean_norm_vs_depth"]["rho"]),
                           ("mistake_sev", lambda h: h["mistake_severity"]),
                           (f"hier_dist@{HIER_K}", lambda h: h[f"hier_dist@{HIER_K}"]),
                           ("cone_pairs_in", lambda h: h["cones"]["prompt_pairs_in_cone"]),
                           ("cone_clips_in", lambda h: h["cones"]["clip_label_pairs_in_cone"]),
                           ("rho(nodes,dep)", lambda h: (h["cones"]["norm_depth"] or {}).get("rho"))):
            rows.append((label, [_fmt(get(b["hierarchy"])) if b.get("hierarchy") else "-"
                                 for b in blocks.values()]))
    width = max(14, *(len(n) for n in names), *(len(v) for _, vals in rows for v in vals))
    lines = [f"{'metric':<16}" + "".join(f"{n:>{width + 2}}" for n in names)]
    lines += [f"{label:<16}" + "".join(f"{v:>{width + 2}}" for v in vals) for label, vals in rows]
    return "\n".join(lines)
