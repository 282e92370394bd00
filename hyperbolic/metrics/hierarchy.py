"""Hierarchy metrics over the class ontology: rank correlation of radius with depth, the LCA-height
distance between classes and the severity of mistakes (Bertinetto et al. 2020), hierarchical
precision/recall/F1 (Kiritchenko et al. 2006), mAP per depth, back-off decoding and the traversal
summary (MERU). Inputs follow the conventions of ``hyperbolic.metrics.classification``.

Nodes: classes are ``0..C-1``, other ontology nodes (abstract parents) ``C..P-1``, as in
``hyperbolic.hierarchy.cones.Hierarchy``; ``ancestors[k]`` lists every node above class k
(transitively), ``parents[p]`` the direct parents of node p, ``depth[p]`` its ontology depth
(roots 0; None for a class that matches no node, which is then taken as a root of its own,
depth 0, with no ancestor).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from hyperbolic.metrics.classification import (
    _BLOCK_ELEMS,
    _check_inputs,
    _check_ks,
    _none_if_not_finite,
    _per_class_ap_auc,
    _topk_expected,
    _topk_order,
)


def spearman_norm_depth(norms, depths) -> dict:
    """Spearman rank correlation of embedding norms with hierarchy depths.

    ``scipy.stats.spearmanr`` on two 1-D sequences of equal length >= 2. Returns
    ``{"rho", "p_value", "n"}``; rho and p_value are ``None`` when undefined (a constant input).
    """
    from scipy import stats  # imported here: ~0.5 s, which a plain evaluation does without
    x = np.asarray(norms, dtype=np.float64)
    y = np.asarray(depths, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"norms and depths must be 1-D of equal length (got {x.shape}, {y.shape})")
    if len(x) < 2:
        raise ValueError(f"need at least 2 points for a rank correlation (got {len(x)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        res = stats.spearmanr(x, y)
    return {"rho": _none_if_not_finite(float(res.statistic)),
            "p_value": _none_if_not_finite(float(res.pvalue)), "n": int(len(x))}


def class_distance_matrix(parents: Mapping[int, Iterable[int]], num_classes: int) -> np.ndarray:
    """LCA-height distance between every pair of classes, ``(C, C)`` float.

    The hierarchy is a DAG over integer nodes: ``parents[v]`` lists v's parents; classes are
    nodes ``0..C-1``; other integers are nodes that are not classes (abstract categories);
    a node missing from ``parents`` has none.

    - ``height(v)``: the largest number of edges on a downward path from v to a leaf;
      leaves have height 0.
    - ``d(a, a) = 0``. For a != b, ``d(a, b)`` = the smallest height among the common
      ancestors of a and b, each node counting as its own ancestor (so if a is an ancestor of
      b, ``d(a, b) = height(a)``). This is the LCA height of Bertinetto et al. (2020), "Making
      Better Mistakes"; in a DAG the LCA is the lowest of possibly several common ancestors.
    - Classes with no common ancestor (AudioSet has several top-level categories) meet at a
      virtual root above all roots: ``d = 1 + max height`` over the hierarchy.

    Raises ValueError on a cycle.
    """
    nodes = set(range(num_classes))
    parent_sets: dict[int, set[int]] = {}
    for v, ps in parents.items():
        parent_sets[int(v)] = {int(p) for p in ps}
        nodes.add(int(v))
        nodes.update(parent_sets[int(v)])
    children: dict[int, list[int]] = {v: [] for v in nodes}
    for v, ps in parent_sets.items():
        for p in ps:
            children[p].append(v)

    # Kahn's algorithm, parents before children; anything left over lies on a cycle.
    pending = {v: len(parent_sets.get(v, ())) for v in nodes}
    topo = [v for v in sorted(nodes) if pending[v] == 0]
    for v in topo:  # topo grows while we walk it
        for ch in children[v]:
            pending[ch] -= 1
            if pending[ch] == 0:
                topo.append(ch)
    if len(topo) != len(nodes):
        raise ValueError("the class hierarchy has a cycle")

    height = {}
    for v in reversed(topo):
        height[v] = 1 + max(height[ch] for ch in children[v]) if children[v] else 0
    ancestors: dict[int, set[int]] = {}
    for v in topo:
        ancestors[v] = {v}.union(*(ancestors[p] for p in parent_sets.get(v, ())))

    index = {v: i for i, v in enumerate(sorted(nodes))}
    anc = np.zeros((num_classes, len(nodes)), dtype=bool)
    for a in range(num_classes):
        anc[a, [index[v] for v in ancestors[a]]] = True
    d = np.full((num_classes, num_classes), float(1 + max(height.values())))  # virtual root
    # Lowest ancestors last, so each pair ends with the smallest common height.
    for v in sorted(nodes, key=lambda v: -height[v]):
        members = np.flatnonzero(anc[:, index[v]])
        if members.size:
            d[np.ix_(members, members)] = height[v]
    np.fill_diagonal(d, 0.0)
    return d


def mistake_severity(scores, targets, parents: Mapping[int, Iterable[int]], *, k: int = 5) -> dict:
    """Hierarchical mistake metrics after Bertinetto et al. (2020), for multi-label clips.

    With ``d`` from :func:`class_distance_matrix` and ``dist_i(p) = min over true classes j of
    clip i of d(p, j)``:

    - ``mistake_severity``: mean of ``dist_i(top1_i)`` over the clips whose top-1 class is not
      a true label (``None`` if there is no such clip).
    - ``hier_dist@k``: mean over all clips of the mean of ``dist_i(p)`` over the top-k classes
      p of clip i (stable ranking; a correct prediction contributes 0).
    - ``num_mistakes`` (int), ``num_clips`` (int).

    Raises ValueError as :func:`classification_metrics` does, or on a cyclic hierarchy.
    """
    s, t = _check_inputs(scores, targets)
    (k,) = _check_ks((k,), "k")
    d = class_distance_matrix(parents, s.shape[1])
    top = _topk_order(s, k)  # (N, k')
    dist = np.empty(top.shape)
    block = max(1, _BLOCK_ELEMS // (top.shape[1] * s.shape[1]))
    for a in range(0, len(top), block):
        # (rows, k', C): distance from each prediction to every class, kept where true.
        pair = np.where(t[a:a + block, None, :], d[top[a:a + block]], np.inf)
        dist[a:a + block] = pair.min(axis=2)
    wrong = ~t[np.arange(len(t)), top[:, 0]]
    return {"mistake_severity": float(dist[wrong, 0].mean()) if wrong.any() else None,
            f"hier_dist@{k}": float(dist.mean(axis=1).mean()),
            "num_mistakes": int(wrong.sum()), "num_clips": int(s.shape[0])}


# ------------------------------------------------------------- closure under the ontology

def closure_matrix(ancestors, num_nodes: int) -> np.ndarray:
    """``(C, P)`` bool: row k holds class k and every node above it."""
    out = np.zeros((len(ancestors), num_nodes), dtype=bool)
    for k, above in enumerate(ancestors):
        out[k, k] = True
        out[k, list(above)] = True
    return out


def _node_depths(depth) -> np.ndarray:
    return np.array([0 if d is None else d for d in depth], dtype=np.float64)


def hierarchical_prf(scores, targets, ancestors, num_nodes: int) -> dict:
    """Hierarchical precision, recall and F1 of the top-1 class (Kiritchenko et al. 2006).

    Per clip i, the predicted set ``P_i`` is the top-1 class and every node above it, the true
    set ``T_i`` every label and every node above one (abstract parents included). Micro
    averages over the clips: ``hierarchical_precision@1 = sum_i |P_i & T_i| / sum_i |P_i|``,
    ``hierarchical_recall@1 = sum_i |P_i & T_i| / sum_i |T_i|``, ``hierarchical_f1@1`` their
    harmonic mean. A top-1 tie counts each tied class with probability 1/(group size): the sums
    are expected values over random tie orders. Raises ValueError as ``classification_metrics``.
    """
    s, t = _check_inputs(scores, targets)
    closure = closure_matrix(ancestors, num_nodes).astype(np.float64)   # (C, P)
    size = closure.sum(axis=1)                                          # |{k} + ancestors|
    inter = pred = true = 0.0
    block = max(1, _BLOCK_ELEMS // max(s.shape[1], num_nodes))
    for a in range(0, len(s), block):
        w = _topk_expected(s[a:a + block], 1)                            # (n, C) top-1 weights
        truth = (t[a:a + block].astype(np.float64) @ closure) > 0        # (n, P) T_i
        overlap = truth.astype(np.float64) @ closure.T                   # (n, C) |{k}+anc(k) & T_i|
        inter += float((w * overlap).sum())
        pred += float((w * size).sum())
        true += float(truth.sum())
    p, r = inter / pred, inter / true
    return {"hierarchical_precision@1": p, "hierarchical_recall@1": r,
            "hierarchical_f1@1": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def map_by_depth(scores, targets, depth) -> list[dict]:
    """mAP of the classes at each ontology depth: ``[{depth, mAP, classes}]``, shallowest first,
    over the classes with >= 1 positive; ``depth`` (C,) with None for unmatched classes, listed
    last as ``depth: null``. The per-class APs are those of ``classification_metrics``' mAP."""
    return map_with_depths(scores, targets, depth)["per_depth"]


def map_with_depths(scores, targets, depth) -> dict:
    """``{mAP, per_depth}`` from one pass of per-class AP: ``mAP`` is ``classification_metrics``'
    (mean over the classes with >= 1 positive), ``per_depth`` is ``map_by_depth``'s list."""
    s, t = _check_inputs(scores, targets)
    ap, _, positives = _per_class_ap_auc(s, t)
    groups: dict = {}
    for k in np.flatnonzero(positives):
        groups.setdefault(depth[k], []).append(ap[k])
    keys = sorted(d for d in groups if d is not None) + ([None] if None in groups else [])
    return {"mAP": float(np.mean(ap[positives > 0])),
            "per_depth": [{"depth": d, "mAP": float(np.mean(groups[d])), "classes": len(groups[d])} for d in keys]}


# ------------------------------------------------------------------------ back-off decoding

BACKOFF_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def backoff_paths(probs: np.ndarray, parents, closure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each clip's climb from its top-1 class (argmax, ties to the lower index) to a root.

    A node's mass is the summed probability of every class at or below it (``probs @ closure``,
    ``(N, P)``); the climb goes to the parent of largest mass (ties to the lower index), so the
    mass never decreases along it. Returns ``(nodes, mass)``, each ``(N, L)`` (L: the longest
    climb), a finished climb padded with its root."""
    mass = probs @ closure.astype(np.float64)
    paths = []
    for i, k in enumerate(probs.argmax(axis=1)):
        path = [int(k)]
        while parents[path[-1]]:
            ps = list(parents[path[-1]])
            path.append(ps[int(np.argmax(mass[i, ps]))])
        paths.append(path)
    length = max(len(p) for p in paths)
    nodes = np.array([p + [p[-1]] * (length - len(p)) for p in paths])
    return nodes, np.take_along_axis(mass, nodes, axis=1)


def backoff_curve(scores, targets, ancestors, parents, depth, *,
                  thresholds=BACKOFF_THRESHOLDS) -> dict:
    """Back-off decoding: predict the deepest node on the clip's climb (``backoff_paths``, with
    ``probs`` the softmax of the scores) whose mass is >= the threshold, or the root where none
    is. Per threshold: ``hierarchical_accuracy`` (fraction of clips whose prediction is a label or
    a node above one) and ``specificity`` (mean depth of the prediction). ``area``: the area under
    accuracy against specificity (trapezoids over the points sorted by specificity, in depth
    units), ``area_normalised`` = area / (specificity span), null when the span is 0."""
    s, t = _check_inputs(scores, targets)
    from scipy.special import softmax
    closure = closure_matrix(ancestors, len(parents))
    nodes, mass = backoff_paths(softmax(s.astype(np.float64), axis=1), parents, closure)
    truth = (t.astype(np.float64) @ closure) > 0                         # (N, P)
    d = _node_depths(depth)
    rows = np.arange(len(s))
    points = []
    for tau in thresholds:
        clears = mass >= tau
        first = np.where(clears.any(axis=1), clears.argmax(axis=1), nodes.shape[1] - 1)
        pred = nodes[rows, first]
        points.append({"threshold": float(tau), "hierarchical_accuracy": float(truth[rows, pred].mean()),
                       "specificity": float(d[pred].mean())})
    xy = sorted((p["specificity"], p["hierarchical_accuracy"]) for p in points)
    x, y = np.array(xy).T
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
    span = float(x[-1] - x[0])
    return {"curve": points, "area": area, "specificity_span": span,
            "area_normalised": area / span if span > 0 else None}


# ------------------------------------------------------------------------------- traversal

def traversal_summary(nearest: np.ndarray, truth: np.ndarray, depth) -> dict:
    """The traversal test (MERU, Desai et al. 2023) from each clip's nearest prompt node at each
    step towards the origin: ``nearest`` (N, S) node indices, ``truth`` (N, P) bool (labels and
    every node above one). ``on_path``: mean over clips of the fraction of steps whose nearest
    node is in ``truth``; ``depth_never_increases``: fraction of clips whose nearest node's depth
    never increases from one step to the next."""
    d = _node_depths(depth)[nearest]
    hit = np.take_along_axis(truth, nearest, axis=1)
    return {"on_path": float(hit.mean(axis=1).mean()),
            "depth_never_increases": float(np.all(np.diff(d, axis=1) <= 0, axis=1).mean()),
            "steps": int(nearest.shape[1]), "num_clips": int(nearest.shape[0])}
