"""hyperbolic.metrics against scikit-learn and naive loop references written here."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score)

from hyperbolic import metrics as M

TOL = 1e-12

# (seed, N clips, C classes, score levels): levels=None draws continuous scores, an integer
# draws that many distinct values so that ties are everywhere (1 = every score equal).
CASES = [
    (0, 40, 7, None),
    (1, 40, 7, 3),
    (2, 3, 2, 2),
    (3, 200, 25, 5),
    (4, 120, 12, None),
    (5, 8, 30, 2),
    (6, 25, 4, 1),
    (7, 1, 6, None),
    (8, 15, 1, 2),
]


def make_case(seed, n, c, levels, *, density=0.2):
    """Random scores/targets; every clip has a label; one class (if C > 1) has none."""
    rng = np.random.default_rng(seed)
    if levels is None:
        scores = rng.standard_normal((n, c))
    else:
        scores = rng.integers(0, levels, size=(n, c)) / max(levels - 1, 1)
    targets = rng.random((n, c)) < density
    empty_class = int(rng.integers(0, c)) if c > 1 else None
    allowed = [j for j in range(c) if j != empty_class]
    if empty_class is not None:
        targets[:, empty_class] = False
    for i in np.flatnonzero(~targets.any(axis=1)):
        targets[i, rng.choice(allowed)] = True
    return scores, targets


def ranking(row):
    return np.argsort(-row, kind="stable")


# ------------------------------------------------------------------ naive references

def ref_acc_at_k(s, t, k):
    return np.mean([t[i, ranking(s[i])[:k]].any() for i in range(len(s))])


def ref_map_classes(s, t):
    return np.mean([average_precision_score(t[:, c], s[:, c])
                    for c in range(s.shape[1]) if t[:, c].any()])


def ref_mauc(s, t):
    aucs = [roc_auc_score(t[:, c], s[:, c]) for c in range(s.shape[1])
            if t[:, c].any() and not t[:, c].all()]
    return float(np.mean(aucs)) if aucs else None


def ref_map_clips(s, t):
    return np.mean([average_precision_score(t[i], s[i]) for i in range(len(s))])


def ref_topk_sets(s, k):
    pred = np.zeros(s.shape, dtype=bool)
    for i in range(len(s)):
        pred[i, ranking(s[i])[:k]] = True
    return pred


def ref_retrieval(s, t, ks, map_k=10):
    out = {}
    queries = [c for c in range(s.shape[1]) if t[:, c].any()]
    for k in ks:
        out[f"t2a_R@{k}"] = np.mean([t[ranking(s[:, c])[:k], c].any() for c in queries])
        out[f"a2t_R@{k}"] = np.mean([t[i, ranking(s[i])[:k]].any() for i in range(len(s))])
    aps = []
    for c in queries:
        order = ranking(s[:, c])
        hits, total = 0, 0.0
        for i in range(min(map_k, len(order))):
            if t[order[i], c]:
                hits += 1
                total += hits / (i + 1)
        aps.append(total / min(map_k, t[:, c].sum()))
    out[f"t2a_mAP@{map_k}"] = np.mean(aps)
    return out


# ------------------------------------------------------------- classification metrics

@pytest.mark.parametrize("seed,n,c,levels", CASES)
def test_classification_metrics_match_references(seed, n, c, levels):
    s, t = make_case(seed, n, c, levels)
    ks = (1, 2, 3, 5, 10)
    got = M.classification_metrics(s, t, ks=ks, set_k=3)

    for k in ks:
        assert got[f"acc@{k}"] == pytest.approx(ref_acc_at_k(s, t, k), abs=TOL)
    assert got["mAP"] == pytest.approx(ref_map_classes(s, t), abs=TOL)
    assert got["map"] == pytest.approx(ref_map_clips(s, t), abs=TOL)
    m_auc = ref_mauc(s, t)
    if m_auc is None:
        assert got["mAUC"] is None and got["d_prime"] is None
    else:
        assert got["mAUC"] == pytest.approx(m_auc, abs=TOL)
        if 0 < m_auc < 1:
            assert got["d_prime"] == pytest.approx(math.sqrt(2) * stats.norm.ppf(m_auc), abs=1e-9)
        else:
            assert got["d_prime"] is None

    # Micro from counts; macro as the mean of per-class binary scores. Both work for C == 1,
    # where multilabel scikit-learn calls would read the single column as binary.
    pred = ref_topk_sets(s, 3)
    tp, fp, fn = (t & pred).sum(), (~t & pred).sum(), (t & ~pred).sum()
    assert got["precision_micro"] == pytest.approx(tp / (tp + fp), abs=TOL)
    assert got["recall_micro"] == pytest.approx(tp / (tp + fn), abs=TOL)
    assert got["f1_micro"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=TOL)
    labels = [j for j in range(c) if t[:, j].any()]
    for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        per_class = [score(t[:, j], pred[:, j], zero_division=0) for j in labels]
        assert got[f"{name}_macro"] == pytest.approx(np.mean(per_class), abs=TOL)
    assert got["predicted_set_rule"] == "top-3"
    assert got["num_classes_evaluated"] == len(labels)
    assert got["num_clips"] == n


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_map_equals_sklearn_samples_average(seed):
    s, t = make_case(seed, 60, 9, None if seed == 4 else 4)
    expected = average_precision_score(t, s, average="samples")
    assert M.classification_metrics(s, t)["map"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", [1, 3])
def test_threshold_rule_matches_sklearn(seed):
    s, t = make_case(seed, 80, 10, 5)
    threshold = 0.5  # a score level of the 5-level grid, so equality is exercised
    assert np.any(s == threshold)
    got = M.classification_metrics(s, t, threshold=threshold)
    pred = s >= threshold
    labels = np.flatnonzero(t.any(axis=0))
    assert got["predicted_set_rule"] == "score>=0.5"
    assert got["precision_micro"] == pytest.approx(precision_score(t, pred, average="micro"), abs=TOL)
    assert got["recall_macro"] == pytest.approx(
        recall_score(t, pred, average="macro", labels=labels, zero_division=0), abs=TOL)
    assert got["f1_macro"] == pytest.approx(
        f1_score(t, pred, average="macro", labels=labels, zero_division=0), abs=TOL)


def test_threshold_hand_example():
    s = np.array([[0.3, 0.29, 0.9],
                  [0.1, 0.3, 0.2]])
    t = np.array([[True, True, False],
                  [False, True, False]])
    got = M.classification_metrics(s, t, threshold=0.3)
    # Predicted sets {0, 2} and {1}: tp = 2, fp = 1, fn = 1.
    assert got["precision_micro"] == pytest.approx(2 / 3)
    assert got["recall_micro"] == pytest.approx(2 / 3)
    # Macro over classes 0 and 1 only: recall 1 and 1/2; precision 1 and 1.
    assert got["recall_macro"] == pytest.approx(0.75)
    assert got["precision_macro"] == pytest.approx(1.0)
    assert got["f1_macro"] == pytest.approx((1 + 2 / 3) / 2)


def test_hand_computed_ap_auc_with_tie():
    # Class 0 column: positives at 0.9 and 0.5, a negative tied at 0.5.
    s = np.array([[0.9, 0.0], [0.5, 1.0], [0.5, 0.0], [0.1, 1.0]])
    t = np.array([[True, False], [False, True], [True, False], [False, True]])
    ap = M.per_class_ap(s, t, ["a", "b"])
    # AP_0 = (1/1 + 2/3) / 2; AUC_0 = (2 + 1.5) / 4. Class 1: positives strictly on top.
    assert ap[0]["ap"] == pytest.approx(5 / 6)
    assert ap[1]["ap"] == pytest.approx(1.0)
    got = M.classification_metrics(s, t)
    assert got["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    assert got["mAUC"] == pytest.approx((0.875 + 1) / 2)


def test_class_without_positives_is_excluded():
    s, t = make_case(11, 50, 6, None)
    base = M.classification_metrics(s, t)
    extra = np.random.default_rng(0).standard_normal((50, 1)) * 10
    s2 = np.hstack([s, extra])
    t2 = np.hstack([t, np.zeros((50, 1), dtype=bool)])
    got = M.classification_metrics(s2, t2)
    assert got["mAP"] == pytest.approx(base["mAP"], abs=TOL)
    assert got["mAUC"] == pytest.approx(base["mAUC"], abs=TOL)
    assert got["num_classes_evaluated"] == base["num_classes_evaluated"]
    assert 6 not in [d["index"] for d in M.per_class_ap(s2, t2, list("abcdefg"))]


def test_perfect_separation_has_no_finite_d_prime():
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    t = np.array([[True, False], [False, True], [True, False]])
    got = M.classification_metrics(s, t)
    assert got["mAUC"] == 1.0 and got["d_prime"] is None
    assert got["mAP"] == 1.0 and got["acc@1"] == 1.0


@pytest.mark.parametrize("fn", [M.classification_metrics, M.retrieval_metrics,
                                lambda s, t: M.per_class_ap(s, t, ["a", "b", "c"])])
def test_raises_on_clip_without_label(fn):
    s = np.zeros((3, 3))
    t = np.array([[True, False, False], [False, False, False], [False, True, False]])
    with pytest.raises(ValueError, match="no true label"):
        fn(s, t)


def test_raises_on_no_clips_and_bad_inputs():
    with pytest.raises(ValueError, match="N == 0"):
        M.classification_metrics(np.zeros((0, 5)), np.zeros((0, 5), dtype=bool))
    with pytest.raises(ValueError, match="does not match"):
        M.classification_metrics(np.zeros((2, 5)), np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        M.classification_metrics(np.full((1, 2), np.nan), np.ones((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="positive"):
        M.classification_metrics(np.zeros((1, 2)), np.ones((1, 2), dtype=bool), ks=(0,))


def test_ties_go_to_lower_class_index():
    s = np.zeros((3, 4))  # every class tied
    t = np.array([[False, True, False, False],
                  [True, False, False, False],
                  [False, False, False, True]])
    got = M.classification_metrics(s, t, ks=(1, 2, 3), set_k=2)
    assert got["acc@1"] == pytest.approx(1 / 3)  # only the clip labelled with class 0
    assert got["acc@2"] == pytest.approx(2 / 3)
    assert got["acc@3"] == pytest.approx(2 / 3)
    # Top-2 sets are {0, 1} for every clip: tp = 2 of 6 predictions.
    assert got["precision_micro"] == pytest.approx(2 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_order_is_stable_argsort(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, size=(50, 40)).astype(float)
    for k in (1, 4, 17, 40, 60):
        expected = np.argsort(-s, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(M._topk_order(s, k), expected)


def test_classification_is_invariant_to_clip_order_and_dtype():
    s, t = make_case(21, 70, 11, 4)
    perm = np.random.default_rng(1).permutation(70)
    a = M.classification_metrics(s, t)
    b = M.classification_metrics(s[perm], t[perm])
    c = M.classification_metrics(s.astype(np.float32), t.astype(np.int64))
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, abs=TOL), key
        else:
            assert b[key] == value, key
    assert c == a  # the 4-level grid is exact in float32, so nothing may change


# -------------------------------------------------------------------- per-class AP

@pytest.mark.parametrize("seed,n,c,levels", CASES[:5])
def test_per_class_ap_matches_sklearn(seed, n, c, levels):
    s, t = make_case(seed, n, c, levels)
    names = [f"class {j}" for j in range(c)]
    rows = M.per_class_ap(s, t, names)
    expected = [j for j in range(c) if t[:, j].any()]
    assert [r["index"] for r in rows] == expected
    for r in rows:
        j = r["index"]
        assert r["name"] == names[j]
        assert r["positives"] == int(t[:, j].sum())
        assert r["ap"] == pytest.approx(average_precision_score(t[:, j], s[:, j]), abs=TOL)
    assert np.mean([r["ap"] for r in rows]) == pytest.approx(
        M.classification_metrics(s, t)["mAP"], abs=TOL)
    with pytest.raises(ValueError, match="class names"):
        M.per_class_ap(s, t, names[:-1] if c > 1 else [])


# ----------------------------------------------------------------------- retrieval

@pytest.mark.parametrize("seed,n,c,levels", CASES)
def test_retrieval_matches_loops(seed, n, c, levels):
    s, t = make_case(seed, n, c, levels)
    ks = (1, 2, 5, 10)
    got = M.retrieval_metrics(s, t, ks=ks)
    expected = ref_retrieval(s, t, ks)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key
    assert got["t2a_num_queries"] == int(t.any(axis=0).sum())
    assert got["a2t_num_queries"] == n


def test_retrieval_hand_example():
    # Class 0 ranks clips 3 (relevant), 0 (tied at 0.5, lower index), 2 (relevant), 1.
    s = np.array([[0.5], [0.1], [0.5], [0.9]])
    t = np.array([[False], [False], [True], [True]])
    with pytest.raises(ValueError):
        M.retrieval_metrics(s, t)  # clips 0 and 1 have no label: the caller must drop them
    s2 = np.hstack([s, np.zeros((4, 1))])
    t2 = np.hstack([t, ~t])
    got = M.retrieval_metrics(s2, t2, ks=(1, 2))
    # Class 0 ranks clips 3, 0, 2, 1: AP@10 = (1/1 + 2/3) / 2; class 1 (all tied, index
    # order 0, 1, 2, 3) puts its relevant clips 0 and 1 first: AP@10 = 1.
    assert got["t2a_mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert got["t2a_R@1"] == 1.0


# ----------------------------------------------------------------------- bootstrap

def ref_bootstrap(s, t, n, seed, alpha):
    rng = np.random.default_rng(seed)
    maps, accs = [], []
    for _ in range(n):
        idx = rng.integers(0, len(s), size=len(s))
        maps.append(ref_map_classes(s[idx], t[idx]))
        accs.append(ref_acc_at_k(s[idx], t[idx], 1))
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return np.percentile(maps, q), np.percentile(accs, q)


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 3)])
def test_bootstrap_matches_resampled_sklearn(seed, levels):
    s, t = make_case(seed, 30, 6, levels)
    got = M.bootstrap_ci(s, t, n=25, seed=7, alpha=0.1)
    (m_lo, m_hi), (a_lo, a_hi) = ref_bootstrap(s, t, 25, 7, 0.1)
    assert got["mAP"]["low"] == pytest.approx(m_lo, abs=TOL)
    assert got["mAP"]["high"] == pytest.approx(m_hi, abs=TOL)
    assert got["acc@1"]["low"] == pytest.approx(a_lo, abs=TOL)
    assert got["acc@1"]["high"] == pytest.approx(a_hi, abs=TOL)
    assert got["n"] == 25 and got["seed"] == 7


def test_bootstrap_contains_estimate_and_is_reproducible():
    s, t = make_case(5, 300, 15, None)
    point = M.classification_metrics(s, t)
    a = M.bootstrap_ci(s, t, n=200, seed=3)
    assert a == M.bootstrap_ci(s, t, n=200, seed=3)
    assert a != M.bootstrap_ci(s, t, n=200, seed=4)
    for key in ("mAP", "acc@1"):
        assert a[key]["low"] < point[key] < a[key]["high"], key
    narrow = M.bootstrap_ci(s, t, n=200, seed=3, alpha=0.5)
    assert a["mAP"]["low"] <= narrow["mAP"]["low"] <= narrow["mAP"]["high"] <= a["mAP"]["high"]


# ------------------------------------------------------------------------ spearman

def test_spearman_matches_rank_formula():
    rng = np.random.default_rng(0)
    norms = rng.random(30)
    depths = norms * 3 + rng.random(30)  # distinct values, so the no-tie formula applies
    d = stats.rankdata(norms) - stats.rankdata(depths)
    expected = 1 - 6 * np.sum(d ** 2) / (30 * (30 ** 2 - 1))
    got = M.spearman_norm_depth(norms, depths)
    assert got["rho"] == pytest.approx(expected, abs=1e-12)
    assert 0 <= got["p_value"] < 0.05 and got["n"] == 30
    assert M.spearman_norm_depth([0.1, 0.2, 0.3], [3, 2, 1])["rho"] == pytest.approx(-1.0)


def test_spearman_undefined_and_invalid():
    got = M.spearman_norm_depth([0.1, 0.2, 0.3], [2, 2, 2])
    assert got["rho"] is None and got["p_value"] is None and got["n"] == 3
    with pytest.raises(ValueError):
        M.spearman_norm_depth([0.1, 0.2], [1, 2, 3])


# ----------------------------------------------------------------------- hierarchy

# Classes 0..5; nodes 6, 7, 8 are not classes. Class 4 has two parents (a DAG); class 1 is
# an internal class; class 5 is a separate root.
#
#            8 (h3)
#          /      \
#       6 (h2)    7 (h1)
#       /   \    /  |  \
#   1 (h1)   4 (h0) 2   3
#     |
#     0
PARENTS = {0: [1], 1: [6], 4: {6, 7}, 2: [7], 3: [7], 6: [8], 7: [8]}
TREE_D = np.array([
    [0, 1, 3, 3, 2, 4],
    [1, 0, 3, 3, 2, 4],
    [3, 3, 0, 1, 1, 4],
    [3, 3, 1, 0, 1, 4],
    [2, 2, 1, 1, 0, 4],
    [4, 4, 4, 4, 4, 0],
], dtype=float)


def test_class_distance_matrix_hand_tree():
    np.testing.assert_array_equal(M.class_distance_matrix(PARENTS, 6), TREE_D)
    with pytest.raises(ValueError, match="cycle"):
        M.class_distance_matrix({0: [1], 1: [2], 2: [0]}, 3)


def test_mistake_severity_hand_tree():
    s = np.array([
        [0.8, 0.9, 0.1, 0.1, 0.1, 0.1],  # top-2: 1 (wrong, d=1), 0 (right)
        [0.9, 0.1, 0.2, 0.8, 0.1, 0.3],  # top-2: 0 (wrong, min(d(0,2), d(0,5)) = 3), 3 (d=1)
        [0.5, 0.1, 0.5, 0.1, 0.9, 0.1],  # top-2: 4 (right), 0 beats tied 2 (d(0,4) = 2)
    ])
    t = np.zeros((3, 6), dtype=bool)
    t[0, 0] = t[1, 2] = t[1, 5] = t[2, 4] = True
    got = M.mistake_severity(s, t, PARENTS, k=2)
    assert got["mistake_severity"] == pytest.approx((1 + 3) / 2)
    assert got["hier_dist@2"] == pytest.approx(((1 + 0) / 2 + (3 + 1) / 2 + (0 + 2) / 2) / 3)
    assert got["num_mistakes"] == 2 and got["num_clips"] == 3
    assert M.mistake_severity(s, t, PARENTS, k=1)["hier_dist@1"] == pytest.approx(4 / 3)
    correct = M.mistake_severity(s[2:], t[2:], PARENTS, k=1)
    assert correct["mistake_severity"] is None and correct["hier_dist@1"] == 0.0
