"""Paired clip bootstrap of mAP and acc@1: resamples, percentile intervals, paired differences."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hyperbolic.metrics.classification import _check_inputs, expected_hits


def bootstrap_samples(scores, targets, *, n: int, seed: int) -> dict[str, np.ndarray]:
    """mAP and acc@1 of each of ``n`` resamples of the clips: ``{"mAP": (n,), "acc@1": (n,)}``.

    Resample b (b = 0..n-1) takes ``idx = rng.integers(0, N, size=N)`` in that order from
    ``rng = np.random.default_rng(seed)``, so a result can be reproduced draw by draw, and two
    models given the same seed and N see the same resamples (``bootstrap_difference``).

    A clip drawn m times counts m times (weights), but its copies do not rank against each
    other: in each class, a drawn positive with score x has precision
    ``(P_ge - m + 1) / (N_ge - m + 1)``, where ``P_ge`` and ``N_ge`` are the weighted counts of
    positives and of clips scoring >= x, i.e. its own copies count once, as the clip does in
    the data. Treating the copies as one tie instead (scikit-learn on the duplicated rows)
    credits each copy with all the others as hits at its own rank, which biases resampled mAP
    upward: on random 4000 x 60 scores with 1% positives (200 resamples) the point mAP 0.0212
    lay below the whole 95% interval [0.0216, 0.0236]; this rule gives [0.0202, 0.0218]. The resample's
    AP of a class is the weighted mean of these precisions over its drawn positives, and its
    mAP averages over the classes with >= 1 positive drawn. Without duplicates (all m = 1)
    this is scikit-learn's AP. acc@1 is the weighted mean of the clips' expected hits (ties
    ordered at random, as ``classification_metrics``).
    """
    s, t = _check_inputs(scores, targets)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    num_clips = s.shape[0]
    hit1 = expected_hits(s, t, (1,))[1]

    # Per class, fixed across resamples: clip order by ascending score, and for each
    # positive its count of clips (and of positives) scoring strictly lower.
    cols = np.flatnonzero(t.any(axis=0))
    order = np.argsort(s[:, cols].T, axis=1).astype(np.int32)  # (Q, N)
    per_class = []
    for row, col in enumerate(cols):
        v = s[order[row], col]
        clips = np.flatnonzero(t[:, col])
        x = s[clips, col]
        u_order = np.argsort(x)
        per_class.append((clips[u_order], np.searchsorted(v, x[u_order], side="left"),
                          np.searchsorted(x[u_order], x[u_order], side="left")))

    rng = np.random.default_rng(seed)
    maps = np.empty(int(n))
    accs = np.empty(int(n))
    for b in range(int(n)):
        # int32 holds any count up to N and halves the memory traffic of the gather below.
        w = np.bincount(rng.integers(0, num_clips, size=num_clips),
                        minlength=num_clips).astype(np.int32)
        accs[b] = np.dot(w, hit1) / num_clips
        # Weight below each position of each class's sorted column: cum[q, i] = sum of the
        # weights of the i lowest-scoring clips.
        cum = np.zeros((len(cols), num_clips + 1), dtype=np.int32)
        np.cumsum(w[order], axis=1, out=cum[:, 1:])
        aps = []
        for row, (clips, n_lt, p_lt) in enumerate(per_class):
            wp = w[clips].astype(np.float64)
            if not wp.any():
                continue  # class absent from this resample
            pos_cum = np.concatenate(([0.0], np.cumsum(wp)))
            p_ge = pos_cum[-1] - pos_cum[p_lt]
            n_ge = cum[row, -1] - cum[row, n_lt]
            d = wp > 0  # undrawn positives add nothing, and may have n_ge == 0
            # Own copies count once: n_ge - m + 1 >= 1 since n_ge includes the m copies.
            precision = (p_ge[d] - wp[d] + 1) / (n_ge[d] - wp[d] + 1)
            aps.append(np.sum(wp[d] * precision) / pos_cum[-1])
        maps[b] = np.mean(aps)
    return {"mAP": maps, "acc@1": accs}


def _check_alpha(alpha: float) -> list[float]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")
    return [100 * alpha / 2, 100 * (1 - alpha / 2)]


def bootstrap_ci(scores, targets, *, n: int, seed: int, alpha: float = 0.05,
                 samples: dict[str, np.ndarray] | None = None) -> dict:
    """Percentile bootstrap intervals of mAP and acc@1 over clips.

    The values are ``bootstrap_samples(scores, targets, n=n, seed=seed)`` (pass them as
    ``samples`` when already computed); the interval is
    ``np.percentile(values, [100 alpha/2, 100 (1 - alpha/2)])``.

    Returns ``{"mAP": {"low", "high"}, "acc@1": {"low", "high"}, "n", "seed", "alpha"}``.
    """
    q = _check_alpha(alpha)
    if samples is None:
        samples = bootstrap_samples(scores, targets, n=n, seed=seed)
    out: dict = {}
    for key in ("mAP", "acc@1"):
        lo, hi = np.percentile(samples[key], q)
        out[key] = {"low": float(lo), "high": float(hi)}
    return {**out, "n": int(n), "seed": int(seed), "alpha": float(alpha)}


def bootstrap_difference(samples: dict[str, np.ndarray], baseline: dict[str, np.ndarray],
                         point: Mapping[str, float], baseline_point: Mapping[str, float], *,
                         alpha: float = 0.05) -> dict:
    """Paired bootstrap of a difference between two models scored on the same clips.

    ``samples`` and ``baseline`` come from ``bootstrap_samples`` with the same seed, n and
    clips, so resample b is the same set of clips for both. For each key (mAP, acc@1):
    ``diff = point - baseline_point``; ``low``, ``high``: the percentile interval of
    ``samples[key] - baseline[key]``. Pairing removes the clip-to-clip variation the two
    models share, so the interval is narrower than one read off two separate intervals.
    """
    q = _check_alpha(alpha)
    out = {}
    for key in ("mAP", "acc@1"):
        if len(samples[key]) != len(baseline[key]):
            raise ValueError(f"paired bootstrap needs the same resamples ({len(samples[key])} vs "
                             f"{len(baseline[key])} values of {key})")
        lo, hi = np.percentile(np.asarray(samples[key]) - np.asarray(baseline[key]), q)
        out[key] = {"diff": float(point[key] - baseline_point[key]), "low": float(lo), "high": float(hi)}
    return out
