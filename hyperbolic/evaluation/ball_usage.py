"""Does a model use the ball? Radii of its points, and how far its ranking is from a cosine one.

Relative radius: ``sqrt(c)|x|``, a point's norm as a fraction of the ball radius ``1/sqrt(c)``
(0 at the origin, 1 on the boundary). A point is on the clip sphere when its relative radius is
within ``ON_SPHERE_TOL`` of the clip radius.

Why the ranking comparison: when all of a clip's candidate prompts sit at one radius, ``-d_c`` is
a decreasing function of the angle between the clip and the prompt, so the class ranking is the
cosine ranking of the projected points' directions: the ball adds nothing to a linear map +
cosine. ``top1_same_as_cosine`` (fraction of clips whose top class is the same under both) and
``rank_corr_with_cosine`` (mean over clips of the Spearman correlation of the two class rankings,
ties at their average rank) tell how far a trained model is from that case; 1.0 means no
difference at all.
"""

from __future__ import annotations

import numpy as np
import torch

from hyperbolic.geometry.poincare import BOUNDARY_RESOLUTION

# Points within this of the clip radius (in units of the ball radius) count as on the clip
# sphere. float32 recomputes a clipped point's relative radius to ~1e-6; 1e-4 leaves room for
# that and still tells a clipped point from one at 0.8999 of the radius only loosely, by design.
ON_SPHERE_TOL = 1e-4
CHUNK = 4096  # clips ranked at a time: bounds memory at CHUNK x C floats


def relative_radius(x: torch.Tensor, *, c: float) -> np.ndarray:
    """``sqrt(c)|x|`` of (N, D) points -> (N,) float64 array in [0, 1)."""
    return (x.double().norm(dim=-1) * float(c) ** 0.5).numpy()


def clip_sphere(clip_radius: float | None) -> float | None:
    """The relative radius of a clip sphere, None when nothing is clipped (no clip, or >= 1)."""
    return clip_radius if clip_radius is not None and clip_radius < 1 else None


def radius_summary(radius: np.ndarray, clip_radius: float | None, dtype: torch.dtype = torch.float32) -> dict:
    """``{relative_radius: {min, p10, median, p90, max}, on_clip_sphere, at_numerical_boundary}``
    of float64 relative radii; ``clip_radius`` None or >= 1: nothing is clipped (``on_clip_sphere``
    0.0). ``at_numerical_boundary``: the fraction whose ``1 - c|x|^2 = 1 - radius^2`` is within
    ``poincare.BOUNDARY_RESOLUTION`` of the points' ``dtype``. Empty input: every value None."""
    clip_radius = clip_sphere(clip_radius)
    if len(radius) == 0:
        return {"relative_radius": dict.fromkeys(("min", "p10", "median", "p90", "max")), "on_clip_sphere": None,
                "at_numerical_boundary": None}
    q = np.quantile(radius, [0.0, 0.1, 0.5, 0.9, 1.0])
    on = 0.0 if clip_radius is None else float(np.mean(radius >= clip_radius - ON_SPHERE_TOL))
    boundary = float(np.mean(1 - np.square(radius) <= BOUNDARY_RESOLUTION[dtype]))
    return {"relative_radius": dict(zip(("min", "p10", "median", "p90", "max"), map(float, q))),
            "on_clip_sphere": on, "at_numerical_boundary": boundary}


def radius_resolved(radius: np.ndarray, dtype: torch.dtype = torch.float32) -> str | None:
    """None when float64 relative radii of points stored in ``dtype`` have a spread above that
    dtype's resolution (``poincare.BOUNDARY_RESOLUTION``); otherwise the reason a statistic of them
    (a rank correlation with depth) would be computed on rounding noise."""
    if len(radius) and np.ptp(radius) <= BOUNDARY_RESOLUTION[dtype]:
        return (f"every point at the same radius within {dtype} resolution (spread {np.ptp(radius):.1e} <= "
                f"{BOUNDARY_RESOLUTION[dtype]:.1e}): a rank over it would rank rounding noise")
    return None


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x, axis=1)`` (ties at their average rank), float64. A row without
    ties gets its ranks from one argsort (the same values; 3x faster at 20,000 x 527), the
    others from rankdata."""
    order = np.argsort(x, axis=1)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1.0, x.shape[1] + 1), x.shape), axis=1)
    tied = (np.diff(np.take_along_axis(x, order, axis=1), axis=1) == 0).any(axis=1)
    if tied.any():
        from scipy.stats import rankdata  # ~0.5 s to import: only for rows with ties
        ranks[tied] = rankdata(x[tied], axis=1)
    return ranks


def ranking_vs_cosine(scores: np.ndarray, audio_pts: torch.Tensor, text_pts: torch.Tensor) -> dict:
    """Compare each clip's class ranking under ``scores`` (N, C) with the cosine ranking of the
    directions of ``audio_pts`` (N, D) and ``text_pts`` (C, D).

    Returns ``{top1_same_as_cosine, rank_corr_with_cosine, rank_corr_clips}``; a clip whose scores
    or cosines are all equal has no rank correlation and is left out of the mean (counted by
    ``rank_corr_clips``)."""
    t = torch.nn.functional.normalize(text_pts.double(), dim=-1)
    same, corr = [], []
    for i in range(0, len(scores), CHUNK):
        s = scores[i:i + CHUNK].astype(np.float64)
        cos = (torch.nn.functional.normalize(audio_pts[i:i + CHUNK].double(), dim=-1) @ t.T).numpy()
        same.append(s.argmax(axis=1) == cos.argmax(axis=1))
        corr.append(_row_pearson(average_ranks(s), average_ranks(cos)))
    same = np.concatenate(same) if same else np.empty(0, dtype=bool)
    corr = np.concatenate(corr) if corr else np.empty(0)
    valid = corr[~np.isnan(corr)]
    return {"top1_same_as_cosine": float(same.mean()) if len(same) else None,
            "rank_corr_with_cosine": float(valid.mean()) if len(valid) else None,
            "rank_corr_clips": int(len(valid))}


def ball_usage(audio_pts: torch.Tensor, text_pts: torch.Tensor, scores: np.ndarray, *, c: float,
               clip_radius: float | None) -> dict:
    """The results block of a hyperbolic model: ``{audio: radius_summary, text: radius_summary,
    top1_same_as_cosine, rank_corr_with_cosine, rank_corr_clips, clip_radius}``.

    ``audio_pts`` (N, D) and ``text_pts`` (C, D): the projected points ``scores`` (N, C) come from;
    ``clip_radius``: the relative radius of the model's clip sphere (None or >= 1: no clip)."""
    return {"audio": radius_summary(relative_radius(audio_pts, c=c), clip_radius, audio_pts.dtype),
            "text": radius_summary(relative_radius(text_pts, c=c), clip_radius, text_pts.dtype),
            **ranking_vs_cosine(scores, audio_pts, text_pts),
            "clip_radius": clip_sphere(clip_radius),
            "definition": "relative radius = sqrt(c)|x| (fraction of the ball radius); on_clip_sphere: "
                          f"within {ON_SPHERE_TOL:g} of clip_radius; at_numerical_boundary: 1 - c|x|^2 within "
                          "the points' dtype resolution (poincare.BOUNDARY_RESOLUTION); rankings compared per clip against the "
                          "cosine of the same projected points' directions (see hyperbolic.evaluation.ball_usage)"}


def epoch_usage(audio_pts: torch.Tensor, text_pts: torch.Tensor, *, c: float, clip_radius: float | None) -> dict:
    """The per-epoch numbers: median relative radius and fraction on the clip sphere, for the
    validation audio and for the seen prompts (flat keys, for setup.json rows and trackers)."""
    out = {}
    for name, pts in (("audio", audio_pts), ("text", text_pts)):
        summary = radius_summary(relative_radius(pts, c=c), clip_radius)
        out[f"val_{name}_radius_median"] = summary["relative_radius"]["median"]
        out[f"val_{name}_on_clip_sphere"] = summary["on_clip_sphere"]
    return out
