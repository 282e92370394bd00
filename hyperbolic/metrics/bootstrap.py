"""Paired clip bootstrap of mAP and acc@1: resamples, percentile intervals, paired differences."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hyperbolic.metrics.classification import _check_inputs, expected_hits

# Resamples per block, and positives per chunk of classes: at 20,000 x 527, blocks of 100
# resamples ran fastest (250 were 4x slower), and chunks of ~1,000 positives keep each
# chunk's (rows, 100) temporaries in the cache (one chunk of all 60,000 was 3x slower).
_BLOCK = 100
_CHUNK = 1000


@dataclass(frozen=True)
class _Chunk:
    """What stays fixed across resamples, for a run of consecutive classes.

    The positives of each class are stacked, each class's in ascending score order
    ``x_0 <= ... <= x_{p-1}``. A class has ``p + 1`` gap rows: clip j lies in gap ``g(j)`` =
    the number of its positives scoring <= s_j, so it counts in the ``n_ge`` of positive k
    exactly when ``k < g(j)``. ``gaps`` (rows, N) holds these 0/1 memberships except for the
    largest gap of each class, whose weight is N minus the others' (a resample's weights add
    up to N): the product skips as many clips as it can.
    """
    gaps: sp.csr_matrix
    row_start: np.ndarray   # (Q + 1,) first gap row of each class, then the total
    skipped: np.ndarray     # (Q,) the row left out of ``gaps``
    clips: np.ndarray       # (P,) clip of each positive
    pos_start: np.ndarray   # (Q + 1,) first positive of each class, then P
    ge_lo: np.ndarray       # (P,) n_ge = cum[ge_hi] - cum[ge_lo] over the gap rows
    ge_hi: np.ndarray
    p_lo: np.ndarray        # (P,) p_ge = cum[p_hi] - cum[p_lo] over the positives (ties count)
    p_hi: np.ndarray


def _chunks(s: np.ndarray, t: np.ndarray) -> list[_Chunk]:
    """The classes with >= 1 positive, in column order, cut into chunks of ~``_CHUNK`` positives."""
    cols = np.flatnonzero(t.any(axis=0))
    st = np.ascontiguousarray(s[:, cols].T)  # one class per row: the searches read it 527 times
    sizes = t[:, cols].sum(axis=0)
    chunks, first = [], 0
    for last in range(len(cols)):
        if last == len(cols) - 1 or sizes[first:last + 1].sum() >= _CHUNK:
            chunks.append(_chunk(st[first:last + 1], t[:, cols[first:last + 1]]))
            first = last + 1
    return chunks


def _chunk(st: np.ndarray, t: np.ndarray) -> _Chunk:
    num_clips = st.shape[1]
    clips, rows, members, skipped, ge_lo, p_lo = [], [], [], [], [], []
    row_start, pos_start = [0], [0]
    for q, v in enumerate(st):
        pos = np.flatnonzero(t[:, q])
        pos = pos[np.argsort(v[pos], kind="stable")]
        x = v[pos]
        gap = np.searchsorted(x, v, side="right")
        skip = int(np.argmax(np.bincount(gap, minlength=len(x) + 1)))
        keep = np.flatnonzero(gap != skip)
        # CSR order: by row, clips ascending (a stable radix sort when the gaps fit 16 bits)
        narrow = gap[keep].astype(np.uint16) if len(x) < 2 ** 16 else gap[keep]
        keep = keep[np.argsort(narrow, kind="stable")]
        a, first = row_start[-1], pos_start[-1]
        rows.append(a + gap[keep])
        members.append(keep)
        skipped.append(a + skip)
        clips.append(pos)
        ge_lo.append(a + 1 + np.arange(len(x)))  # gaps k+1..p of positive k
        p_lo.append(first + np.searchsorted(x, x, side="left"))  # positives scoring >= x_k
        row_start.append(a + len(x) + 1)
        pos_start.append(first + len(x))
    rows, members = np.concatenate(rows), np.concatenate(members)
    row_start, pos_start = np.asarray(row_start), np.asarray(pos_start)
    sizes = np.diff(pos_start)
    indptr = np.zeros(row_start[-1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=row_start[-1]), out=indptr[1:])
    gaps = sp.csr_matrix((np.ones(len(members), dtype=_weight_dtype(num_clips)), members, indptr),
                         shape=(row_start[-1], num_clips))
    return _Chunk(gaps=gaps, row_start=row_start, skipped=np.asarray(skipped), clips=np.concatenate(clips),
                  pos_start=pos_start, ge_lo=np.concatenate(ge_lo), ge_hi=np.repeat(row_start[1:], sizes),
                  p_lo=np.concatenate(p_lo), p_hi=np.repeat(pos_start[1:], sizes))


def _weight_dtype(num_clips: int) -> type:
    """Weights and gap sums are counts <= N: int16 holds them exactly when N fits (and its
    sparse product ran fastest), float32 up to 2**24, float64 beyond."""
    if num_clips <= np.iinfo(np.int16).max:
        return np.int16
    return np.float32 if num_clips <= 2 ** 24 else np.float64


def _chunk_aps(ch: _Chunk, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP of every class of a chunk in each of a block of resamples, ``w`` (N, B) their clip
    weights: ``(aps (Q, B), present (Q, B))``; a class absent from a resample: AP 0, present False."""
    num_clips = w.shape[0]
    gap = (ch.gaps @ w).astype(np.int64)
    gap[ch.skipped] = num_clips - np.add.reduceat(gap, ch.row_start[:-1], axis=0)
    cum = np.zeros((len(gap) + 1, w.shape[1]), dtype=np.int64)
    np.cumsum(gap, axis=0, out=cum[1:])
    n_ge = (cum[ch.ge_hi] - cum[ch.ge_lo]).astype(np.float64)
    wp = w[ch.clips].astype(np.float64)
    pos_cum = np.zeros((len(wp) + 1, w.shape[1]))
    np.cumsum(wp, axis=0, out=pos_cum[1:])
    p_ge = pos_cum[ch.p_hi] - pos_cum[ch.p_lo]
    # Own copies count once: n_ge - m + 1 >= 1 when m >= 1 copies are drawn, as n_ge includes
    # them; undrawn positives (m = 0) add nothing.
    precision = np.divide(p_ge - wp + 1, n_ge - wp + 1, out=np.zeros_like(wp), where=wp > 0)
    total = pos_cum[ch.pos_start[1:]] - pos_cum[ch.pos_start[:-1]]
    hits = np.add.reduceat(wp * precision, ch.pos_start[:-1], axis=0)
    present = total > 0
    return np.divide(hits, total, out=np.zeros_like(hits), where=present), present


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

    Cost: the weighted counts ``N_ge`` of a block of resamples are one sparse product of the
    clips-by-gap memberships (``_Chunk``) with the block's weights, about 1.5 s per 1,000
    resamples of 20,000 x 527. The counts are exact integers, so every precision is exactly
    what a per-resample loop gets; only the order of the float sums over a class's positives
    differs (values agree to ~1e-16).
    """
    s, t = _check_inputs(scores, targets)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    num_clips = s.shape[0]
    hit1 = expected_hits(s, t, (1,))[1]
    chunks = _chunks(s, t)
    rng = np.random.default_rng(seed)
    maps = np.empty(int(n))
    accs = np.empty(int(n))
    for first in range(0, int(n), _BLOCK):
        size = min(_BLOCK, int(n) - first)
        draws = np.empty((size, num_clips), dtype=_weight_dtype(num_clips))
        for i in range(size):
            draws[i] = np.bincount(rng.integers(0, num_clips, size=num_clips), minlength=num_clips)
        # One matrix-vector product per block: a dot product per resample of these int16 weights
        # with float64 hits took 7-20 ms each (no BLAS for mixed types) on the shared VM.
        accs[first:first + size] = (draws.astype(np.float64) @ hit1) / num_clips
        w = np.ascontiguousarray(draws.T)  # (N, B): the sparse product reads a clip's B weights at once
        parts = [_chunk_aps(ch, w) for ch in chunks]
        aps, present = np.concatenate([a for a, _ in parts]), np.concatenate([p for _, p in parts])
        for i in range(size):
            maps[first + i] = np.mean(aps[present[:, i], i])
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
