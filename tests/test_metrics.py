"""hyperbolic.metrics.classification against scikit-learn and naive loop references written here."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from hyperbolic.metrics import bootstrap as B
from hyperbolic.metrics import classification as M
from hyperbolic.metrics import hierarchy as H

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

def tie_choices(row, k):
    """Every top-k set that a uniformly random order inside the row's ties can give, each
    equally likely: all entries above the k-th largest value, plus each way of choosing the
    places left among the entries equal to it."""
    k = min(k, len(row))
    kth = np.sort(row)[::-1][k - 1]
    above = np.flatnonzero(row > kth)
    group = np.flatnonzero(row == kth)
    return [np.concatenate([above, np.array(chosen, dtype=int)])
            for chosen in itertools.combinations(group, k - len(above))]


def ref_hit(row, truth, k):
    """P(a true entry in the top k) over random tie orders: by enumerating the tie choices when
    there are few, else drawing the places left one by one without a true entry
    (``prod_j (g - m - j) / (g - j)``, g tied entries of which m true)."""
    k = min(k, len(row))
    kth = np.sort(row)[::-1][k - 1]
    if truth[row > kth].any():
        return 1.0
    group = row == kth
    g, m, places = int(group.sum()), int(truth[group].sum()), k - int((row > kth).sum())
    if math.comb(g, places) <= 5000:
        return np.mean([truth[top].any() for top in tie_choices(row, k)])
    miss = 1.0
    for j in range(places):
        miss *= (g - m - j) / (g - j)
    return 1.0 - miss


def ref_acc_at_k(s, t, k):
    return np.mean([ref_hit(s[i], t[i], k) for i in range(len(s))])


def ref_expected_sets(s, k):
    """Probability of each entry being in its row's top k, by enumerating the tie choices."""
    m = np.zeros(s.shape)
    for i in range(len(s)):
        choices = tie_choices(s[i], k)
        for top in choices:
            m[i, top] += 1 / len(choices)
    return m


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
        out[f"t2a_R@{k}"] = ref_acc_at_k(s[:, queries].T, t[:, queries].T, k)
        out[f"a2t_R@{k}"] = ref_acc_at_k(s, t, k)
    aps = [expected_ap_by_patterns(s[:, c], t[:, c], map_k) for c in queries]
    out[f"t2a_mAP@{map_k}"] = np.mean(aps)
    return out


def expected_ap_by_patterns(row, rel, k):
    """AP@k averaged over every order inside the ties, by enumeration: the top k slots are filled
    group by group (descending score); a group of g entries with m relevant fills its L slots with
    each 0/1 pattern of r ones with probability C(g - L, m - r) / C(g, m) (the pattern of the
    first L places of a uniformly random order)."""
    outcomes = [((), 1.0)]
    for v in sorted(set(row.tolist()), reverse=True):
        filled = len(outcomes[0][0])
        if filled >= k:
            break
        g, m = int(np.sum(row == v)), int(np.sum(rel[row == v]))
        slots = min(g, k - filled)
        patterns = []
        for pattern in itertools.product((0, 1), repeat=slots):
            r = sum(pattern)
            p = math.comb(g - slots, m - r) / math.comb(g, m) if 0 <= m - r <= g - slots else 0.0
            if p:
                patterns.append((pattern, p))
        outcomes = [(seq + pat, q * p) for seq, q in outcomes for pat, p in patterns]
    total = 0.0
    for seq, q in outcomes:
        hits, ap = 0, 0.0
        for i, hit in enumerate(seq):
            if hit:
                hits += 1
                ap += hits / (i + 1)
        total += q * ap / min(k, int(rel.sum()))
    return total


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
    assert got["mAP_per_clip"] == got["map"]
    m_auc = ref_mauc(s, t)
    if m_auc is None:
        assert got["mAUC"] is None and got["d_prime"] is None
    else:
        assert got["mAUC"] == pytest.approx(m_auc, abs=TOL)
        if 0 < m_auc < 1:
            assert got["d_prime"] == pytest.approx(math.sqrt(2) * stats.norm.ppf(m_auc), abs=1e-9)
            assert got["d_prime"] == math.sqrt(2) * stats.norm.ppf(got["mAUC"])  # scipy.stats' value, bit for bit
        else:
            assert got["d_prime"] is None

    # Set metrics from the expected counts over the enumerated tie choices; without ties they
    # must be scikit-learn's (micro from counts, macro as the mean of per-class binary scores:
    # both work for C == 1, where multilabel scikit-learn calls read the column as binary).
    labels = [j for j in range(c) if t[:, j].any()]
    m = ref_expected_sets(s, 3)
    tp, pred, pos = (m * t).sum(axis=0), m.sum(axis=0), t.sum(axis=0)
    assert got["precision_micro"] == pytest.approx(tp.sum() / pred.sum(), abs=TOL)
    assert got["recall_micro"] == pytest.approx(tp.sum() / pos.sum(), abs=TOL)
    assert got["f1_micro"] == pytest.approx(2 * tp.sum() / (pred.sum() + pos.sum()), abs=TOL)
    safe = np.where(pred[labels] > 0, pred[labels], 1)
    assert got["precision_macro"] == pytest.approx(np.mean(tp[labels] / safe), abs=TOL)
    assert got["recall_macro"] == pytest.approx(np.mean(tp[labels] / pos[labels]), abs=TOL)
    assert got["f1_macro"] == pytest.approx(np.mean(2 * tp[labels] / (pred[labels] + pos[labels])), abs=TOL)
    if levels is None:
        hard = ref_topk_sets(s, 3)
        for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            per_class = [score(t[:, j], hard[:, j], zero_division=0) for j in labels]
            assert got[f"{name}_macro"] == pytest.approx(np.mean(per_class), abs=TOL)
        assert got["precision_micro"] == pytest.approx(precision_score(t, hard, average="micro"), abs=TOL)
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


def test_ties_count_as_the_expected_value_over_random_orders():
    s = np.zeros((3, 4))  # every class tied
    t = np.array([[False, True, False, False],
                  [True, False, False, False],
                  [False, False, True, True]])
    got = M.classification_metrics(s, t, ks=(1, 2, 3, 4), set_k=2)
    # A true label among k of 4 tied classes: 1 - C(4 - m, k) / C(4, k) for m labels.
    assert got["acc@1"] == pytest.approx((1 / 4 + 1 / 4 + 2 / 4) / 3)
    assert got["acc@2"] == pytest.approx((1 / 2 + 1 / 2 + (1 - 1 / 6)) / 3)
    assert got["acc@4"] == 1.0
    # Each class is in a top-2 set with probability 1/2: expected tp = 4 * 1/2 of 6 predictions.
    assert got["precision_micro"] == pytest.approx(2 / 6)
    assert got["recall_micro"] == pytest.approx(2 / 4)


def test_constant_scores_give_labels_over_classes_whatever_the_class_order():
    # AudioSet-like: class 0 is on most clips. The lower-index rule gave acc@1 = its frequency.
    rng = np.random.default_rng(0)
    t = rng.random((300, 20)) < 0.05
    t[:240, 0] = True
    for i in np.flatnonzero(~t.any(axis=1)):
        t[i, rng.integers(1, 20)] = True
    for dtype in (np.float32, np.float64):
        s = np.full(t.shape, 0.3, dtype=dtype)
        got = M.classification_metrics(s, t)
        assert got["acc@1"] == pytest.approx(np.mean(t.sum(axis=1) / 20), abs=TOL)
        assert got["acc@1"] < 0.2 < t[:, 0].mean()  # not class 0's frequency (0.8)
        perm = rng.permutation(20)
        again = M.classification_metrics(s, t[:, perm])
        for key in ("acc@1", "acc@5", "precision_micro", "recall_micro", "f1_micro", "recall_macro"):
            assert again[key] == pytest.approx(got[key], abs=TOL), key
        assert M.retrieval_metrics(s, t)["a2t_R@1"] == pytest.approx(got["acc@1"], abs=TOL)


@pytest.mark.parametrize("seed,levels", [(0, 2), (1, 3), (2, 1)])
def test_ties_equal_the_average_over_every_tie_order(seed, levels):
    """Brute force: every one of the C! orders of the columns breaks the ties once."""
    s, t = make_case(seed, 12, 5, levels)
    orders = list(itertools.permutations(range(5)))
    ks = (1, 2, 3)
    acc = {k: 0.0 for k in ks}
    tp = np.zeros(5)
    for order in orders:
        rank_of = np.empty(5)
        rank_of[list(order)] = np.arange(5)  # tie-break: column order[0] first
        top = np.array([np.lexsort((rank_of, -row)) for row in s])  # (N, C), best first
        for k in ks:
            acc[k] += np.mean([t[i, top[i, :k]].any() for i in range(len(s))]) / len(orders)
        hard = np.zeros(s.shape, dtype=bool)
        np.put_along_axis(hard, top[:, :2], True, axis=1)
        tp += (hard & t).sum(axis=0) / len(orders)
    got = M.classification_metrics(s, t, ks=ks, set_k=2)
    ret = M.retrieval_metrics(s, t, ks=ks)
    for k in ks:
        assert got[f"acc@{k}"] == pytest.approx(acc[k], abs=TOL)
        assert ret[f"a2t_R@{k}"] == pytest.approx(acc[k], abs=TOL)
    pos = t.sum(axis=0)
    assert got["precision_micro"] == pytest.approx(tp.sum() / (2 * len(s)), abs=TOL)
    assert got["recall_micro"] == pytest.approx(tp.sum() / pos.sum(), abs=TOL)
    labels = pos > 0
    assert got["recall_macro"] == pytest.approx(np.mean(tp[labels] / pos[labels]), abs=TOL)


def test_t2a_recall_averages_over_clip_orders():
    s, t = make_case(1, 6, 4, 2)
    queries = [c for c in range(4) if t[:, c].any()]
    orders = list(itertools.permutations(range(6)))
    got = M.retrieval_metrics(s, t, ks=(1, 2))
    for k in (1, 2):
        expected = 0.0
        for order in orders:
            rank_of = np.empty(6)
            rank_of[list(order)] = np.arange(6)
            expected += np.mean([t[np.lexsort((rank_of, -s[:, c]))[:k], c].any() for c in queries]) / len(orders)
        assert got[f"t2a_R@{k}"] == pytest.approx(expected, abs=TOL)


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
    # Class 0 ranks clip 3 (relevant), then clips 0 and 2 tied (2 relevant), then 1: AP@10 is
    # (1 + 2/3)/2 or (1 + 2/2)/2, 11/12 on average. Class 1 (all 4 tied, 2 relevant): the relevant
    # pair takes ranks (a, b) among the 6 pairs, AP = (1/a + 2/b)/2: 49/72 on average.
    assert got["t2a_mAP@10"] == pytest.approx((11 / 12 + 49 / 72) / 2)
    # R@1: class 0's top clip is relevant; class 1 draws one of 4 tied clips, 2 relevant.
    assert got["t2a_R@1"] == pytest.approx((1 + 2 / 4) / 2)


@pytest.mark.parametrize("seed,n,c,levels", [(0, 40, 7, None), (4, 120, 12, None), (5, 8, 30, 2)])
def test_legacy_set_metrics_average_over_every_class(seed, n, c, levels):
    s, t = make_case(seed, n, c, levels)  # one class has no positive
    got = M.legacy_set_metrics(s, t, set_k=3)
    m = ref_expected_sets(s, 3)
    tp, pred, pos = (m * t).sum(axis=0), m.sum(axis=0), t.sum(axis=0)
    p = np.mean([tp[j] / pred[j] if pred[j] else 0.0 for j in range(c)])
    r = np.mean([tp[j] / pos[j] if pos[j] else 0.0 for j in range(c)])
    assert got["precision_macro"] == pytest.approx(p, abs=TOL)
    assert got["recall_macro"] == pytest.approx(r, abs=TOL)
    assert got["f1_macro"] == pytest.approx(2 * p * r / (p + r), abs=TOL)
    assert got["num_classes_averaged"] == c
    if levels is None:  # no ties: scikit-learn over all classes of the list
        hard = ref_topk_sets(s, 3)
        assert got["precision_macro"] == pytest.approx(
            precision_score(t, hard, average=None, labels=range(c), zero_division=0).mean(), abs=TOL)
        ours = M.classification_metrics(s, t, set_k=3)
        assert got["recall_macro"] < ours["recall_macro"]  # the empty class counts 0 here


# ----------------------------------------------------------------------- bootstrap

def ref_resample_ap(s, t, idx):
    """Class AP of the resampled rows ``idx`` by loops: each drawn positive row r is ranked
    against the resample without the other copies of its own clip (own copies count once)."""
    aps = []
    for c in range(s.shape[1]):
        rows = [r for r in range(len(idx)) if t[idx[r], c]]
        if not rows:
            continue
        prec = []
        for r in rows:
            others = [q for q in range(len(idx)) if idx[q] != idx[r] or q == r]
            ge = [q for q in others if s[idx[q], c] >= s[idx[r], c]]
            prec.append(sum(t[idx[q], c] for q in ge) / len(ge))
        aps.append(np.mean(prec))
    return np.mean(aps)


def ref_bootstrap(s, t, n, seed, alpha):
    rng = np.random.default_rng(seed)
    maps, accs = [], []
    for _ in range(n):
        idx = rng.integers(0, len(s), size=len(s))
        maps.append(ref_resample_ap(s, t, idx))
        accs.append(ref_acc_at_k(s[idx], t[idx], 1))
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return np.percentile(maps, q), np.percentile(accs, q), np.array(maps), np.array(accs)


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 3)])
def test_bootstrap_matches_resampled_loops(seed, levels):
    s, t = make_case(seed, 30, 6, levels)
    got = B.bootstrap_ci(s, t, n=25, seed=7, alpha=0.1)
    (m_lo, m_hi), (a_lo, a_hi), maps, accs = ref_bootstrap(s, t, 25, 7, 0.1)
    assert got["mAP"]["low"] == pytest.approx(m_lo, abs=TOL)
    assert got["mAP"]["high"] == pytest.approx(m_hi, abs=TOL)
    assert got["acc@1"]["low"] == pytest.approx(a_lo, abs=TOL)
    assert got["acc@1"]["high"] == pytest.approx(a_hi, abs=TOL)
    assert got["n"] == 25 and got["seed"] == 7
    samples = B.bootstrap_samples(s, t, n=25, seed=7)
    np.testing.assert_allclose(samples["mAP"], maps, atol=TOL)
    np.testing.assert_allclose(samples["acc@1"], accs, atol=TOL)


def test_resample_without_duplicates_is_sklearn_ap():
    s, t = make_case(2, 25, 5, 3)
    idx = np.random.default_rng(0).permutation(25)  # every clip once
    assert ref_resample_ap(s, t, idx) == pytest.approx(ref_map_classes(s, t), abs=TOL)


def test_bootstrap_interval_is_not_biased_upward():
    """Random scores, rare positives: copies tied with each other (scikit-learn on the
    duplicated rows, the earlier rule) put the whole interval above the point estimate."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((1500, 30))
    t = rng.random((1500, 30)) < 0.01
    for i in np.flatnonzero(~t.any(axis=1)):
        t[i, rng.integers(30)] = True
    point = M.classification_metrics(s, t)["mAP"]
    draws = np.random.default_rng(1)
    tied = [ref_map_classes(s[idx], t[idx]) for idx in (draws.integers(0, 1500, size=1500) for _ in range(40))]
    assert np.percentile(tied, 2.5) > point  # the earlier interval misses the point
    got = B.bootstrap_ci(s, t, n=40, seed=1)
    assert got["mAP"]["low"] < point < got["mAP"]["high"]
    assert abs(np.mean(B.bootstrap_samples(s, t, n=40, seed=1)["mAP"]) - point) < abs(np.mean(tied) - point) / 2


def test_paired_difference_uses_the_same_resamples():
    s, t = make_case(4, 120, 12, None)
    better = s + 0.8 * t  # informative
    a = B.bootstrap_samples(better, t, n=50, seed=2)
    b = B.bootstrap_samples(s, t, n=50, seed=2)
    pa, pb = M.classification_metrics(better, t), M.classification_metrics(s, t)
    d = B.bootstrap_difference(a, b, pa, pb)
    for key in ("mAP", "acc@1"):
        assert d[key]["diff"] == pytest.approx(pa[key] - pb[key])
        assert d[key]["low"] == pytest.approx(np.percentile(a[key] - b[key], 2.5))
        assert d[key]["high"] == pytest.approx(np.percentile(a[key] - b[key], 97.5))
        assert d[key]["low"] > 0
    # Same resamples: the model against itself differs by exactly 0 on every resample.
    same = B.bootstrap_difference(a, a, pa, pa)
    assert same["mAP"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="same resamples"):
        B.bootstrap_difference(a, B.bootstrap_samples(s, t, n=10, seed=2), pa, pb)


def test_bootstrap_contains_estimate_and_is_reproducible():
    s, t = make_case(5, 300, 15, None)
    point = M.classification_metrics(s, t)
    a = B.bootstrap_ci(s, t, n=200, seed=3)
    assert a == B.bootstrap_ci(s, t, n=200, seed=3)
    assert a != B.bootstrap_ci(s, t, n=200, seed=4)
    for key in ("mAP", "acc@1"):
        assert a[key]["low"] < point[key] < a[key]["high"], key
    narrow = B.bootstrap_ci(s, t, n=200, seed=3, alpha=0.5)
    assert a["mAP"]["low"] <= narrow["mAP"]["low"] <= narrow["mAP"]["high"] <= a["mAP"]["high"]


# ------------------------------------------------------------------------ spearman

def test_spearman_matches_rank_formula():
    rng = np.random.default_rng(0)
    norms = rng.random(30)
    depths = norms * 3 + rng.random(30)  # distinct values, so the no-tie formula applies
    d = stats.rankdata(norms) - stats.rankdata(depths)
    expected = 1 - 6 * np.sum(d ** 2) / (30 * (30 ** 2 - 1))
    got = H.spearman_norm_depth(norms, depths)
    assert got["rho"] == pytest.approx(expected, abs=1e-12)
    assert 0 <= got["p_value"] < 0.05 and got["n"] == 30
    assert H.spearman_norm_depth([0.1, 0.2, 0.3], [3, 2, 1])["rho"] == pytest.approx(-1.0)


def test_spearman_undefined_and_invalid():
    got = H.spearman_norm_depth([0.1, 0.2, 0.3], [2, 2, 2])
    assert got["rho"] is None and got["p_value"] is None and got["n"] == 3
    with pytest.raises(ValueError):
        H.spearman_norm_depth([0.1, 0.2], [1, 2, 3])


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
    np.testing.assert_array_equal(H.class_distance_matrix(PARENTS, 6), TREE_D)
    with pytest.raises(ValueError, match="cycle"):
        H.class_distance_matrix({0: [1], 1: [2], 2: [0]}, 3)


def test_mistake_severity_hand_tree():
    s = np.array([
        [0.8, 0.9, 0.1, 0.1, 0.1, 0.1],  # top-2: 1 (wrong, d=1), 0 (right)
        [0.9, 0.1, 0.2, 0.8, 0.1, 0.3],  # top-2: 0 (wrong, min(d(0,2), d(0,5)) = 3), 3 (d=1)
        [0.5, 0.1, 0.5, 0.1, 0.9, 0.1],  # top-2: 4 (right), 0 beats tied 2 (d(0,4) = 2)
    ])
    t = np.zeros((3, 6), dtype=bool)
    t[0, 0] = t[1, 2] = t[1, 5] = t[2, 4] = True
    got = H.mistake_severity(s, t, PARENTS, k=2)
    assert got["mistake_severity"] == pytest.approx((1 + 3) / 2)
    assert got["hier_dist@2"] == pytest.approx(((1 + 0) / 2 + (3 + 1) / 2 + (0 + 2) / 2) / 3)
    assert got["num_mistakes"] == 2 and got["num_clips"] == 3
    assert H.mistake_severity(s, t, PARENTS, k=1)["hier_dist@1"] == pytest.approx(4 / 3)
    correct = H.mistake_severity(s[2:], t[2:], PARENTS, k=1)
    assert correct["mistake_severity"] is None and correct["hier_dist@1"] == 0.0
