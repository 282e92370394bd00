"""What the radius means (``hyperbolic.evaluation.radius``) and the Möbius addition and Fréchet
mean it uses (``hyperbolic.geometry.poincare``), on constructed points whose answer is known,
against brute force (permutations, scipy's optimiser) and closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from hyperbolic.evaluation import radius as R
from hyperbolic.evaluation.scoring import ScoringModel
from hyperbolic.geometry import poincare
from hyperbolic.model.projector import Projector


def _hyperbolic_model(dim: int, c: float = 1.0, temperature: float = 0.1) -> ScoringModel:
    return ScoringModel(name="h", prompt_template="{label}", projector=Projector(dim), geometry="hyperbolic",
                        c=c, temperature=temperature)


def _ball_points(n, d, *, c, seed, max_s=0.9):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_s
    return u / u.norm(dim=-1, keepdim=True) * s / c ** 0.5


# ------------------------------------------------------------------------------ geometry

@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_mobius_add_gives_the_distance_and_cancels(c):
    x, y = _ball_points(7, 3, c=c, seed=1), _ball_points(7, 3, c=c, seed=2)
    d = 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * poincare.mobius_add(-x, y, c=c).norm(dim=-1))
    torch.testing.assert_close(d, poincare.pairwise_dist(x, y, c=c).diagonal(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(poincare.mobius_add(-x, poincare.mobius_add(x, y, c=c), c=c), y, rtol=1e-9, atol=1e-12)


def test_frechet_mean_of_two_points_on_a_ray_is_the_geodesic_midpoint():
    c = 2.0
    e = torch.tensor([0.6, 0.8], dtype=torch.float64)
    r1, r2 = 0.1, 0.6  # radii; dist0 = (2/sqrt c) artanh(sqrt c r)
    pts = torch.stack([e * r1, e * r2])
    mid = (math.atanh(math.sqrt(c) * r1) + math.atanh(math.sqrt(c) * r2)) / 2
    expected = e * math.tanh(mid) / math.sqrt(c)
    torch.testing.assert_close(poincare.frechet_mean(pts, c=c), expected, rtol=1e-10, atol=1e-12)


def test_frechet_mean_minimises_the_sum_of_squared_distances():
    c = 1.0
    pts = _ball_points(9, 2, c=c, seed=3, max_s=0.95)

    def cost(m):
        m = torch.tensor(m, dtype=torch.float64)[None]
        return float(poincare.pairwise_dist(m, pts, c=c).square().sum())

    brute = optimize.minimize(cost, np.zeros(2), method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000}).x
    np.testing.assert_allclose(poincare.frechet_mean(pts, c=c).numpy(), brute, atol=1e-6)


def test_frechet_mean_of_spread_points_is_stationary():
    # Spread points in many dimensions (pairwise distances ~4.6): a unit Karcher step diverges
    # here; at the minimiser the mean of log_m(x_i), i.e. of logmap0((-m) (+) x_i), is 0.
    g = torch.Generator().manual_seed(5)
    pts = poincare.expmap0(torch.randn(400, 64, generator=g, dtype=torch.float64) * 0.15, c=1.0)
    m = poincare.frechet_mean(pts, c=1.0)
    grad = poincare.logmap0(poincare.mobius_add(-m.expand_as(pts), pts, c=1.0), c=1.0).mean(0)
    assert float(grad.norm()) < 1e-9


# ------------------------------------------------------------------------------- hubness

def test_hubness_against_argsort_counts_and_scipy_skew():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(300, 40)) + np.linspace(0, 2, 40)  # later classes are hubs
    top10 = np.argsort(-s, axis=1)[:, :10]
    counts = np.bincount(top10.ravel(), minlength=40)
    top1 = np.bincount(s.argmax(1), minlength=40)
    out = R.hubness(s)
    assert out["skewness_N10"] == pytest.approx(stats.skew(counts), abs=1e-12)
    assert out["top1_hub_share"] == pytest.approx(top1.max() / 300)
    assert out["top1_hub_class"] == int(top1.argmax())


def test_hubness_of_all_tied_scores_is_flat_and_null_with_a_reason():
    out = R.hubness(np.zeros((50, 20), dtype=np.float32))
    assert out["skewness_N10"] is None and "same N_10" in out["skewness_skipped"]
    assert out["top1_hub_share"] == pytest.approx(1 / 20)  # expected over random tie orders


# --------------------------------------------------------------------------- logit split

def test_logit_split_prompts_at_one_radius_are_all_angle():
    torch.manual_seed(0)
    model = _hyperbolic_model(4)
    text = torch.nn.functional.normalize(torch.randn(12, 4), dim=-1) * 0.7
    audio = poincare.expmap0(torch.randn(30, 4), c=1.0)
    scores = model.score_points(audio, text)
    out = R.logit_split(model, audio, text, scores)
    assert out["angle_only"]["top1_agreement"] == 1.0
    assert out["angle_only"]["spearman"] == pytest.approx(1.0, abs=1e-6)
    assert out["prompt_radius_spread"] == pytest.approx(0.0, abs=1e-6)


def test_logit_split_prompts_on_one_ray_are_all_radius():
    model = _hyperbolic_model(3)
    ray = torch.tensor([0.0, 1.0, 0.0])
    text = ray * torch.linspace(0.1, 0.9, 8)[:, None]
    audio = poincare.expmap0(torch.randn(25, 3, generator=torch.Generator().manual_seed(1)), c=1.0)
    scores = model.score_points(audio, text)
    out = R.logit_split(model, audio, text, scores)
    assert out["radius_only"]["top1_agreement"] == 1.0
    assert out["radius_only"]["spearman"] == pytest.approx(1.0, abs=1e-6)
    # Every prompt at one radius on one ray: all tied, no rank correlation for any clip.
    assert out["angle_only"]["spearman"] is None and out["angle_only"]["spearman_clips"] == 0


def test_logit_split_is_null_for_cosine():
    model = ScoringModel(name="clap_cosine", prompt_template="{label}")
    out = R.logit_split(model, torch.randn(3, 2), torch.randn(4, 2), np.zeros((3, 4)))
    assert out["angle_only"] is None and "no radius" in out["skipped"]


# ----------------------------------------------------------------------------- genericity

def test_genericity_rank_correlations_and_null_reasons():
    labels = np.array([1, 2, 3, 1, 2, 4])
    radius = labels * 0.1 + 0.01 * np.arange(6)  # increasing in the label count, ties broken
    out = R.genericity(radius, labels, depths := np.array([3.0, 2, 1, np.nan, 2, 0]))
    assert out["radius_vs_num_labels"]["rho"] == pytest.approx(stats.spearmanr(radius, labels).statistic)
    known = ~np.isnan(depths)
    assert out["radius_vs_label_depth"]["rho"] == pytest.approx(
        stats.spearmanr(radius[known], depths[known]).statistic)
    assert out["radius_vs_label_depth"]["n"] == 5
    flat = R.genericity(radius, np.ones(6), None)
    assert flat["radius_vs_num_labels"]["rho"] is None and "same number of labels" in flat["radius_vs_num_labels"]["skipped"]
    assert "no --ontology" in flat["radius_vs_label_depth"]["skipped"]


# ---------------------------------------------------------------------- risk and coverage

def _aurc_brute(errors, confidence):
    """Mean over every order of the clips that sorts confidence descending (random tie orders)."""
    n = len(errors)
    values = []
    for perm in itertools.permutations(range(n)):
        c = confidence[list(perm)]
        if np.all(c[:-1] >= c[1:]):
            e = errors[list(perm)]
            values.append(np.mean(np.cumsum(e) / np.arange(1, n + 1)))
    return np.mean(values)


@pytest.mark.parametrize("seed", range(4))
def test_aurc_is_the_expectation_over_confidence_ties(seed):
    rng = np.random.default_rng(seed)
    errors = rng.integers(0, 2, 7).astype(float)
    errors[0] = 0.5  # an expected error (a top-1 tie)
    confidence = rng.integers(0, 3, 7).astype(float)
    assert R.risk_coverage(errors, confidence)["aurc"] == pytest.approx(_aurc_brute(errors, confidence), abs=1e-12)


def test_aurc_references_closed_forms():
    errors = np.array([1, 0, 0, 1, 0, 0, 0, 1.0])
    out = R.risk_coverage(errors, np.zeros(8))  # no information: every coverage has the error rate
    assert out["aurc"] == pytest.approx(3 / 8) and out["aurc_random"] == pytest.approx(3 / 8)
    # Optimal: 5 correct first (risk 0), then errors: risk(i) = (i - 5) / i for i = 6, 7, 8.
    assert out["aurc_optimal"] == pytest.approx((1 / 6 + 2 / 7 + 3 / 8) / 8)
    assert R.risk_coverage(errors, -errors)["aurc"] == pytest.approx(out["aurc_optimal"])
    assert out["curve"][-1] == {"coverage": 1.0, "risk": pytest.approx(3 / 8)}


def test_confidences_against_scipy_softmax_and_sorting():
    s = np.random.default_rng(1).normal(size=(10, 6))
    out = R.confidences(s)
    np.testing.assert_allclose(out["max_softmax"], special.softmax(s, axis=1).max(1))
    srt = np.sort(s, axis=1)
    np.testing.assert_allclose(out["margin"], srt[:, -1] - srt[:, -2])


# -------------------------------------------------------------------------- modality gap

def test_modality_gap_cosine_is_the_angle_between_mean_directions():
    model = ScoringModel(name="clap_cosine", prompt_template="{label}")
    audio = torch.tensor([[1.0, 0.1, 0], [1.0, -0.1, 0]])
    text = torch.tensor([[0.0, 0, 2], [0.0, 0, 3]])
    out = R.modality_gap(model, audio, text)
    assert out["centroid_distance"] == pytest.approx(math.pi / 2) and out["audio_radius_median"] is None


def test_modality_gap_hyperbolic_closed_form():
    c = 1.0
    model = _hyperbolic_model(2, c=c)
    e = torch.tensor([1.0, 0.0])
    audio = torch.stack([e * 0.5, -e * 0.5, e * 0.0])           # mean: the origin (symmetric)
    text = torch.stack([torch.tensor([0.0, 0.3])] * 2)            # mean: the point itself
    out = R.modality_gap(model, audio, text)
    assert out["centroid_distance"] == pytest.approx(2 * math.atanh(0.3), abs=1e-6)
    assert out["audio_radius_median"] == pytest.approx(0.5) and out["text_radius_median"] == pytest.approx(0.3)


# --------------------------------------------------------------------- text-tower health

def test_prompt_health_closed_forms():
    from hyperbolic.evaluation.scoring import prompt_health
    ortho = prompt_health(torch.eye(5) * 3)
    assert ortho["mean_pairwise_cosine"] == pytest.approx(0.0) and ortho["effective_rank"] == pytest.approx(5.0)
    same = prompt_health(torch.ones(4, 3))
    assert same["mean_pairwise_cosine"] == pytest.approx(1.0) and same["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert same["collapsed"] and not ortho["collapsed"]
    # Two unit vectors at angle a: singular values sqrt(1 + cos a) and sqrt(1 - cos a).
    a = 0.3
    two = prompt_health(torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)]]))
    p = np.array([math.sqrt(1 + math.cos(a)), math.sqrt(1 - math.cos(a))])
    p /= p.sum()
    assert two["mean_pairwise_cosine"] == pytest.approx(math.cos(a))
    assert two["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert prompt_health(torch.ones(1, 3))["effective_rank"] is None


def test_skewness_is_scipy_stats_skew_bit_for_bit():
    from scipy import stats

    from hyperbolic.evaluation.radius import skewness
    rng = np.random.default_rng(0)
    cases = [rng.standard_normal(527), rng.exponential(size=527) * 40, rng.integers(0, 300, 527).astype(float),
             rng.random(10) / 3, np.r_[np.zeros(526), 10_000.0]]
    cases += [rng.poisson(lam, size=int(rng.integers(3, 2000))).astype(float) + rng.random() for lam in (1, 5, 50)]
    for x in cases:
        assert skewness(x) == float(stats.skew(x))
