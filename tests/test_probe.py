"""The linear-probe ceiling (``hyperbolic.evaluation.probe``)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hyperbolic.evaluation.probe import ALPHAS, linear_probe, probe_columns


def _ridge_by_hand(x, y, e, alpha):
    """Ridge with an unpenalised intercept, closed form: centre, solve (X'X + aI) w = X'y."""
    mx, my = x.mean(0), y.mean(0)
    w = np.linalg.solve((x - mx).T @ (x - mx) + alpha * np.eye(x.shape[1]), (x - mx).T @ (y - my))
    return (e - mx) @ w + my


def _loo_alpha(x, y):
    """The penalty with the least leave-one-out squared error, by refitting without each clip."""
    errors = []
    for alpha in ALPHAS:
        err = 0.0
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            err += ((_ridge_by_hand(x[keep], y[keep], x[i:i + 1], alpha) - y[i]) ** 2).sum()
        errors.append(err)
    return ALPHAS[int(np.argmin(errors))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_is_ridge_with_the_leave_one_out_penalty(seed):
    rng = np.random.default_rng(seed)
    x, e = rng.standard_normal((30, 5)), rng.standard_normal((7, 5))
    y = (x @ rng.standard_normal((5, 4)) + rng.standard_normal((30, 4)) * (1 + 3 * seed)) > 0.5
    got = linear_probe(x, y, e, classes=[0, 1, 2, 3])
    alpha = _loo_alpha(x, y.astype(float))
    np.testing.assert_allclose(got, _ridge_by_hand(x, y.astype(float), e, alpha), rtol=1e-8, atol=1e-10)


def test_probe_reaches_ap_1_on_separable_classes():
    rng = np.random.default_rng(3)
    centres = np.eye(6, 16) * 3

    def clips(n):
        labels = rng.integers(0, 6, size=n)
        emb = centres[labels] + 0.3 * rng.standard_normal((n, 16))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # unit vectors, as CLAP gives them
        return emb, np.eye(6, dtype=bool)[labels]

    (x, y), (e, t) = clips(120), clips(60)
    scores = linear_probe(x, y, e, classes=range(6))
    assert [average_precision_score(t[:, k], scores[:, k]) for k in range(6)] == pytest.approx([1.0] * 6, abs=1e-12)
    assert (scores.argmax(1) == t.argmax(1)).all()


def test_classes_the_probe_cannot_fit_are_minus_inf():
    rng = np.random.default_rng(4)
    x, e = rng.standard_normal((20, 3)), rng.standard_normal((5, 3))
    y = np.zeros((20, 5), dtype=bool)
    y[:10, 0] = y[10:, 1] = True    # fitted
    y[:, 2] = True                  # every clip positive: nothing to tell apart
    y[:4, 4] = True                 # positives, but not asked for (held out)
    # column 3: no positive training clip
    assert probe_columns(y, [0, 1, 2, 3]) == [0, 1]
    assert probe_columns(y) == [0, 1, 4]
    scores = linear_probe(x, y, e, classes=[0, 1, 2, 3])
    assert np.isfinite(scores[:, [0, 1]]).all() and np.isneginf(scores[:, [2, 3, 4]]).all()
    np.testing.assert_allclose(scores[:, [0, 1]], linear_probe(x, y[:, :2], e), rtol=1e-12)


def test_mismatched_shapes_name_both():
    with pytest.raises(ValueError, match=r"train_emb \(4, 3\) and eval_emb \(2, 5\)"):
        linear_probe(np.zeros((4, 3)), np.zeros((4, 2), dtype=bool), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="N = 4 training clips"):
        linear_probe(np.zeros((4, 3)), np.zeros((3, 2), dtype=bool), np.zeros((2, 3)))
