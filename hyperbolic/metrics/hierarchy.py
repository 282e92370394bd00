"""Hierarchy metrics over the class ontology: rank correlation of radius with depth, the LCA-height
distance between classes and the severity of mistakes (Bertinetto et al. 2020). Inputs follow the
conventions of ``hyperbolic.metrics.classification``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

from hyperbolic.metrics.classification import _BLOCK_ELEMS, _check_inputs, _check_ks, _none_if_not_finite, _topk_order


def spearman_norm_depth(norms, depths) -> dict:
    """Spearman rank correlation of embedding norms with hierarchy depths.

    ``scipy.stats.spearmanr`` on two 1-D sequences of equal length >= 2. Returns
    ``{"rho", "p_value", "n"}``; rho and p_value are ``None`` when undefined (a constant input).
    """
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
