"""What the radius means: the ``radius`` block of each model in the results (docs/evaluation.md,
"What the radius means").

- ``hubness`` (every model): do a few classes sit in everybody's top 10?
- ``logit_split`` (hyperbolic): how much of the class ranking the prompts' angles and radii carry.
- ``genericity`` (hyperbolic): is a clip's radius related to how many labels it has, or how deep
  they sit in the ontology?
- ``confidence`` (every model; the radius one hyperbolic only): risk-coverage curves and their area.
- ``modality_gap`` (every model): where the audio and the text points sit, and how far apart the
  two clouds' centres are.

A figure that a model cannot have is null with a ``*_skipped`` reason beside it. Ties never depend
on class order: the top-k sets and top-1 correctness are expected values over random tie orders
(``hyperbolic.metrics.classification``), and so are the risk-coverage curves (confidence ties).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.special import log_softmax

from hyperbolic.evaluation.ball_usage import CHUNK, _row_pearson, relative_radius
from hyperbolic.geometry import poincare
from hyperbolic.metrics.classification import _topk_expected, expected_hits

HUB_K = 10  # N_k: how many clips have a class among their top k
COVERAGE_POINTS = 20  # risk-coverage curve written at coverage 1/20, 2/20, ..., 1
NOT_HYPERBOLIC = ("not a hyperbolic model (plain CLAP, euclidean, euclidean-distance): its points have no radius "
                  "in a ball")


def _is_hyperbolic(model) -> bool:
    return model.projector is not None and model.geometry == "hyperbolic"


# ------------------------------------------------------------------------------- hubness

def skewness(x: np.ndarray) -> float:
    """``scipy.stats.skew(x)`` (Fisher, ``bias=True``) of a 1-D float64 array with some spread,
    in the same operations, so the same bits (tested), without importing scipy.stats (~0.5 s of
    every evaluation's start): ``m3 / m2 ** 1.5`` over the deviations from the mean."""
    x = np.asarray(x, dtype=np.float64)
    dev = x - np.mean(x, axis=0, keepdims=True)
    m2 = np.mean(dev ** 2, axis=0)
    cube = dev ** 2
    cube *= dev
    return float(np.mean(cube, axis=0) / m2 ** 1.5)


def hubness(scores: np.ndarray, *, k: int = HUB_K) -> dict:
    """Hubness of an ``(N, C)`` score matrix (Radovanović et al. 2010).

    ``N_k(j)``: how many clips have class j among their top k (a tie cut by the k-th place counts
    ``places left / group size`` for each of its members). ``skewness_N{k}``: Fisher skewness of
    ``N_k`` over the classes (``skewness``: ``scipy.stats.skew``, ``bias=True``), null when every
    class has the same ``N_k``. ``top1_hub_share``: the share of clips whose top 1 is the most
    frequent top-1 class (expected over ties), ``top1_hub_class`` its index.
    """
    s = np.asarray(scores)
    n, c = s.shape
    if n == 0:
        return {"k": k, f"skewness_N{k}": None, "top1_hub_share": None, "top1_hub_class": None,
                "skipped": "no clip"}
    counts = np.zeros(c)
    top1 = np.zeros(c)
    for a in range(0, n, CHUNK):
        counts += _topk_expected(s[a:a + CHUNK], k).sum(axis=0)
        top1 += _topk_expected(s[a:a + CHUNK], 1).sum(axis=0)
    skew = None if np.ptp(counts) <= 1e-12 * max(1.0, counts.max()) else skewness(counts)
    hub = int(np.argmax(top1))
    out = {"k": k, f"skewness_N{k}": skew, "top1_hub_share": float(top1[hub] / n), "top1_hub_class": hub,
           "num_clips": int(n), "num_classes": int(c)}
    if skew is None:
        out["skewness_skipped"] = f"every class has the same N_{k}"
    return out


# --------------------------------------------------------------------------- logit split

def ranking_agreement(a: np.ndarray, b: np.ndarray, a_rank: np.ndarray | None = None) -> dict:
    """Agreement of two ``(N, C)`` rankings of the classes: ``top1_agreement`` (fraction of clips
    whose argmax is the same; ties to the lower index) and ``spearman`` (mean over clips of the
    Spearman correlation of the two rows, ties at their average rank; a clip with a constant row
    has none and is left out, ``spearman_clips`` counts the rest). ``a_rank``: ``a``'s row ranks
    when already computed (``stats.rankdata(a, axis=1)``)."""
    from scipy import stats  # imported here: ~0.5 s, which a plain evaluation does without
    same, corr = [], []
    for i in range(0, len(a), CHUNK):
        x, y = a[i:i + CHUNK].astype(np.float64), b[i:i + CHUNK].astype(np.float64)
        same.append(x.argmax(axis=1) == y.argmax(axis=1))
        rx = stats.rankdata(x, axis=1) if a_rank is None else a_rank[i:i + CHUNK]
        corr.append(_row_pearson(rx, stats.rankdata(y, axis=1)))
    same = np.concatenate(same) if same else np.empty(0, dtype=bool)
    corr = np.concatenate(corr) if corr else np.empty(0)
    valid = corr[~np.isnan(corr)]
    return {"top1_agreement": float(same.mean()) if len(same) else None,
            "spearman": float(valid.mean()) if len(valid) else None, "spearman_clips": len(valid)}


def prompts_at_median_radius(t: torch.Tensor) -> torch.Tensor:
    """``(C, D)`` prompts, each moved along its own ray to the median prompt norm (float64)."""
    t = t.double()
    norm = t.norm(dim=-1, keepdim=True)
    return t / norm.clamp_min(poincare.MIN_NORM) * norm.median()


def prompts_on_one_ray(t: torch.Tensor) -> torch.Tensor:
    """``(C, D)`` prompts, each moved to the mean direction of the prompts (the normalised mean of
    their unit vectors), keeping its norm (float64)."""
    t = t.double()
    norm = t.norm(dim=-1, keepdim=True)
    direction = (t / norm.clamp_min(poincare.MIN_NORM)).mean(0)
    return direction / direction.norm().clamp_min(poincare.MIN_NORM) * norm


def logit_split(model, audio_pts: torch.Tensor, text_pts: torch.Tensor, scores: np.ndarray) -> dict:
    """How much of a hyperbolic model's ranking the prompts' angles and radii carry.

    The model's scores are compared (``ranking_agreement``) with its scores against (i) every
    prompt moved to the median prompt radius, keeping its direction (``angle_only``: the ranking
    the directions alone give) and (ii) every prompt moved to one direction, the prompts' mean
    direction, keeping its radius (``radius_only``). Radius-only agreement near 1 with low
    angle-only agreement says the radius acts as a per-class bias."""
    if not _is_hyperbolic(model):
        return {"angle_only": None, "radius_only": None, "skipped": NOT_HYPERBOLIC}
    from scipy import stats  # imported here: ~0.5 s, which a plain evaluation does without
    norm = text_pts.double().norm(dim=-1)
    rank = stats.rankdata(scores.astype(np.float64), axis=1)  # the model's ranks, shared by both comparisons
    out = {}
    for key, moved in (("angle_only", prompts_at_median_radius(text_pts)),
                       ("radius_only", prompts_on_one_ray(text_pts))):
        out[key] = ranking_agreement(scores, model.score_points(audio_pts, moved.to(text_pts.dtype)), rank)
    spread = float((norm.max() - norm.min()) * model.c ** 0.5)
    out.update(prompt_radius_spread=spread,
               definition="agreement of the model's class ranking with the ranking against (angle_only) every "
                          "prompt at the median prompt radius, own direction; (radius_only) every prompt on the "
                          "prompts' mean direction, own radius")
    return out


# ----------------------------------------------------------------------------- genericity

def _spearman_or_reason(x, y, what: str) -> dict:
    from scipy import stats  # imported here: ~0.5 s, which a plain evaluation does without
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return {"rho": None, "n": len(x), "skipped": f"fewer than 3 clips with a {what}"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "n": len(x), "skipped": f"constant input: every clip has the same "
                f"{'radius' if np.ptp(x) == 0 else what}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        res = stats.spearmanr(x, y)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": len(x)}


def genericity(radius: np.ndarray, label_counts: np.ndarray, label_depths: np.ndarray | None) -> dict:
    """Spearman of each labelled clip's radius (``(N,)``) with its number of labels (``(N,)``)
    and with the mean ontology depth of its labels (``(N,)``, NaN where no label has a depth;
    None without ``--ontology``)."""
    out = {"radius_vs_num_labels": _spearman_or_reason(radius, label_counts, "number of labels")}
    if label_depths is None:
        out["radius_vs_label_depth"] = {"rho": None, "n": 0, "skipped": "no --ontology: labels have no depth"}
    else:
        known = ~np.isnan(label_depths)
        out["radius_vs_label_depth"] = _spearman_or_reason(radius[known], label_depths[known], "label depth")
    return out


# ---------------------------------------------------------------------- risk and coverage

def risk_coverage(errors: np.ndarray, confidence: np.ndarray) -> dict:
    """Risk-coverage curve of selective classification (Geifman and El-Yaniv 2017).

    Clips sorted by ``confidence`` (``(N,)``), most confident first; ``errors`` (``(N,)`` in
    [0, 1]) is each clip's (expected) top-1 error. ``risk(i)``: the mean error of the i most
    confident clips, the expected value over random orders inside confidence ties (a tie group
    of g clips with e errors in all contributes ``j e / g`` when j of them are taken).
    ``aurc = (1/N) sum_i risk(i)``; ``aurc_random`` (a confidence that knows nothing) equals the
    error rate; ``aurc_optimal`` is the AURC of the confidence that ranks every correct clip first.
    ``curve``: risk at coverage ``k / COVERAGE_POINTS``, k = 1..COVERAGE_POINTS."""
    e = np.asarray(errors, dtype=np.float64)
    n = len(e)
    if n == 0:
        return {"aurc": None, "skipped": "no labelled clip"}
    risk = _risk(e, np.asarray(confidence, dtype=np.float64))
    take = np.maximum(1, np.round(np.arange(1, COVERAGE_POINTS + 1) / COVERAGE_POINTS * n).astype(int))
    return {"aurc": float(risk.mean()), "aurc_random": float(e.mean()), "aurc_optimal": float(_risk(e, -e).mean()),
            "curve": [{"coverage": float(i / n), "risk": float(risk[i - 1])} for i in take]}


def _risk(e: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], e[order]
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    sizes = np.diff(np.r_[starts, len(conf)])
    group_err = np.add.reduceat(err, starts)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]
    group = np.repeat(np.arange(len(starts)), sizes)
    taken = np.arange(len(conf)) - starts[group] + 1  # clips of its tie group taken so far
    cumulative = before[group] + taken * group_err[group] / sizes[group]
    return cumulative / np.arange(1, len(conf) + 1)


def confidences(scores: np.ndarray) -> dict[str, np.ndarray]:
    """``max_softmax`` (largest softmax probability of the scores taken as logits) and ``margin``
    (top-1 score minus top-2 score) of each row of ``(N, C)`` scores."""
    s = np.asarray(scores, dtype=np.float64)
    top2 = -np.partition(-s, min(1, s.shape[1] - 1), axis=1)[:, :2]
    return {"max_softmax": np.exp(log_softmax(s, axis=1).max(axis=1)),
            "margin": top2[:, 0] - top2[:, -1]}


def confidence_block(model, scores: np.ndarray, targets: np.ndarray, audio_pts: torch.Tensor) -> dict:
    """Risk-coverage of the labelled clips' top 1, with confidence = max softmax, = top-1 margin
    and (hyperbolic) = the audio point's relative radius."""
    errors = 1.0 - expected_hits(scores.astype(np.float64), targets, [1])[1]
    out = {name: risk_coverage(errors, conf) for name, conf in confidences(scores).items()}
    out["radius"] = (risk_coverage(errors, relative_radius(audio_pts, c=model.c)) if _is_hyperbolic(model)
                     else {"aurc": None, "skipped": NOT_HYPERBOLIC})
    return out


# -------------------------------------------------------------------------- modality gap

def modality_gap(model, audio_pts: torch.Tensor, text_pts: torch.Tensor) -> dict:
    """Median relative radius of the audio and of the class prompts, and the distance between
    the two modalities' centres: hyperbolic, the geodesic distance ``d_c`` between their Fréchet
    means (``poincare.frechet_mean``, float64); otherwise the angle (radians) between their mean
    directions (the normalised means of the unit vectors)."""
    if len(audio_pts) == 0 or len(text_pts) == 0:
        return {"centroid_distance": None, "skipped": "no points"}
    if _is_hyperbolic(model):
        a, t = audio_pts.double(), text_pts.double()
        ma, mt = poincare.frechet_mean(a, c=model.c), poincare.frechet_mean(t, c=model.c)
        return {"audio_radius_median": float(np.median(relative_radius(a, c=model.c))),
                "text_radius_median": float(np.median(relative_radius(t, c=model.c))),
                "centroid_distance": float(poincare.pairwise_dist(ma[None], mt[None], c=model.c)[0, 0]),
                "centroid": "Frechet means in the ball; distance d_c between them"}
    ua = torch.nn.functional.normalize(audio_pts.double(), dim=-1).mean(0)
    ut = torch.nn.functional.normalize(text_pts.double(), dim=-1).mean(0)
    return {"audio_radius_median": None, "text_radius_median": None,
            "radius_skipped": NOT_HYPERBOLIC,
            "centroid_distance": float(poincare._angle(ua, ut)),
            "centroid": "mean directions of the unit vectors; angle between them in radians"}


# ----------------------------------------------------------------------------- the block

def radius_block(model, audio_pts: torch.Tensor, text_pts: torch.Tensor, scores: np.ndarray,
                 labelled: np.ndarray, targets: np.ndarray, raw_targets: np.ndarray,
                 class_depths: list | None) -> dict:
    """The ``radius`` block of one model. ``audio_pts`` (N, D), ``scores`` (N, C): every embedded
    clip; ``labelled`` (N,) bool; ``targets`` (N_labelled, C) the run's ground truth;
    ``raw_targets`` (N_labelled, C) the clips' own labels (no ancestors); ``class_depths`` (C,)
    ontology depth per class (None: unmatched), or None without ``--ontology``."""
    lab = torch.from_numpy(labelled)
    out = {"hubness": hubness(scores), "logit_split": logit_split(model, audio_pts, text_pts, scores),
           "modality_gap": modality_gap(model, audio_pts, text_pts)}
    if not labelled.any():
        out.update(genericity=None, confidence=None, skipped_labelled="no labelled clip")
        return out
    out["confidence"] = confidence_block(model, scores[labelled], targets, audio_pts[lab])
    if _is_hyperbolic(model):
        depths = None
        if class_depths is not None:
            d = np.array([np.nan if x is None else x for x in class_depths], dtype=np.float64)
            known = raw_targets & ~np.isnan(d)[None, :]
            with np.errstate(invalid="ignore"):
                depths = np.where(known.any(1), (known * np.nan_to_num(d)).sum(1) / known.sum(1), np.nan)
        out["genericity"] = genericity(relative_radius(audio_pts[lab], c=model.c), raw_targets.sum(1), depths)
    else:
        out["genericity"] = {"radius_vs_num_labels": None, "radius_vs_label_depth": None, "skipped": NOT_HYPERBOLIC}
    return out
