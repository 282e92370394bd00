"""Zero-shot evaluation: plain CLAP (cosine) and trained projectors on the same clips.

Data flow: parquet -> CLAP clip embeddings (once) -> per model: project -> (N, C) scores ->
metrics -> results JSON (+ optional score matrices and plots). Clips without a known label get
predictions but stay out of every metric.

Which models run: ``hyperbolic.evaluation.scoring.plan_models``. Every model sees exactly the same clips, class names and bootstrap resamples.

Ground truth: a clip's labels that match a class. With ``expand_ancestors`` (needs an ontology)
it is closed under the ontology's ancestry (``expand_to_ancestors``) for the whole run: every
metric, per-class AP, bootstrap, hierarchy block and the npz targets use the same matrix, named
in ``test_info.ground_truth``; the set of labelled clips does not change. One ground truth per
file keeps every number of it comparable; run twice for both.

With an ontology, each model gets a ``hierarchy`` block (``hyperbolic.evaluation.hierarchy``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data.audio import segmenting_from
from data.audioset import SkipLog, count_rows
from data.class_list import FROM_DATA, resolve_class_names
from data.errors import DatasetError
from data.labels import LabelMatcher, load_class_ids
from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE, EvalConfig
from hyperbolic.embedding.cache import clip_audio_digests
from hyperbolic.embedding.embeddings import (
    ClipEmbeddings,
    duration_report,
    embed_prompts,
    embed_run_clips,
    open_cache,
    open_clap,
    prompts_for,
)
from hyperbolic.embedding.stored import (
    StoredEmbeddings,
    check_writable,
    export_clip_ids,
    export_labels,
    read_embeddings,
    write_embeddings,
)
from hyperbolic.evaluation.files import results_path, save_scores, write_plots, write_results
from hyperbolic.evaluation.hierarchy import (
    HierarchyContext,
    cone_block,
    expand_to_ancestors,
    hierarchy_block,
    hierarchy_metrics,
)
from hyperbolic.evaluation.radius import radius_block
from hyperbolic.evaluation.retrieval import evaluate_captions
from hyperbolic.evaluation.scoring import (
    COLLAPSED_TEXT_COSINE,
    PLAIN_MODEL_NAME,
    ScoringModel,
    build_models,
    measure_cones_at,
    model_info,
    prompt_health,
    similarity_stats,
    training_overlap,
    usage_block,
    usage_skipped,
)
from hyperbolic.evaluation.splits import class_parts, coverage, split_block
from hyperbolic.hierarchy.ontology import Ontology
from hyperbolic.metrics.bootstrap import bootstrap_ci, bootstrap_difference, bootstrap_samples
from hyperbolic.metrics.classification import (
    _topk_order,
    classification_metrics,
    legacy_set_metrics,
    per_class_ap,
    retrieval_metrics,
)
from hyperbolic.outputs import unique_path

log = logging.getLogger(__name__)

EXCLUDED_EXAMPLES = 5

BOOTSTRAP_NOTE = (
    "Percentile bootstrap over the labelled clips; every model uses the same resamples (same seed). "
    "A clip drawn m times counts m times but its copies do not rank against each other "
    "(bootstrap.bootstrap_samples), which removes the upward bias of resampled mAP that copies tied "
    "with each other gave. vs_clap_cosine: this model minus plain CLAP on each shared resample "
    "(paired), diff the difference of the point estimates."
)


# ------------------------------------------------------------------------------- blocks

GROUND_TRUTH_TEXT = {
    "labels": "the clip's labels that match a class",
    "labels+ancestors": "the clip's labels that match a class, plus every class above one of them in --ontology "
                        "(--expand-ancestors); used by every metric of this file and by the --save-scores targets",
}


def _predictions(scores, clips, class_names, top_k, expanded=None):
    """Top-k per clip with its ground truth; ``expanded`` (N, C) bool: the ancestor-closed
    ground truth, listed as ``ground_truth_indices_with_ancestors``.

    A list needs an order, so tied classes are listed by index; nothing is hidden by it: every
    entry has ``tie_size`` (classes sharing its score, 1 when none) and each clip
    ``predicted_top1_tied`` (every class tied at the top: the top 1 is any of them with equal
    probability, as the metrics take it)."""
    # The top k without sorting whole rows, whole-array lookups and one tolist(): the same list
    # as np.argsort(-scores, kind="stable") and per-element float(), in a third of the time.
    order = _topk_order(scores, top_k)
    values = np.take_along_axis(scores, order, axis=1)
    ties = np.stack([np.count_nonzero(scores == values[:, j:j + 1], axis=1) for j in range(order.shape[1])],
                    axis=1)
    top_scores, tie_sizes = values.tolist(), ties.tolist()
    names = np.asarray(class_names, dtype=object)[order].tolist()
    out = []
    for i, meta in enumerate(clips.metas):
        extra = ({} if expanded is None else
                 {"ground_truth_indices_with_ancestors": np.flatnonzero(expanded[i]).tolist()})
        top_tied = ([names[i][0]] if tie_sizes[i][0] == 1 else
                    [class_names[k] for k in np.flatnonzero(scores[i] == values[i, 0])])
        out.append({
            "sample_id": i, "video_id": meta.video_id, "file": meta.file, "row": meta.row,
            "predicted_top1": names[i][0],
            "predicted_top1_tied": top_tied,
            "top_k_predictions": [{"rank": r + 1, "classname": name, "similarity": value, "tie_size": size}
                                  for r, (name, value, size) in enumerate(zip(names[i], top_scores[i], tie_sizes[i]))],
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


def _splits(models: list[ScoringModel], scored: dict, data: _Clips, class_names: list[str], cfg: EvalConfig) -> None:
    """``metrics_by_split`` and ``training_coverage`` of every checkpoint (``hyperbolic.evaluation.splits``),
    with plain CLAP's metrics on the same class subsets when it ran."""
    labelled = data.labelled
    if not labelled.any():
        return
    plain = scored.get(PLAIN_MODEL_NAME)
    t = data.targets[labelled]
    plain_memo: dict = {}  # plain CLAP's numbers per part, shared by the checkpoints with the same parts
    for model in models:
        if model.projector is None:
            continue
        parts = class_parts(model.info, model.training_clips, class_names)
        if parts is None:
            continue
        r = scored[model.name]
        r.block["metrics_by_split"] = split_block(
            parts, r.scores[labelled], None if plain is None else plain.scores[labelled], t, cfg,
            lambda s, tt: _metrics(s, tt, cfg, data.rows_read), model.info.get("holdout_classes") or [],
            PLAIN_MODEL_NAME, plain_memo)
        r.block["training_coverage"] = coverage(parts, r.scores, t, class_names, model.name)


def _text_health(model: ScoringModel, class_emb, text_pts, warned: set) -> dict:
    """``text_tower`` (the CLAP embeddings of the class prompts) and, for a projector,
    ``projected_prompts`` (the projected points' directions): ``prompt_health``. Warns when the
    text tower looks collapsed, once per prompt template (``warned``)."""
    tower = prompt_health(class_emb)
    if tower.get("collapsed") and model.prompt_template not in warned:
        warned.add(model.prompt_template)
        log.warning("%s (and every model with its prompt template): the class prompts' CLAP text embeddings have a mean pairwise cosine of %.3f (> %g) "
                    "and an effective rank of %.1f over %d prompts: a collapsed text tower, whose prompts can "
                    "hardly be told apart; check the CLAP checkpoint and --prompt-template", model.name,
                    tower["mean_pairwise_cosine"], COLLAPSED_TEXT_COSINE, tower["effective_rank"], tower["num_prompts"])
    out = {"text_tower": tower}
    if model.projector is not None:
        out["projected_prompts"] = prompt_health(text_pts)
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


@dataclass
class _Clips:
    """The embedded clips every model is scored on, and the run's one ground truth."""

    clips: ClipEmbeddings
    skips: SkipLog
    rows_read: int          # rows considered, skipped ones included
    rows_held: int          # rows in the folder
    rows_rule: str          # which rows were used, in words
    durations: dict         # clip lengths (``duration_report``)
    targets: np.ndarray     # (N, C) bool; with expand_ancestors, closed under the ontology
    raw_targets: np.ndarray  # (N, C) bool: the clips' own labels, never closed under the ontology
    labelled: np.ndarray    # (N,) bool: rows with a known label, the rows every metric uses
    annotated_positives: int
    clip_labels: list[list[int]] | None  # cone pairs of each labelled clip, as prompt indices
    digests: list[str | None] | None = None  # audio sha256 per clip (only when a checkpoint records its clips)


def _read_clips(cfg: EvalConfig, clap, cache, class_names: list[str], hier: HierarchyContext | None) -> _Clips:
    matcher = LabelMatcher(class_names, load_class_ids(cfg.class_labels, class_names))
    skips = SkipLog()
    clips = embed_run_clips(cfg, clap, cache, matcher=matcher, skips=skips, label_column=cfg.label_column,
                            require_labels=False)
    if len(clips) == 0:
        raise DatasetError(f"no clip of {cfg.parquet_dir} could be read (skipped: {skips.describe(cfg.label_column)})")
    rows_read, rows_held = len(clips) + skips.rows_skipped(), count_rows(cfg.parquet_dir)[0]
    durations = duration_report(clips, segmenting_from(cfg.segment, cfg.hop))
    return _ground_truth(cfg, clips, skips, rows_read, rows_held, durations, class_names, hier)


def _stored_clips(cfg: EvalConfig, stored: StoredEmbeddings, class_names: list[str],
                  hier: HierarchyContext | None) -> _Clips:
    """``--embeddings``: the clips of the folder, in place of ``_read_clips``."""
    clips = stored.clips
    if len(clips) == 0:
        raise DatasetError(f"no clip of {stored.folder} could be used (skipped: {stored.skips.describe('labels')})")
    return _ground_truth(cfg, clips, stored.skips, stored.rows_read, stored.rows_in_file,
                         duration_report(clips, None), class_names, hier)


def _ground_truth(cfg: EvalConfig, clips: ClipEmbeddings, skips: SkipLog, rows_read: int, rows_held: int,
                  durations: dict, class_names: list[str], hier: HierarchyContext | None) -> _Clips:
    rows_rule = _rows_rule(cfg.num_samples, rows_read, rows_held, cfg.embeddings or cfg.parquet_dir)
    targets = clips.targets(len(class_names))
    labelled = targets.any(axis=1)
    if not labelled.any():
        log.warning("no clip has a label among the %d classes of %s (--label-column %r): metrics are null",
                    len(class_names), cfg.embeddings or cfg.class_labels, cfg.label_column)
    annotated = int(targets.sum())
    raw_targets = targets
    if cfg.expand_ancestors:
        # One ground truth for the whole run (every metric, the npz targets); the labelled set
        # is unchanged, since only clips with a label gain its ancestors.
        targets = expand_to_ancestors(targets, hier.hierarchy)
    # With expand_ancestors, the cone pairs include every ancestor too.
    clip_labels = (hier.hierarchy.training_labels([clips.label_indices[i] for i in np.flatnonzero(labelled)])
                   if hier is not None else None)
    return _Clips(clips, skips, rows_read=rows_read, rows_held=rows_held, rows_rule=rows_rule, durations=durations,
                  targets=targets, raw_targets=raw_targets, labelled=labelled, annotated_positives=annotated, clip_labels=clip_labels)


class _StoredPrompts:
    """``--embeddings``: the stored text embeddings of the classes and abstract parents, the same
    for every prompt template (the folder holds one embedding per name)."""

    def __init__(self, stored: StoredEmbeddings, extra_names: list[str]):
        self._classes = stored.class_embeddings
        self._parents = stored.prompt_embeddings(extra_names)
        self.warned: set[str] = set()  # templates whose collapsed text tower was reported

    def classes(self, template: str) -> torch.Tensor:
        return self._classes

    def parents(self, template: str) -> torch.Tensor:
        return self._parents


class _PromptEmbeddings:
    """CLAP embeddings of the class prompts (and of the ontology's abstract parents), once per
    prompt template, shared by the models that use it."""

    def __init__(self, clap, cache, class_names: list[str], extra_names: list[str]):
        self.clap, self.cache, self.class_names, self.extra_names = clap, cache, class_names, extra_names
        self._classes: dict[str, torch.Tensor] = {}
        self._parents: dict[str, torch.Tensor] = {}
        self.warned: set[str] = set()  # templates whose collapsed text tower was reported

    def classes(self, template: str) -> torch.Tensor:
        if template not in self._classes:
            self._classes[template] = embed_prompts(self.clap, prompts_for(self.class_names, template),
                                                    cache=self.cache)
        return self._classes[template]

    def parents(self, template: str) -> torch.Tensor:
        # Abstract parents in a call of their own: the class prompts' embeddings (and so every
        # score) stay exactly what they are without --ontology.
        if template not in self._parents:
            self._parents[template] = (embed_prompts(self.clap, prompts_for(self.extra_names, template),
                                                     cache=self.cache)
                                       if self.extra_names else self.classes(template)[:0])
        return self._parents[template]


@dataclass
class _Scored:
    """One model's results block and what the files written after it need."""

    block: dict
    scores: np.ndarray             # (N, C) every embedded clip
    text_pts: torch.Tensor         # (C, D) projected class prompts
    labelled_pts: torch.Tensor     # (N_labelled, D) projected audio of the labelled clips
    boot_samples: dict | None      # per-resample values, for the paired differences


def _score_model(model: ScoringModel, data: _Clips, prompts: _PromptEmbeddings, cfg: EvalConfig,
                 class_names: list[str], hier: HierarchyContext | None, model_path: str) -> _Scored:
    class_emb = prompts.classes(model.prompt_template)
    audio_pts, text_pts = model.project(data.clips.audio), model.project(class_emb)
    scores = model.score_points(audio_pts, text_pts)
    labelled = data.labelled
    s, t = scores[labelled], data.targets[labelled]
    labelled_pts = audio_pts[torch.from_numpy(labelled)]
    metrics = _metrics(s, t, cfg, data.rows_read) if labelled.any() else None
    hierarchy = None
    if hier is not None and metrics:
        prompt_pts = torch.cat([text_pts, model.project(prompts.parents(model.prompt_template))])
        hierarchy = hierarchy_block(model, labelled_pts, text_pts, s, t, hier, class_names,
                                    cone_block(model, prompt_pts, labelled_pts, data.clip_labels, hier))
        hierarchy.update(hierarchy_metrics(model, s, t, data.raw_targets[labelled], hier, labelled_pts, prompt_pts))
    overlap = training_overlap(model, [m.video_id for m in data.clips.metas], data.digests)
    if overlap and overlap.get("clips"):
        log.warning("%s: %d of the %d evaluated clips (%.0f%%) were in its training or validation data (%d by audio, "
                    "%d by video_id): its metrics are not held-out numbers", model.name, overlap["clips"],
                    overlap["evaluated"], 100 * overlap["fraction"], overlap["by_audio"], overlap["by_video_id"])
    block = {
        "model_info": {**model_info(model, model_path), **_text_health(model, class_emb, text_pts, prompts.warned)},
        "overlap_with_training": overlap,
        "similarity_stats": similarity_stats(scores),
        "metrics": metrics,
        "metrics_by_split": None,  # filled by _splits once every model is scored
        "bootstrap": None,
        "hierarchy": hierarchy,
        "ball_usage": usage_block(model, audio_pts, text_pts, scores),
        "ball_usage_skipped": usage_skipped(model),
        "radius": radius_block(model, audio_pts, text_pts, scores, labelled, t, data.raw_targets[labelled],
                               hier.depths if hier is not None else None),
        "per_class": per_class_ap(s, t, class_names) if metrics else [],
        "predictions": _predictions(scores, data.clips, class_names, cfg.top_k,
                                    data.targets if cfg.expand_ancestors else None),
    }
    samples = None
    if cfg.bootstrap and metrics:
        block["bootstrap"], samples = _bootstrap(s, t, metrics, cfg)
    if cfg.legacy_distance and metrics:
        block["legacy_metrics"] = legacy_set_metrics(s, t, set_k=cfg.set_k, threshold=cfg.threshold)
    return _Scored(block, scores, text_pts, labelled_pts, samples)


def _write_files(cfg: EvalConfig, path: Path, models: list[ScoringModel], scored: dict[str, _Scored],
                 data: _Clips, class_names: list[str], hier: HierarchyContext | None) -> tuple[Path | None, str | None]:
    """``--save-scores`` and ``--plots``; the plots go into each model's block. Returns the npz
    path and the comparison plot's path (None where not written)."""
    scores_file = None
    if cfg.save_scores:
        scores_file = save_scores(unique_path(cfg.save_scores), {n: r.scores for n, r in scored.items()},
                                  data.targets, data.labelled, class_names, data.clips)
    comparison_plot = None
    if cfg.plots:
        for model in models:
            r = scored[model.name]
            r.block["plots"] = write_plots(path, model, r.block, r.text_pts, class_names, hier, r.labelled_pts,
                                           data.targets[data.labelled])
        if len(models) > 1 and any(r.block["per_class"] for r in scored.values()):
            from hyperbolic.evaluation import plots
            comparison_plot = str(plots.plot_ap_comparison(
                {name: r.block["per_class"] for name, r in scored.items()},
                unique_path(path.with_name(f"{path.stem}_per_class_ap_models.png")),
                num_clips=int(data.labelled.sum())))
    return scores_file, comparison_plot


def _test_info(cfg: EvalConfig, clap, cache, class_names: list[str], models: list[ScoringModel], data: _Clips,
               scores_file: Path | None, comparison_plot: str | None, model_path: str) -> dict:
    ground_truth = "labels+ancestors" if cfg.expand_ancestors else "labels"
    return {"timestamp": datetime.now().isoformat(),
            "parquet_dir": str(cfg.parquet_dir) if cfg.embeddings is None else f"embeddings:{cfg.embeddings}",
            "embeddings": cfg.embeddings, "exported_embeddings": cfg.export_embeddings,
            "num_samples": cfg.num_samples, "device": "cpu" if clap is None else str(clap.device),
            "model_path": model_path,
            "class_labels": str(cfg.class_labels), "num_classes": len(class_names),
            **({"class_names": class_names} if str(cfg.class_labels) == FROM_DATA else {}),
            "label_column": cfg.label_column, "layout": "single" if len(models) == 1 else "comparison",
            "models": [m.name for m in models],
            "rows_in_folder": data.rows_held, "rows_used": data.rows_read,
            "rows_rule": data.rows_rule, **data.durations,
            "clips_read": data.rows_read, "clips_embedded": len(data.clips),
            "clips_with_known_label": int(data.labelled.sum()),
            "top_k": cfg.top_k, "set_k": cfg.set_k, "threshold": cfg.threshold,
            "predicted_set_rule": f"top-{cfg.set_k}" if cfg.threshold is None else f"score>={cfg.threshold:g}",
            "bootstrap": cfg.bootstrap, "bootstrap_seed": cfg.bootstrap_seed if cfg.bootstrap else None,
            "legacy_distance": cfg.legacy_distance, "ontology": cfg.ontology,
            "ground_truth": ground_truth, "ground_truth_rule": GROUND_TRUTH_TEXT[ground_truth],
            "ground_truth_positives": {"annotated": data.annotated_positives,
                                       "added_ancestors": int(data.targets.sum()) - data.annotated_positives},
            "scores_file": None if scores_file is None else str(scores_file),
            "comparison_plot": comparison_plot,
            "cache_dir": None if cache is None else str(cache.root)}


def evaluate(cfg: EvalConfig, models: list[ScoringModel] | None = None) -> tuple[dict, Path]:
    """Evaluate every model on the same clips; write the results JSON (and the npz and plots
    when asked); return (results, path). With ``cfg.text_column``: caption retrieval instead
    (``hyperbolic.evaluation.retrieval``)."""
    cfg.validate()  # the checks the script runs on its flags
    if cfg.text_column:
        return evaluate_captions(cfg, models)
    stored = read_embeddings(cfg.embeddings, limit=cfg.num_samples) if cfg.embeddings else None
    class_names = (stored.class_names if stored is not None else
                   resolve_class_names(cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column,
                                       limit=cfg.num_samples))
    if cfg.export_embeddings:
        check_writable(cfg.export_embeddings)  # before CLAP's work, not after it
    hier = (HierarchyContext.build(Ontology.load(cfg.ontology), class_names, expand_ancestors=cfg.expand_ancestors,
                                   available=None if stored is None else stored.has_prompt)
            if cfg.ontology else None)
    if hier is not None and hier.hierarchy.linked_past:
        log.warning("%d abstract parents of --ontology have no prompt in --embeddings and are linked past "
                    "(first: %s)", len(hier.hierarchy.linked_past), "; ".join(hier.hierarchy.linked_past[:5]))
    clap = open_clap(cfg) if stored is None else None
    if models is None:
        models = build_models(cfg, clap.embed_dim if stored is None else stored.dim)
    if len({m.name for m in models}) != len(models):
        raise ValueError(f"model names must be unique (got {', '.join(m.name for m in models)})")
    measure_cones_at(models, cfg.entailment_k)  # models built here or passed in (benchmarks, the demo)
    if cfg.threshold is not None and len({m.geometry for m in models}) > 1:
        log.warning("--threshold %g applies to the raw scores of every model, and cosine, euclidean and "
                    "hyperbolic scores have different scales; compare the top-k rule (--set-k) instead",
                    cfg.threshold)
    extra_names = list(hier.hierarchy.extra_names) if hier else []
    if stored is None:
        cache = open_cache(cfg)
        data = _read_clips(cfg, clap, cache, class_names, hier)
        prompts = _PromptEmbeddings(clap, cache, class_names, extra_names)
        model_path = str(clap.path)
    else:
        cache, data, prompts = None, _stored_clips(cfg, stored, class_names, hier), _StoredPrompts(stored, extra_names)
        model_path = f"embeddings:{cfg.embeddings}"
    # The audio bytes are read again for their digests only when a checkpoint records its clips.
    data.digests = (clip_audio_digests(cfg.parquet_dir, data.clips.metas, cache)
                    if stored is None and any(m.training_clips for m in models) else [None] * len(data.clips))
    if cfg.export_embeddings:
        _export(cfg, data.clips, class_names, prompts, extra_names, model_path)
    scored = {m.name: _score_model(m, data, prompts, cfg, class_names, hier, model_path) for m in models}
    _splits(models, scored, data, class_names, cfg)
    blocks = {name: r.block for name, r in scored.items()}
    _paired_with_plain(blocks, {name: r.boot_samples for name, r in scored.items() if r.boot_samples is not None})

    path = results_path(cfg)
    scores_file, comparison_plot = _write_files(cfg, path, models, scored, data, class_names, hier)
    test_info = _test_info(cfg, clap, cache, class_names, models, data, scores_file, comparison_plot, model_path)
    data_quality = {"skipped": data.skips.to_dict(), "unknown_labels": data.skips.unknown_labels_list(),
                    "excluded_from_metrics": _excluded(data.clips, data.labelled)}
    extra = {"ontology": hier.summary(cfg.ontology)} if hier is not None else {}
    return write_results(path, test_info, blocks, SUMMARY_KEYS, {**extra, **data_quality}), path


def _export(cfg: EvalConfig, clips: ClipEmbeddings, class_names: list[str], prompts, extra_names: list[str],
            model_path: str) -> None:
    """``--export-embeddings``: the clips read and the prompts of the run, in the ``--embeddings``
    layout (``hyperbolic.embedding.stored``); the prompts with the plain-CLAP template."""
    template = cfg.prompt_template or DEFAULT_PROMPT_TEMPLATE
    folder = write_embeddings(cfg.export_embeddings, clip_ids=export_clip_ids(clips), audio=clips.audio.numpy(),
                              labels=export_labels(clips, class_names), class_names=class_names,
                              class_embeddings=prompts.classes(template).numpy(), parent_names=extra_names,
                              parent_embeddings=prompts.parents(template).numpy(),
                              source={"model_path": model_path, "parquet_dir": str(cfg.parquet_dir),
                                      "prompt_template": template, "label_column": cfg.label_column,
                                      "num_samples": cfg.num_samples, "ontology": cfg.ontology})
    log.info("exported %d clips and %d prompts (%d abstract parents) to %s", len(clips),
             len(class_names) + len(extra_names), len(extra_names), folder)


SUMMARY_KEYS = ("mAP", "mAUC", "d_prime", "map", "mAP_per_clip", "acc@1", "acc@5", "f1_micro", "f1_macro",
                "t2a_R@1", "t2a_mAP@10", "a2t_R@1")
