"""The block-wise sparse bootstrap against the per-resample loop it replaced.

``reference_samples`` is the previous implementation of ``bootstrap_samples``, kept here as the
reference: one resample at a time, a cumulative sum of the weights along every class's sorted
column. The new one must draw the same resamples and give the same values (the integer counts
are exact, so only the order of float sums may differ: 1e-12 is far above that and far below
any difference a changed resample or count would make).
"""

import numpy as np
import pytest

from hyperbolic.metrics import bootstrap as B
from hyperbolic.metrics.classification import expected_hits


def reference_samples(s, t, n, seed):
    num_clips = s.shape[0]
    hit1 = expected_hits(s, t, (1,))[1]
    cols = np.flatnonzero(t.any(axis=0))
    order = np.argsort(s[:, cols].T, axis=1)
    per_class = []
    for row, col in enumerate(cols):
        v = s[order[row], col]
        clips = np.flatnonzero(t[:, col])
        x = s[clips, col]
        u = np.argsort(x)
        per_class.append((clips[u], np.searchsorted(v, x[u], side="left"),
                          np.searchsorted(x[u], x[u], side="left")))
    rng = np.random.default_rng(seed)
    maps, accs = np.empty(n), np.empty(n)
    for b in range(n):
        w = np.bincount(rng.integers(0, num_clips, size=num_clips), minlength=num_clips)
        accs[b] = np.dot(w, hit1) / num_clips
        cum = np.zeros((len(cols), num_clips + 1), dtype=np.int64)
        np.cumsum(w[order], axis=1, out=cum[:, 1:])
        aps = []
        for row, (clips, n_lt, p_lt) in enumerate(per_class):
            wp = w[clips].astype(np.float64)
            if not wp.any():
                continue
            pos_cum = np.concatenate(([0.0], np.cumsum(wp)))
            p_ge = pos_cum[-1] - pos_cum[p_lt]
            n_ge = cum[row, -1] - cum[row, n_lt]
            d = wp > 0
            aps.append(np.sum(wp[d] * (p_ge[d] - wp[d] + 1) / (n_ge[d] - wp[d] + 1)) / pos_cum[-1])
        maps[b] = np.mean(aps)
    return {"mAP": maps, "acc@1": accs}


def case(seed, n, c, levels, density, dtype=np.float64):
    """Random scores on ``levels`` values (None: continuous), so ties are everywhere; every clip
    has a label; classes with no positive, one positive and all positives occur."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) if levels is None else rng.integers(0, levels, size=(n, c)).astype(float)
    t = rng.random((n, c)) < density
    if c > 2:
        t[:, 0] = False                    # no positive: skipped
        t[:, 1] = False
        t[rng.integers(n), 1] = True       # a single positive: absent from many resamples
        t[:, 2] = True                     # every clip positive
    for i in np.flatnonzero(~t.any(axis=1)):
        t[i, rng.integers(c)] = True
    return s.astype(dtype), t


@pytest.mark.parametrize("levels", [2, 3, 7, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_values_as_the_per_resample_loop(levels, seed, monkeypatch):
    # Small blocks and chunks, so several of each (and a partial last one) are crossed.
    monkeypatch.setattr(B, "_BLOCK", 7)
    monkeypatch.setattr(B, "_CHUNK", 25)
    s, t = case(seed, 150, 12, levels, 0.15, dtype=np.float32 if seed else np.float64)
    got = B.bootstrap_samples(s, t, n=23, seed=seed + 5)
    want = reference_samples(s, t, 23, seed + 5)
    for key in ("mAP", "acc@1"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12, err_msg=key)


def test_block_size_does_not_change_the_resamples(monkeypatch):
    s, t = case(3, 80, 9, 4, 0.2)
    whole = B.bootstrap_samples(s, t, n=30, seed=11)
    monkeypatch.setattr(B, "_BLOCK", 4)
    monkeypatch.setattr(B, "_CHUNK", 1)
    split = B.bootstrap_samples(s, t, n=30, seed=11)
    first = B.bootstrap_samples(s, t, n=9, seed=11)
    for key in ("mAP", "acc@1"):
        np.testing.assert_allclose(split[key], whole[key], rtol=0, atol=1e-12)
        np.testing.assert_allclose(first[key], whole[key][:9], rtol=0, atol=1e-12)


def test_more_clips_than_int16_holds():
    """Above 32,767 clips the weights no longer fit int16: the float32 path, same values."""
    s, t = case(4, 33000, 3, 50, 0.01)
    assert B._weight_dtype(len(s)) is np.float32
    got = B.bootstrap_samples(s, t, n=3, seed=0)
    want = reference_samples(s, t, 3, 0)
    for key in ("mAP", "acc@1"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12, err_msg=key)


def test_one_class_one_clip_kinds():
    # C = 1 (every clip positive: AP 1 in every resample) and N = 1.
    s = np.arange(6, dtype=float)[:, None]
    got = B.bootstrap_samples(s, np.ones((6, 1), bool), n=5, seed=0)
    np.testing.assert_array_equal(got["mAP"], np.ones(5))
    one = B.bootstrap_samples(np.array([[0.3, 0.1]]), np.array([[False, True]]), n=4, seed=0)
    np.testing.assert_array_equal(one["mAP"], np.ones(4))
    np.testing.assert_array_equal(one["acc@1"], np.zeros(4))
