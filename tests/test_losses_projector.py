"""Projector clipping, learnable geometry and the contrastive objectives."""

import math

import pytest
import torch

from hyperbolic.geometry import poincare
from hyperbolic.model.projector import C_RANGE_FACTOR, TAU_MAX, TAU_MIN, Geometry, Projector, clip_tangent, similarity
from hyperbolic.training.objective import clip_contrastive, multi_positive_contrastive


@pytest.mark.parametrize("c", [0.1, 1.0, 4.0])
def test_clip_keeps_points_inside_clip_radius(c):
    u = torch.randn(64, 8, dtype=torch.float64) * 50
    y = poincare.expmap0(clip_tangent(u, c=c, clip_r=0.9), c=c)
    assert (y.norm(dim=-1) <= 0.9 / math.sqrt(c) * (1 + 1e-12)).all()
    small = torch.randn(4, 8, dtype=torch.float64) * 1e-3
    assert torch.equal(clip_tangent(small, c=c, clip_r=0.9), small)  # inside: untouched


def _radial_grad_and_descent(clip, steps=200, lr=1.0):
    """Gradient descent on |expmap0(clip(u))| from a point far beyond the clip radius."""
    u = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    first = None
    for _ in range(steps):
        y = poincare.expmap0(clip(u), c=1.0)
        u.grad = None
        y.norm().backward()
        radial = ((u.grad * u.detach()).sum() / u.detach().norm()).item()
        first = radial if first is None else first
        with torch.no_grad():
            u -= lr * u.grad
    return first, poincare.expmap0(clip(u), c=1.0).norm().item()


def test_point_on_clip_sphere_can_move_inward():
    clip_r = 0.9
    def ours(u):
        return clip_tangent(u, c=1.0, clip_r=clip_r)
    radial, final = _radial_grad_and_descent(ours)
    assert radial > 1e-3   # descent shrinks |u| ...
    assert final < clip_r - 0.05  # ... until the point is back inside the clip radius

    def hard(u):  # the textbook hard clip: scale min(1, r / |u|) with a live gradient
        r_t = math.atanh(clip_r)
        return u * (r_t / u.norm(dim=-1, keepdim=True)).clamp(max=1.0)

    radial, final = _radial_grad_and_descent(hard)
    assert abs(radial) < 1e-12 and final == pytest.approx(clip_r)  # stuck on the sphere for good


def test_projector_init_and_geometries():
    torch.manual_seed(0)
    proj = Projector(16)
    assert torch.count_nonzero(proj.linear.bias) == 0
    bound = math.sqrt(6 / (16 + 16))  # Xavier-uniform bound
    assert proj.linear.weight.abs().max() <= bound and proj.linear.weight.abs().max() > 0.8 * bound
    x = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    assert (proj(x, c=2.0).norm(dim=-1) < 0.9 / math.sqrt(2.0) + 1e-6).all()
    euclid = Projector(16, geometry="euclidean")
    assert torch.allclose(euclid(x, c=1.0).norm(dim=-1), torch.ones(5))
    with pytest.raises(ValueError, match="geometry"):
        Projector(16, geometry="spherical")


def test_learned_curvature_and_temperature_stay_clamped():
    geo = Geometry(0.5, 1.0, learn_c=True, learn_temperature=True)
    opt = torch.optim.SGD(geo.parameters(), lr=10.0)
    for sign in (1.0, -1.0):
        for _ in range(50):
            opt.zero_grad()
            (sign * (geo.c.log() + geo.temperature.log())).backward()  # pushes past both bounds
            opt.step()
            geo.clamp_()
        c, tau = geo.c.item(), geo.temperature.item()
        assert 0.5 / C_RANGE_FACTOR * (1 - 1e-6) <= c <= 0.5 * C_RANGE_FACTOR * (1 + 1e-6)
        assert TAU_MIN * (1 - 1e-6) <= tau <= TAU_MAX * (1 + 1e-6)
        assert c == pytest.approx(0.05 if sign > 0 else 5.0, rel=1e-5)


def test_frozen_geometry_has_no_gradient():
    geo = Geometry(1.0, 0.5)
    assert not geo.log_c.requires_grad and not geo.log_tau.requires_grad
    assert geo.c.item() == pytest.approx(1.0) and geo.temperature.item() == pytest.approx(0.5)


def test_similarity_is_negative_distance_over_temperature():
    a = poincare.expmap0(torch.randn(3, 4, dtype=torch.float64), c=2.0)
    t = poincare.expmap0(torch.randn(5, 4, dtype=torch.float64), c=2.0)
    s = similarity(a, t, geometry="hyperbolic", c=2.0, temperature=0.5)
    for i in range(3):
        for j in range(5):
            # the textbook closed form, written out here: arcosh(1 + 2c|a-t|^2 / ((1-c|a|^2)(1-c|t|^2))) / sqrt(c)
            q = 2.0 * (a[i] - t[j]).square().sum() / ((1 - 2.0 * a[i].square().sum()) * (1 - 2.0 * t[j].square().sum()))
            d = math.acosh(1 + 2 * q.item()) / math.sqrt(2.0)
            assert s[i, j].item() == pytest.approx(-d / 0.5, rel=1e-9)


def test_multi_positive_loss_matches_hand_computation():
    # 2 clips, 3 classes; clip 0 has classes {0, 1}, clip 1 has {2}.
    L = [[1.0, 0.5, -1.0], [0.2, -0.3, 2.0]]
    P = [[True, True, False], [False, False, True]]
    e = [[math.exp(v) for v in row] for row in L]
    a2t = [-math.log((e[0][0] + e[0][1]) / sum(e[0])), -math.log(e[1][2] / sum(e[1]))]
    col = [[e[0][k], e[1][k]] for k in range(3)]
    t2a = [-math.log(col[0][0] / sum(col[0])), -math.log(col[1][0] / sum(col[1])),
           -math.log(col[2][1] / sum(col[2]))]
    expected = (sum(a2t) / 2 + sum(t2a) / 3) / 2
    got = multi_positive_contrastive(torch.tensor(L, dtype=torch.float64), torch.tensor(P))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_multi_positive_never_pushes_a_clip_from_its_labels():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    positives = torch.rand(6, 5) < 0.4
    positives[torch.arange(5), torch.arange(5)] = True
    positives[5, 0] = True
    multi_positive_contrastive(logits, positives).backward()
    # a2t part alone: gradient on a positive logit is <= 0; check the whole loss on rows whose
    # columns hold a single positive as well: the total gradient on positives stays <= 0.
    assert (logits.grad[positives] <= 1e-12).all()
    assert (logits.grad[~positives] >= -1e-12).all()


def test_multi_positive_rejects_rows_without_positive():
    with pytest.raises(ValueError, match="positive"):
        multi_positive_contrastive(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_class_without_positive_has_no_text_to_audio_term():
    L = torch.tensor([[1.0, 0.0, -2.0]], dtype=torch.float64)  # one clip, positive only in class 0
    P = torch.tensor([[True, False, False]])
    a2t = -math.log(math.exp(1.0) / (math.exp(1.0) + 1.0 + math.exp(-2.0)))
    assert multi_positive_contrastive(L, P).item() == pytest.approx((a2t + 0.0) / 2, rel=1e-12)
    assert multi_positive_contrastive(L, P).item() > 0  # negatives still count for a single clip


def test_clip_contrastive_hand_computed_2x2():
    L = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    rows = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.e / (2 * math.e))]
    cols = [-math.log(math.exp(2) / (math.exp(2) + math.e)), -math.log(math.e / (1 + math.e))]
    assert clip_contrastive(L).item() == pytest.approx((sum(rows) / 2 + sum(cols) / 2) / 2, rel=1e-12)
