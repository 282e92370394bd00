"""Zero-shot multi-label metrics from an (N, C) score matrix.

Conventions, shared by every function here:

- ``scores`` is a real ``(N, C)`` array, one row per clip, one column per class, higher
  means more likely. NaN is rejected. float32 and float64 are compared as given (float32
  sorts faster); other dtypes are converted to float64.
- ``targets`` is a boolean ``(N, C)`` array (0/1 integers are accepted). Every row must hold
  at least one true label: clips without a known label are excluded by the caller, because
  a clip with nothing to find has no defined ranking metric and would silently add
  negatives to every class.
- Ties: acc@k, R@k and the top-k predicted sets are the expected value over a uniformly
  random order inside every tie, so class (or clip) order never matters: a tie group that
  straddles the k-th place puts each of its members in the top k with probability
  ``places left / group size``, and holds a true label there with probability
  ``1 - hypergeom.pmf(0, group size, true in group, places left)``. A model whose scores are
  all equal gets ``acc@1 = mean over clips of #labels / C``. AP@10 (``t2a_mAP@10``, ``ap_at_k``)
  is the exact expected value over random tie orders too. ``mistake_severity``'s ``hier_dist@k``
  (``hyperbolic.metrics.hierarchy``) still ranks ties by the lower index
  (``np.argsort(-s, kind="stable")``); the predictions list orders them so and flags them. Average precision and ROC AUC do not depend on the
  order inside a tie: they follow scikit-learn, which treats a tie as one threshold.
- A value that is undefined or infinite is returned as ``None`` (results are written to JSON,
  which holds neither NaN nor inf).

AP and AUC are computed here in vectorized form rather than by calling scikit-learn once
per class or per clip: at 20,000 x 527 its per-class AP and AUC took about 1.8 s each, and
its per-clip AP loops over 20,000 rows. ``tests/test_metrics.py`` checks both against
``sklearn.metrics.average_precision_score`` and ``roc_auc_score``, ties included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import ndtri

__all__ = [
    "classification_metrics",
    "legacy_set_metrics",
    "per_class_ap",
    "retrieval_metrics",
]

# Elements per block in the per-clip AP pass: bounds the temporary (block, C) copies to a
# few tens of MB whatever N is.
_BLOCK_ELEMS = 1 << 22


# ---------------------------------------------------------------------------- validation

def _check_inputs(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32/float64 scores, bool targets); raise ValueError on any contract breach."""
    s = np.asarray(scores)
    t = np.asarray(targets)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N clips, C classes), got shape {s.shape}")
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} does not match scores shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError("no clips to evaluate (N == 0)")
    if s.shape[1] == 0:
        raise ValueError("no classes to evaluate (C == 0)")
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if t.dtype != np.bool_:
        if not np.isin(t, (0, 1)).all():
            raise ValueError("targets must be boolean (or 0/1)")
        t = t.astype(bool)
    empty = ~t.any(axis=1)
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} of {len(t)} clips have no true label (first: row "
            f"{int(np.argmax(empty))}); exclude unlabelled clips before computing metrics")
    return s, t


def _check_ks(ks: Iterable[int], name: str) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if any(k < 1 for k in out):
        raise ValueError(f"{name} must be positive integers (got {tuple(ks)})")
    return out


def _none_if_not_finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ----------------------------------------------------------------------- ranking helpers

def expected_hits(s: np.ndarray, t: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per row, the probability that a true entry is among the top k when every tie is ordered
    uniformly at random; ``{k: (R,) float}``. Every row needs a true entry.

    With ``b`` the row's best true score, ``above`` entries scoring more than ``b`` and a tie
    group of ``g`` entries at ``b`` holding ``m`` true ones: 0 if ``k <= above``, else
    ``1 - hypergeom.pmf(0, g, m, min(k - above, g))`` (no true entry among the
    ``k - above`` places the group fills). Only rows whose group is cut by the k-th place
    need the hypergeometric term; the others are exactly 0 or 1.
    """
    best = np.where(t, s, -np.inf).max(axis=1)
    at_best = s == best[:, None]
    above = np.count_nonzero(s > best[:, None], axis=1)
    group = np.count_nonzero(at_best, axis=1)
    true_in_group = np.count_nonzero(t & at_best, axis=1)
    out = {}
    for k in ks:
        places = k - above
        hit = (places > 0).astype(np.float64)
        cut = np.flatnonzero((places > 0) & (places < group) & (true_in_group < group))
        if cut.size:
            from scipy.stats import hypergeom  # ~0.5 s to import: only where a tie straddles the k-th place
            hit[cut] = 1.0 - hypergeom.pmf(0, group[cut], true_in_group[cut], places[cut])
        out[k] = hit
    return out


def _topk_expected(s: np.ndarray, k: int) -> np.ndarray:
    """``(R, M)`` float: the probability of each entry being in its row's top k when ties are
    ordered uniformly at random (k clipped to M). Entries above the k-th largest value get 1,
    the ``g`` entries equal to it share the ``p`` places left, ``p / g`` each, the rest 0."""
    m = s.shape[1]
    k = min(k, m)
    kth = np.partition(s, m - k, axis=1)[:, m - k]  # k-th largest value of each row
    gt = s > kth[:, None]
    eq = s == kth[:, None]
    share = (k - np.count_nonzero(gt, axis=1)) / np.count_nonzero(eq, axis=1)
    return np.where(gt, 1.0, np.where(eq, share[:, None], 0.0))


def _set_counts(t: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: (expected) true positives, predicted count and positives, each ``(C,)``."""
    predicted = predicted.astype(np.float64, copy=False)
    tp = np.einsum("ij,ij->j", predicted, t.astype(np.float64))
    return tp, predicted.sum(axis=0), np.count_nonzero(t, axis=0).astype(np.float64)


def _ratio(a, b):
    """a / b, 0 where b == 0 (scikit-learn's ``zero_division=0``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def _predicted_sets(s: np.ndarray, set_k: int, threshold: float | None) -> tuple[np.ndarray, str]:
    if threshold is None:
        return _topk_expected(s, set_k), f"top-{set_k}"
    return s >= float(threshold), f"score>={float(threshold):g}"


def _topk_mask(s: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``(R, M)`` mask of each row's top-k under the stable ranking (k clipped to M).

    Everything above the k-th largest value is in; among entries equal to it, the lowest
    indices fill the remaining places.
    """
    m = s.shape[1]
    k = min(k, m)
    kth = np.partition(s, m - k, axis=1)[:, m - k]  # k-th largest value of each row
    gt = s > kth[:, None]
    eq = s == kth[:, None]
    need = k - np.count_nonzero(gt, axis=1)
    mask = gt | eq
    crowded = np.flatnonzero(np.count_nonzero(eq, axis=1) > need)  # more ties than places
    if crowded.size:
        e = eq[crowded]
        mask[crowded] = gt[crowded] | (e & (np.cumsum(e, axis=1) <= need[crowded, None]))
    return mask


def _topk_order(s: np.ndarray, k: int) -> np.ndarray:
    """``(R, min(k, M))`` column indices of each row's top-k, best first, stable on ties.

    Equals ``np.argsort(-s, axis=1, kind="stable")[:, :k]`` without sorting whole rows.
    """
    mask = _topk_mask(s, k)
    rows, cols = np.nonzero(mask)
    order = np.lexsort((cols, -s[rows, cols], rows))
    return cols[order].reshape(s.shape[0], min(k, s.shape[1]))


AP_ROWS = 1024  # rows ranked at a time by ap_at_k: bounds its memory at AP_ROWS x M per array


def ap_at_k(s: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """Per row, the expected ``AP@k = (1 / min(k, #true)) * sum_{i<=k} P@i * rel_i`` over a
    uniformly random order inside every tie: ``rel_i`` says whether the entry at rank i is true
    and ``P@i`` is the fraction true in the top i. Every row needs a true entry. Returns ``(R,)``.

    Exact, in closed form: ``P@i * rel_i = (1/i) (rel_i + sum_{j<i} rel_i rel_j)``. Rank i falls in
    the tie group of the i-th largest value, of ``g`` entries with ``m`` true, so
    ``E[rel_i] = q_i = m/g``; for an earlier rank j in another group ``E[rel_i rel_j] = q_i q_j``,
    and for one of the ``a_i`` earlier ranks in the same group ``m(m-1)/(g(g-1))``. Without ties
    this is the AP@k of the one ranking."""
    out = []
    for a in range(0, s.shape[0], AP_ROWS):
        out.append(_expected_ap_at_k(s[a:a + AP_ROWS], t[a:a + AP_ROWS], k))
    return np.concatenate(out) if out else np.empty(0)


def _expected_ap_at_k(s: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    m_cols = s.shape[1]
    kk = min(k, m_cols)
    top = -np.sort(-np.partition(s, m_cols - kk, axis=1)[:, m_cols - kk:], axis=1)  # (R, kk) values, best first
    g = np.empty(top.shape)
    m = np.empty(top.shape)
    above = np.empty(top.shape)
    for i in range(kk):
        v = top[:, i:i + 1]
        eq = s == v
        g[:, i] = np.count_nonzero(eq, axis=1)
        m[:, i] = np.count_nonzero(eq & t, axis=1)
        above[:, i] = np.count_nonzero(s > v, axis=1)
    q = m / g
    same = np.arange(kk)[None, :] - above                   # earlier ranks inside the same tie group
    earlier = np.cumsum(q, axis=1) - q                       # sum_{j<i} q_j
    pair_same = np.divide(m * (m - 1), g * (g - 1), out=np.zeros_like(q), where=g > 1)
    expected = q + q * (earlier - same * q) + same * pair_same
    return (expected / np.arange(1, kk + 1)).sum(axis=1) / np.minimum(k, t.sum(axis=1))


# ---------------------------------------------------------------------------- AP and AUC

def _per_class_ap_auc(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class AP and ROC AUC over the clips, as scikit-learn computes them.

    For class c with positives P and all clips N, a positive with score x has
    ``n_ge(x) = #{clips: s >= x}`` and ``p_ge(x) = #{positives: s >= x}``;
    ``AP_c = mean over positives of p_ge / n_ge`` (scikit-learn's step-wise AP, a tie being
    one threshold), and ``AUC_c = sum over positives of (#neg below x + 0.5 #neg equal to x)
    / (|P| |Neg|)`` (Mann-Whitney, equal to the trapezoidal ROC area).

    Returns ``(ap, auc, positives)``, each ``(C,)``: ap is NaN where a class has no
    positive, auc is NaN where it has no positive or no negative.
    """
    n, c = s.shape
    positives = np.count_nonzero(t, axis=0)
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    cols = np.flatnonzero(positives)
    if cols.size == 0:
        return ap, auc, positives
    sorted_cols = np.sort(s[:, cols].T, axis=1)  # (len(cols), N), ascending
    for row, col in enumerate(cols):
        x = s[t[:, col], col]
        u = np.sort(x)
        v = sorted_cols[row]
        n_lt = np.searchsorted(v, x, side="left")
        n_le = np.searchsorted(v, x, side="right")
        p_lt = np.searchsorted(u, x, side="left")
        p_le = np.searchsorted(u, x, side="right")
        ap[col] = np.mean((len(u) - p_lt) / (n - n_lt))
        neg = n - len(u)
        if neg:
            neg_below = n_lt - p_lt
            neg_equal = (n_le - n_lt) - (p_le - p_lt)
            auc[col] = np.sum(neg_below + 0.5 * neg_equal) / (len(u) * neg)
    return ap, auc, positives


def _per_clip_ap(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """AP of each clip's row ranking the C classes; ``(N,)``. Every row needs a true label.

    Same formula as :func:`_per_class_ap_auc` along rows: ``AP_i = mean over true classes j
    of #{true: s_i >= s_ij} / #{classes: s_i >= s_ij}``, worked in blocks of positives.
    """
    rows, cols = np.nonzero(t)
    x = s[rows, cols]
    prec = np.empty(len(rows))
    block = max(1, _BLOCK_ELEMS // s.shape[1])
    for a in range(0, len(rows), block):
        r = rows[a:a + block]
        ge = s[r] >= x[a:a + block, None]
        prec[a:a + block] = np.count_nonzero(ge & t[r], axis=1) / np.count_nonzero(ge, axis=1)
    return np.bincount(rows, weights=prec, minlength=s.shape[0]) / np.count_nonzero(t, axis=1)


# ---------------------------------------------------------------------------- public API

def classification_metrics(scores, targets, *, ks: Sequence[int] = (1, 3, 5, 10), set_k: int = 5,
                           threshold: float | None = None) -> dict:
    """Zero-shot multi-label classification metrics of an ``(N, C)`` score matrix.

    Keys (floats unless noted):

    - ``acc@k`` for each k in ``ks``: fraction of clips with a true label among their top-k
      classes, each tie ordered at random and the expected value taken (see the module
      docstring; k larger than C means all classes).
    - ``mAP``: AudioSet standard, mean over classes with >= 1 positive of scikit-learn's
      ``average_precision_score`` of that class column.
    - ``mAUC``: mean ROC AUC over classes with >= 1 positive and >= 1 negative; ``None`` if no
      class has both.
    - ``d_prime``: ``sqrt(2) * Phi^-1(mAUC)`` (``scipy.stats.norm.ppf``); ``None`` when mAUC
      is ``None``, 0 or 1 (d' would be infinite, which JSON cannot hold).
    - ``map`` and ``mAP_per_clip`` (the same value; ``map`` is the earlier scripts' key):
      mean over clips of the AP of the clip's row ranking the C classes, i.e.
      ``average_precision_score(targets, scores, average="samples")``.
    - ``precision_micro``, ``recall_micro``, ``f1_micro``: scikit-learn micro averages over all
      C classes of the predicted sets; ``precision_macro``, ``recall_macro``, ``f1_macro``:
      scikit-learn macro averages over the classes with >= 1 positive
      (``labels=`` those classes, ``zero_division=0``). The predicted set of a clip is its
      top-``set_k`` classes, or ``{classes with score >= threshold}`` when ``threshold`` is
      given. A tie cut by the ``set_k``-th place puts each of its members in the set with
      probability ``places left / group size``, and the counts (true positives, predictions)
      are their expected values: micro P/R/F1 and macro recall are then the exact expectation
      over random tie orders; macro precision and F1 are ratios of expected counts.
    - ``predicted_set_rule`` (str): ``"top-5"`` or ``"score>=0.3"``.
    - ``num_classes_evaluated`` (int): classes with >= 1 positive; ``num_clips`` (int): N.

    Raises ValueError if N == 0 or any clip has no true label.
    """
    s, t = _check_inputs(scores, targets)
    ks = _check_ks(ks, "ks")
    (set_k,) = _check_ks((set_k,), "set_k")
    n, c = s.shape
    out: dict = {}

    for k, hit in expected_hits(s, t, ks).items():
        out[f"acc@{k}"] = float(np.mean(hit))

    ap, auc, positives = _per_class_ap_auc(s, t)
    evaluated = np.flatnonzero(positives)
    out["mAP"] = float(np.mean(ap[evaluated]))
    has_auc = ~np.isnan(auc)
    m_auc = float(np.mean(auc[has_auc])) if has_auc.any() else None
    out["mAUC"] = m_auc
    out["d_prime"] = None if m_auc is None else _none_if_not_finite(
        math.sqrt(2.0) * ndtri(m_auc))  # what scipy.stats.norm.ppf computes, without importing scipy.stats
    out["map"] = float(np.mean(_per_clip_ap(s, t)))
    out["mAP_per_clip"] = out["map"]

    predicted, out["predicted_set_rule"] = _predicted_sets(s, set_k, threshold)
    # Counts rather than scikit-learn's precision_recall_fscore_support: a tie cut by the k-th
    # place makes membership fractional, which it does not take. Without such ties the counts
    # are integers and the values are scikit-learn's (tests/test_metrics.py checks both).
    tp, n_pred, n_pos = _set_counts(t, predicted)
    out["precision_micro"] = float(_ratio(tp.sum(), n_pred.sum()))
    out["recall_micro"] = float(_ratio(tp.sum(), n_pos.sum()))
    out["f1_micro"] = float(_ratio(2 * tp.sum(), n_pred.sum() + n_pos.sum()))
    e = evaluated
    out["precision_macro"] = float(np.mean(_ratio(tp[e], n_pred[e])))
    out["recall_macro"] = float(np.mean(_ratio(tp[e], n_pos[e])))
    out["f1_macro"] = float(np.mean(_ratio(2 * tp[e], n_pred[e] + n_pos[e])))

    out["num_classes_evaluated"] = int(evaluated.size)
    out["num_clips"] = int(n)
    return out


def per_class_ap(scores, targets, class_names: Sequence[str]) -> list[dict]:
    """AP of each class with >= 1 positive: ``[{"name", "index", "ap", "positives"}]`` by index.

    The AP values are those whose mean is ``classification_metrics(...)["mAP"]``.
    Raises ValueError as :func:`classification_metrics` does, or if ``len(class_names) != C``.
    """
    s, t = _check_inputs(scores, targets)
    if len(class_names) != s.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {s.shape[1]} score columns")
    ap, _, positives = _per_class_ap_auc(s, t)
    return [{"name": class_names[c], "index": int(c), "ap": float(ap[c]),
             "positives": int(positives[c])} for c in np.flatnonzero(positives)]


def retrieval_metrics(scores, targets, *, ks: Sequence[int] = (1, 5, 10), map_k: int = 10) -> dict:
    """Text-to-audio and audio-to-text retrieval metrics of an ``(N, C)`` score matrix.

    Text to audio: every class with >= 1 positive clip is a query ranking all N clips by its
    score column.

    - ``t2a_R@k``: fraction of queries with >= 1 relevant clip among the top k (expected value
      over random tie orders, as acc@k).
    - ``t2a_mAP@10`` (``map_k`` = 10): mean over queries of
      ``AP@10 = (1 / min(10, #relevant)) * sum_{i<=10} P@i * rel_i``, where ``rel_i`` says
      whether the clip at rank i is relevant and ``P@i`` is the fraction relevant in the top i;
      the expected value over random orders inside every tie (``ap_at_k``).

    Audio to text: every clip ranks the C classes.

    - ``a2t_R@k``: fraction of clips with >= 1 true class among the top k (equals acc@k).

    Also ``t2a_num_queries`` and ``a2t_num_queries`` (ints). Raises ValueError as
    :func:`classification_metrics` does.
    """
    s, t = _check_inputs(scores, targets)
    ks = _check_ks(ks, "ks")
    (map_k,) = _check_ks((map_k,), "map_k")
    queries = np.flatnonzero(t.any(axis=0))
    s_q = np.ascontiguousarray(s[:, queries].T)  # (Q, N): one row per text query
    t_q = np.ascontiguousarray(t[:, queries].T)
    out: dict = {}

    for k, hit in expected_hits(s_q, t_q, ks).items():
        out[f"t2a_R@{k}"] = float(np.mean(hit))

    out[f"t2a_mAP@{map_k}"] = float(np.mean(ap_at_k(s_q, t_q, map_k)))

    for k, hit in expected_hits(s, t, ks).items():
        out[f"a2t_R@{k}"] = float(np.mean(hit))
    out["t2a_num_queries"] = int(queries.size)
    out["a2t_num_queries"] = int(s.shape[0])
    return out


def legacy_set_metrics(scores, targets, *, set_k: int = 5, threshold: float | None = None) -> dict:
    """Macro precision, recall and F1 as the earlier public scripts computed them.

    Same predicted sets as :func:`classification_metrics`. Per class, ``P_c = TP / #predicted``
    and ``R_c = TP / #positives`` (0 when the denominator is 0); ``precision_macro`` and
    ``recall_macro`` average them over all C classes of the class list, a class without a
    positive counting 0, and ``f1_macro = 2 P R / (P + R)`` of those two means (0 when both are
    0), not the mean of per-class F1. Returns ``{"precision_macro", "recall_macro",
    "f1_macro", "num_classes_averaged", "definition"}``.
    """
    s, t = _check_inputs(scores, targets)
    (set_k,) = _check_ks((set_k,), "set_k")
    predicted, _ = _predicted_sets(s, set_k, threshold)
    tp, n_pred, n_pos = _set_counts(t, predicted)
    p = float(np.mean(_ratio(tp, n_pred)))
    r = float(np.mean(_ratio(tp, n_pos)))
    return {"precision_macro": p, "recall_macro": r, "f1_macro": float(_ratio(2 * p * r, p + r)),
            "num_classes_averaged": int(s.shape[1]),
            "definition": "earlier scripts: per-class P and R averaged over all classes of the list "
                          "(no positive: 0); f1_macro = harmonic mean of the two averages"}
