"""Scoring models: how CLAP embeddings become class (or caption) scores, and which models run.

A ``ScoringModel`` is plain CLAP (cosine of the unit embeddings) or a trained projector with its
geometry, c and temperature, read from a checkpoint (``load_projection``; the file format is
``hyperbolic.model.checkpoint``'s). ``build_models`` turns ``--projection-checkpoint`` into the models
of a run (``plan_models``); ``model_info``, ``similarity_stats`` and ``usage_block`` are the
per-model parts of a results block that classification (``hyperbolic.evaluation.evaluate``) and caption retrieval
(``hyperbolic.evaluation.retrieval``) share.

Which models run (``plan_models``):

- no projection checkpoint: plain CLAP alone, single-model layout;
- ``use_hyperbolic`` with exactly one checkpoint: that projector alone, single-model layout
  (what the earlier scripts' ``--use-hyperbolic`` did);
- otherwise (one checkpoint without ``use_hyperbolic``, or several checkpoints with or without
  it): a comparison of plain CLAP and every checkpoint, one block per model under "models".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE, EvalConfig
from hyperbolic.embedding.embeddings import PROMPT_NAME_RULE
from hyperbolic.evaluation.ball_usage import ball_usage
from hyperbolic.geometry import legacy
from hyperbolic.hierarchy.cones import DEFAULT_K
from hyperbolic.model.checkpoint import read_projection, resolve_checkpoint
from hyperbolic.model.projector import Projector, effective_temperature, similarity

log = logging.getLogger(__name__)

SCORE_CHUNK = 4096  # clips scored at a time: bounds memory at SCORE_CHUNK x C floats per step
PLAIN_MODEL_NAME = "clap_cosine"
PROJECTION_TEXT = {
    "cosine": "none: CLAP embeddings (unit vectors), cosine similarity",
    "euclidean": "linear, then L2-normalised; score <a, t> / tau",
    "euclidean-distance": "linear, unnormalised (no expmap, no clip); score -|a - t|^2 / tau",
    "hyperbolic": "linear, tangent norm clipped to clip_r of the ball radius, expmap0",
    "legacy": "earlier scripts: expmap0(linear(x)), then rescaled to |y| <= 0.9 (absolute)",
}
DISTANCE_TEXT = {
    "geodesic": "score -d_c(a, t) / tau, d_c the geodesic distance of the ball of curvature -c",
    "legacy": "earlier scripts: score -arcosh(1 + 2|a-t|^2 / ((1-|a|^2)(1-|t|^2))) / sqrt(c) / tau; "
              "c missing inside the fraction, so wrong geometry for c != 1",
}
SCORE_TEXT = {"euclidean": "cosine of unit vectors / tau",
              "euclidean-distance": "score -|a - t|^2 / tau = (2<a, t> - |a|^2 - |t|^2) / tau: -|t|^2 / tau is a "
                                    "per-class bias set by the prompt's norm (the EuCLIP control)"}
BALL_USAGE_SKIPPED = {
    "cosine": "no ball: plain CLAP scores unit vectors by cosine",
    "euclidean": "no ball: the euclidean projector's points are unit vectors scored by cosine",
    "euclidean-distance": "no ball: euclidean-distance points live in R^D (no radius bound, no clip sphere)",
}
@dataclass
class ScoringModel:
    """How to turn CLAP embeddings into class scores: cosine, or projector + geometry."""

    name: str
    prompt_template: str
    projector: Projector | None = None
    geometry: str = "cosine"
    c: float | None = None
    temperature: float | None = None
    legacy_distance: bool = False  # with it, the legacy projection too (hyperbolic.geometry.legacy.project)
    info: dict = field(default_factory=dict)
    entailment_k: float = DEFAULT_K  # cone aperture K for the --ontology cone numbers (hyperbolic only)
    training_clips: dict | None = None  # the checkpoint's training/validation ids and audio digests

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
        entailment_k, k_source = DEFAULT_K, "default (hyperbolic.hierarchy.cones.DEFAULT_K)"
    for flag, value in ignored.items():
        log.warning("%s: --%s %s does not apply to this checkpoint (it has %s); ignored", path.name,
                    flag.replace("_", "-"), value,
                    {"c": c, "temperature": temperature, "prompt_template": f'"{template}"',
                     "legacy_distance": f"geometry {geometry}"}[flag])
    info = {"projection_checkpoint": str(path), "epoch": ckpt.get("epoch"), "geometry": geometry,
            "c": c, "temperature": temperature,
            "effective_temperature": effective_temperature(c, temperature) if geometry == "hyperbolic" else None,
            "clip_r": projector.clip_r, "embed_dim": dim, "proj_dim": read.proj_dim,
            "checkpoint_format": read.format,
            "prompt_template_source": template_source, "legacy_distance": legacy_distance,
            "projection": PROJECTION_TEXT["legacy" if legacy_distance else geometry],
            "distance": (DISTANCE_TEXT["legacy" if legacy_distance else "geodesic"]
                         if geometry == "hyperbolic" else SCORE_TEXT[geometry]),
            "ignored_flags": ignored, "holdout_classes": list(ckpt.get("holdout_classes") or []),
            "entailment_k": entailment_k, "entailment_k_source": k_source,
            "seed": config.get("seed") if config else None,
            "training_hierarchy": {k: config.get(k) for k in ("ontology", "entailment_weight", "expand_ancestors")}
            if config else None}
    if legacy_format and geometry == "hyperbolic" and not legacy_distance:
        info["note"] = ("checkpoint of the earlier scripts, scored with this codebase's projection and "
                        "geodesic distance; --legacy-distance reproduces the earlier scripts' numbers")
        log.warning("%s: %s", path.name, info["note"])
    return ScoringModel(name=name or model_names([str(path)], [geometry], reserved=())[0], prompt_template=template, projector=projector,
                        geometry=geometry, c=c, temperature=temperature, legacy_distance=legacy_distance,
                        info=info, entailment_k=entailment_k, training_clips=ckpt.get("training_clips"))


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


TRAINING_FILE = re.compile(r"(best_)?projection_epoch_\d+")  # the names training gives its checkpoints


def run_label(path: str | Path) -> str:
    """The run a checkpoint belongs to: its folder for a file named as training names them
    (``[best_]projection_epoch_N.pth``, this codebase's and the earlier scripts'), else the
    file's own stem (a file the user named)."""
    path = Path(path)
    return path.resolve().parent.name if TRAINING_FILE.fullmatch(path.stem) else path.stem


def model_names(paths: list[str], geometries: list[str], seeds: list | None = None, *,
                reserved: tuple[str, ...] = (PLAIN_MODEL_NAME,)) -> list[str]:
    """Unique names for checkpoints, always ``<run>-<geometry>`` (``run_label``), with
    ``-seed<N>`` on every name when the checkpoints' training seeds are not all the same
    (``seeds``: None where unknown). Names that still clash get, in turn, the file stem (two
    epochs of one run) and the run folder's parent (``runs/a/hyp`` and ``runs/b/hyp``) in front;
    then ``_2``, ``_3``, ... in order. ``reserved`` names are never used. Each name is made safe
    for a JSON key, an npz key and a file name (``_safe_name``)."""
    seeds = list(seeds) if seeds is not None else [None] * len(paths)
    with_seed = len(set(seeds)) > 1
    parts = [[_safe_name(run_label(p)), g, *([f"seed{s}"] if with_seed and s is not None else [])]
             for p, g, s in zip(paths, geometries, seeds)]
    names = ["-".join(x) for x in parts]
    # For the names that clash: the file stem after them, then the run folder's parent before
    # them, each only where it tells the clashing checkpoints apart.
    for extra, after in ((lambda p: _safe_name(Path(p).stem), True),
                         (lambda p: _safe_name(Path(p).resolve().parent.parent.name), False)):
        groups: dict[str, list[int]] = {}
        for k, n in enumerate(names):
            groups.setdefault(n, []).append(k)
        for group in groups.values():
            if len(group) > 1 and len({extra(paths[k]) for k in group}) > 1:
                for k in group:
                    parts[k] = [*parts[k], extra(paths[k])] if after else [extra(paths[k]), *parts[k]]
                    names[k] = "-".join(parts[k])
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
    loaded = [load_projection(path, embed_dim=embed_dim, c_flag=cfg.c, temperature_flag=cfg.temperature,
                              legacy_distance=cfg.legacy_distance, prompt_template_flag=cfg.prompt_template)
              for path in paths]
    names = model_names(paths, [m.geometry for m in loaded], [m.info.get("seed") for m in loaded])
    for model, name in zip(loaded, names):
        model.name = name
    return models + loaded


def measure_cones_at(models: list[ScoringModel], k: float | None) -> None:
    """``--entailment-k K``: every checkpoint's cones measured at K (comparable across models);
    ``model_info`` keeps the checkpoint's own K as ``entailment_k_checkpoint``. None: no change."""
    if k is None:
        return
    for model in models:
        if model.projector is not None and model.info.get("entailment_k_source") != "--entailment-k":
            model.info.update(entailment_k_checkpoint=model.info.get("entailment_k"), entailment_k=k,
                              entailment_k_source="--entailment-k")
            model.entailment_k = k


def similarity_stats(scores: np.ndarray) -> dict:
    """min, max, mean and std of a model's whole score matrix (every clip, every text)."""
    return {"min": float(scores.min()), "max": float(scores.max()),
            "mean": float(scores.mean()), "std": float(scores.std())}


def usage_skipped(model: ScoringModel) -> str | None:
    """Why a model has no ``ball_usage`` block (None for a hyperbolic model, which has one)."""
    if model.projector is not None and model.geometry == "hyperbolic":
        return None
    return BALL_USAGE_SKIPPED["cosine" if model.projector is None else model.geometry]


def usage_block(model: ScoringModel, audio_pts, text_pts, scores) -> dict | None:
    """``ball_usage.ball_usage`` of a hyperbolic model over every embedded clip (None otherwise,
    with the reason in ``usage_skipped``).
    The clip sphere is ``clip_r`` of the radius, or for ``--legacy-distance`` the earlier scripts'
    absolute 0.9 (relative ``0.9 sqrt(c)``, no clip where that is >= 1)."""
    if model.projector is None or model.geometry != "hyperbolic":
        return None
    clip = legacy.MAX_NORM * model.c ** 0.5 if model.legacy_distance else model.projector.clip_r
    usage = ball_usage(audio_pts, text_pts, scores, c=model.c, clip_radius=clip)
    for part in ("audio", "text"):
        if usage[part]["at_numerical_boundary"]:
            log.warning("%s: %.0f%% of the %s points sit at the numerical boundary of the ball (1 - c|x|^2 within "
                        "%s resolution): their distances and scores there are rounding, not position", model.name,
                        100 * usage[part]["at_numerical_boundary"], part, text_pts.dtype)
    return usage


def model_info(model: ScoringModel, model_path: str) -> dict:
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


COLLAPSED_TEXT_COSINE = 0.95  # mean pairwise cosine of the class prompts above which the text tower is called collapsed


def prompt_health(emb: torch.Tensor) -> dict:
    """Text-tower health of ``(C, D)`` prompt embeddings: ``mean_pairwise_cosine`` (over the pairs
    i < j of their unit vectors, ``(|sum u|^2 - C) / (C (C - 1))``) and ``effective_rank`` (Roy and
    Vetterli 2007: ``exp(H(p))`` with ``p`` the singular values of the unit vectors' matrix divided
    by their sum, H the Shannon entropy; 1 for identical rows, C for orthogonal ones), in float64.
    Null with a reason for fewer than 2 prompts."""
    if len(emb) < 2:
        return {"mean_pairwise_cosine": None, "effective_rank": None, "skipped": "fewer than 2 prompts"}
    u = torch.nn.functional.normalize(emb.double(), dim=-1)
    c = len(u)
    mean_cos = float((u.sum(0).square().sum() - c) / (c * (c - 1)))
    sv = torch.linalg.svdvals(u)
    p = sv[sv > 0] / sv.sum()
    return {"mean_pairwise_cosine": mean_cos, "effective_rank": float(torch.exp(-(p * p.log()).sum())),
            "num_prompts": c, "collapsed": mean_cos > COLLAPSED_TEXT_COSINE}


NO_GUARD = "the checkpoint records no training clip ids or audio digests (trained before they were recorded)"


def training_overlap(model: ScoringModel, video_ids: list[str], digests: list[str | None]) -> dict | None:
    """``overlap_with_training`` of a checkpoint's model: the evaluated clips (``video_ids``,
    ``digests``, one per clip) whose audio digest is among those of the clips the checkpoint trained
    or validated on, or, where either side has no digest (a clip read from --embeddings), whose
    non-empty video id is.
    ``{clips, fraction, by_audio, by_video_id (every id match, informational), evaluated}``;
    None for plain CLAP; null values with a reason for a checkpoint without the record."""
    if model.projector is None:
        return None
    guard = model.training_clips
    if not guard:
        return {"clips": None, "fraction": None, "skipped": NO_GUARD}
    parts = [guard[p] for p in ("train", "val") if isinstance(guard.get(p), dict)]
    trained = [(v, d) for part in parts
               for v, d in zip(part.get("video_ids", []), part.get("audio_digests") or [None] * len(part.get("video_ids", [])))]
    seen_ids = {v for v, _ in trained if v}
    seen_ids_without_digest = {v for v, d in trained if v and not d}  # trained from --embeddings: ids only
    seen_audio = {d for _, d in trained if d}
    by_audio = np.array([d is not None and d in seen_audio for d in digests], dtype=bool)
    by_id = np.array([bool(v) and v in seen_ids for v in video_ids], dtype=bool)
    by_id_alone = np.array([bool(v) and (d is None or v in seen_ids_without_digest)
                            for v, d in zip(video_ids, digests)], dtype=bool)
    # The audio decides where both sides have a digest: a video id can name other audio (generated
    # data, several segments of one video); it decides alone where either side has none.
    hit = by_audio | (by_id & by_id_alone)
    n = len(hit)
    return {"clips": int(hit.sum()), "fraction": float(hit.mean()) if n else None,
            "by_audio": int(by_audio.sum()), "by_video_id": int(by_id.sum()), "evaluated": n,
            "definition": "evaluated clips whose audio bytes (sha256) match a training or validation clip of "
                          "the checkpoint (video_id where either clip has no audio digest); by_video_id counts every "
                          "video_id match"}
