"""Tie-neutral AP@k (``t2a_mAP@10``) and the predictions list's tie flags: the expected AP@k over
random tie orders against brute-force enumeration of permutations, and invariance to the order of
the data (issue 19: 0.123 vs 0.148 on all-tied scores after reordering)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from hyperbolic.evaluation.evaluate import _predictions
from hyperbolic.metrics import classification as M


def _ap_every_order(row, rel, k):
    """Mean of AP@k over every permutation of the items that keeps the scores descending."""
    values = []
    for perm in itertools.permutations(range(len(row))):
        r = row[list(perm)]
        if np.all(r[:-1] >= r[1:]):
            hits, ap = 0, 0.0
            for i, j in enumerate(perm[:k]):
                if rel[j]:
                    hits += 1
                    ap += hits / (i + 1)
            values.append(ap / min(k, rel.sum()))
    return np.mean(values)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_ap_at_k_is_the_mean_over_every_tie_order(seed, k):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, size=(4, 7)).astype(np.float32)
    t = rng.random((4, 7)) < 0.4
    t[~t.any(1), 0] = True
    got = M.ap_at_k(s, t, k)
    for i in range(4):
        assert got[i] == pytest.approx(_ap_every_order(s[i], t[i], k), abs=1e-12)


def test_t2a_map_at_10_does_not_depend_on_the_order_of_the_clips():
    rng = np.random.default_rng(0)
    t = rng.random((40, 6)) < 0.2
    t[~t.any(1), 0] = True
    s = np.zeros((40, 6), dtype=np.float32)  # all tied: a collapsed model
    perm = rng.permutation(40)
    a = M.retrieval_metrics(s, t)["t2a_mAP@10"]
    assert a == pytest.approx(M.retrieval_metrics(s[perm], t[perm])["t2a_mAP@10"], abs=1e-12)
    # Closed form for one query, all tied: E[AP@10] with m relevant among n = sum over ranks of
    # P(rel_i) E[P@i | rel_i] = (1/min(10, m)) sum_{i<=10} (m/n) (1 + (i-1)(m-1)/(n-1)) / i.
    m, n = int(t[:, 0].sum()), 40
    closed = sum(m / n * (1 + (i - 1) * (m - 1) / (n - 1)) / i for i in range(1, 11)) / min(10, m)
    assert M.ap_at_k(s[:, :1].T, t[:, :1].T, 10)[0] == pytest.approx(closed)


def test_predictions_flag_ties():
    meta = SimpleNamespace(video_id="v", file="f.parquet", row=0)
    clips = SimpleNamespace(metas=[meta, meta], raw_labels=[["a"], ["b"]], label_indices=[[0], [1]])
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.2]], dtype=np.float32)
    out = _predictions(scores, clips, ["a", "b", "c"], top_k=3)
    assert out[0]["predicted_top1_tied"] == ["a", "b"] and out[1]["predicted_top1_tied"] == ["b"]
    assert [p["tie_size"] for p in out[0]["top_k_predictions"]] == [2, 2, 1]
    assert [p["tie_size"] for p in out[1]["top_k_predictions"]] == [1, 2, 2]
