"""Hierarchy-aware metrics (``hyperbolic.metrics.hierarchy``: hierarchical P/R/F1, mAP per depth,
back-off decoding, traversal) on a hand-written tree, against brute force, scikit-learn and
closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from hyperbolic.evaluation.hierarchy import traversal_nearest
from hyperbolic.evaluation.scoring import ScoringModel
from hyperbolic.metrics import hierarchy as M
from hyperbolic.model.projector import Projector

# Classes 0..3, abstract nodes 4 and 5:  4 -> {0, 1},  0 -> 3,  5 -> 2.
ANCESTORS = ((4,), (4,), (5,), (0, 4))
PARENTS = ((4,), (4,), (5,), (0,), (), ())
DEPTH = (1, 1, 1, 2, 0, 0)
UP = {0: {0, 4}, 1: {1, 4}, 2: {2, 5}, 3: {3, 0, 4}}  # each class closed under its ancestors, by hand


def _brute_prf(s, t):
    inter = pred = true = 0.0
    for row, labels in zip(s, t):
        top = np.flatnonzero(row == row.max())  # a tie: each candidate with probability 1/|top|
        truth = set().union(*(UP[j] for j in np.flatnonzero(labels)))
        inter += np.mean([len(UP[k] & truth) for k in top])
        pred += np.mean([len(UP[k]) for k in top])
        true += len(truth)
    p, r = inter / pred, inter / true
    return p, r, 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(5))
def test_hierarchical_prf_against_sets_by_hand(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, size=(40, 4)).astype(float)  # many top-1 ties
    t = rng.random((40, 4)) < 0.3
    t[~t.any(1), 0] = True
    out = M.hierarchical_prf(s, t, ANCESTORS, 6)
    p, r, f = _brute_prf(s, t)
    assert out["hierarchical_precision@1"] == pytest.approx(p)
    assert out["hierarchical_recall@1"] == pytest.approx(r)
    assert out["hierarchical_f1@1"] == pytest.approx(f)


def test_hierarchical_prf_one_clip_closed_form():
    # Top 1 is class 3 ({3, 0, 4}); the label is class 1 ({1, 4}): overlap {4}.
    out = M.hierarchical_prf(np.array([[0.1, 0.2, 0.0, 0.9]]), np.array([[False, True, False, False]]), ANCESTORS, 6)
    assert out["hierarchical_precision@1"] == pytest.approx(1 / 3)
    assert out["hierarchical_recall@1"] == pytest.approx(1 / 2)
    assert out["hierarchical_f1@1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_map_by_depth_against_sklearn():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(60, 4))
    t = rng.random((60, 4)) < 0.3
    t[~t.any(1), 0] = True
    depth = [1, 1, None, 2]
    out = M.map_by_depth(s, t, depth)
    ap = [average_precision_score(t[:, k], s[:, k]) for k in range(4)]
    assert out == [{"depth": 1, "mAP": pytest.approx((ap[0] + ap[1]) / 2), "classes": 2},
                   {"depth": 2, "mAP": pytest.approx(ap[3]), "classes": 1},
                   {"depth": None, "mAP": pytest.approx(ap[2]), "classes": 1}]


def test_backoff_climbs_when_unsure():
    # Softmax of log p is p. Class 0 has the top probability; its mass is p0 + p3 = 0.8 (class 3
    # sits below it); node 4 holds p0 + p1 + p3 = 0.9 and is a root.
    probs = np.array([[0.5, 0.1, 0.1, 0.3], [0.5, 0.1, 0.1, 0.3]])
    t = np.array([[False, False, False, True], [False, True, False, False]])  # truth {3,0,4}, {1,4}
    out = M.backoff_curve(np.log(probs), t, ANCESTORS, PARENTS, DEPTH, thresholds=(0.0, 0.75, 0.85, 0.95))
    got = [(p["hierarchical_accuracy"], p["specificity"]) for p in out["curve"]]
    # tau < 0.8: class 0 for both (depth 1): right for the first clip only. Above: node 4 (depth 0), right for both.
    assert got == [(0.5, 1.0), (0.5, 1.0), (1.0, 0.0), (1.0, 0.0)]
    assert out["area"] == pytest.approx((0.5 + 1.0) / 2) and out["specificity_span"] == 1.0
    assert out["area_normalised"] == pytest.approx(0.75)


def test_backoff_paths_pick_the_heavier_parent():
    # Class 0 with two parents 1 and 2 (classes); parent 2 is heavier, so the climb goes there.
    probs = np.array([[0.4, 0.25, 0.35]])
    nodes, mass = M.backoff_paths(probs, ((1, 2), (), ()), M.closure_matrix(((1, 2), (), ()), 3))
    assert nodes.tolist() == [[0, 2]] and mass[0].tolist() == pytest.approx([0.4, 0.75])


def test_traversal_summary_by_hand():
    nearest = np.array([[3, 0, 4], [2, 0, 5]])
    truth = np.zeros((2, 6), dtype=bool)
    truth[0, [3, 0, 4]] = True
    truth[1, [1, 4]] = True
    out = M.traversal_summary(nearest, truth, DEPTH)
    assert out["on_path"] == pytest.approx((1.0 + 0.0) / 2)
    # depths: clip 0: 2, 1, 0 (never increases); clip 1: 1, 1, 0 (never increases either).
    assert out["depth_never_increases"] == 1.0
    assert M.traversal_summary(np.array([[4, 3]]), truth[:1], DEPTH)["depth_never_increases"] == 0.0


def test_traversal_nearest_on_a_ray_closed_form():
    # On a diameter of the c = 1 ball, d(x, y) = |2 artanh|x| - 2 artanh|y||. Prompts at radii
    # 0.1 and 0.8, a clip at 0.85: step s sits at dist0 (1 - s/10) * 2 artanh(0.85).
    model = ScoringModel(name="h", prompt_template="{label}", projector=Projector(2), geometry="hyperbolic",
                         c=1.0, temperature=0.1)
    e = torch.tensor([0.6, 0.8])
    prompts = torch.stack([e * 0.1, e * 0.8])
    got = traversal_nearest(model, (e * 0.85)[None], prompts)[0]
    d0 = [2 * math.atanh(0.1), 2 * math.atanh(0.8)]
    expected = [int(np.argmin([abs((1 - s / 10) * 2 * math.atanh(0.85) - d) for d in d0])) for s in range(1, 11)]
    assert got.tolist() == expected and expected[0] == 1 and expected[-1] == 0


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_traversal_nearest_against_the_moved_points_distances(c):
    from hyperbolic.geometry import poincare
    g = torch.Generator().manual_seed(int(c * 10))
    model = ScoringModel(name="h", prompt_template="{label}", projector=Projector(6), geometry="hyperbolic",
                         c=c, temperature=0.1)
    audio = poincare.expmap0(torch.randn(40, 6, generator=g, dtype=torch.float64), c=c)
    prompts = poincare.expmap0(torch.randn(15, 6, generator=g, dtype=torch.float64) * 0.7, c=c)
    got = traversal_nearest(model, audio, prompts)
    tangent = poincare.logmap0(audio, c=c)
    for s in range(1, 11):
        moved = poincare.expmap0(tangent * (1 - s / 10), c=c)
        d = poincare.pairwise_dist(moved, prompts, c=c)
        assert got[:, s - 1].tolist() == d.argmin(dim=1).tolist()
