"""hyperbolic/geometry/poincare.py against geoopt and 50-digit mpmath references, geometric
invariants, and finite values and gradients at extreme inputs."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp

from hyperbolic.geometry import legacy
from hyperbolic.geometry import poincare as pm

DTYPES = [torch.float32, torch.float64]
CURVATURES = [0.1, 1.0, 5.0]
SEEDS = [0, 1, 2]
# Relative error allowed against a 50-digit reference evaluated at the same
# (rounded) inputs. float64 results are observed within ~1e-13.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}
# Largest distance from the origin that the usable ball allows, times sqrt(c):
# 2 artanh(1 - BALL_EPS), with 1 - BALL_EPS rounded to the dtype as the code has it.
MAX_DIST0 = {dt: 2 * math.atanh(float(torch.tensor(1 - eps, dtype=dt))) for dt, eps in pm.BALL_EPS.items()}


# ---------------------------------------------------------------- inputs


def unit_rows(n, d, *, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def ball_points(n, d, *, c, dtype, seed, max_frac=0.999):
    """n points in random directions at radius fractions uniform in [0, max_frac);
    the first quarter lie exactly at max_frac of the radius."""
    g = torch.Generator().manual_seed(seed + 10_000)
    frac = torch.rand(n, generator=g, dtype=torch.float64) * max_frac
    frac[: n // 4] = max_frac
    return (unit_rows(n, d, seed=seed) * frac[:, None] / math.sqrt(c)).to(dtype)


def at_fractions(fracs, d, *, c, dtype, seed):
    """Points in random directions at the given fractions of the radius."""
    fracs = torch.as_tensor(fracs, dtype=torch.float64)
    return (unit_rows(len(fracs), d, seed=seed) * fracs[:, None] / math.sqrt(c)).to(dtype)


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.abs(a - ref) / np.abs(ref)


def row_rel_err(a, ref):
    """|a - ref| / |ref| per row (vectors), 0 where both are 0."""
    a = torch.as_tensor(a).double()
    ref = torch.as_tensor(ref).double()
    num = (a - ref).norm(dim=-1)
    den = ref.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), num).numpy()


# ---------------------------------------------------------------- mpmath references
# Inputs are converted exactly (every float32/float64 is an mpf), and c is taken as
# the dtype holds it, so the only error measured is that of the implementation.


def mp_vec(t):
    return [mp.mpf(float(a)) for a in t]


def mp_c(c, dtype):
    return mp.mpf(float(torch.tensor(c, dtype=dtype)))


def mp_dot(a, b):
    return mp.fsum(p * q for p, q in zip(a, b))


def mp_norm(a):
    return mp.sqrt(mp_dot(a, a))


def mp_mobius_add(x, y, c):
    xy, x2, y2 = mp_dot(x, y), mp_dot(x, x), mp_dot(y, y)
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return [((1 + 2 * c * xy + c * y2) * p + (1 - c * x2) * q) / den for p, q in zip(x, y)]


def mp_dist(x, y, c):
    """The textbook closed form; at 50 digits arcosh(1 + 2q) keeps ~34 digits even for q ~ 1e-16."""
    d2 = mp.fsum((p - q) ** 2 for p, q in zip(x, y))
    return mp.acosh(1 + 2 * c * d2 / ((1 - c * mp_dot(x, x)) * (1 - c * mp_dot(y, y)))) / mp.sqrt(c)


def mp_angle(a, b):
    return mp.acos(mp_dot(a, b) / (mp_norm(a) * mp_norm(b)))


def mp_xi_closed_form(x, y, c):
    """cos Xi = (<x,y>(1 + c|x|^2) - |x|^2(1 + c|y|^2)) / (|x||x-y| sqrt(1 + c^2|x|^2|y|^2 - 2c<x,y>))."""
    xy, x2, y2 = mp_dot(x, y), mp_dot(x, x), mp_dot(y, y)
    num = xy * (1 + c * x2) - x2 * (1 + c * y2)
    dxy = mp_norm([p - q for p, q in zip(x, y)])
    return mp.acos(num / (mp.sqrt(x2) * dxy * mp.sqrt(1 + c * c * x2 * y2 - 2 * c * xy)))


def mp_xi_mobius(x, y, c):
    """Xi from its definition, through the isometry T(z) = (-x) (+) z.

    T sends x to 0 and y to m = T(y); its inverse is z -> x (+) z (left cancellation,
    asserted), so the geodesic from x to y is t -> x (+) (t m/|m|), the image of the
    straight ray from 0 towards m. Its tangent at x is taken by a 1e-25 step (the
    O(step) error is far below the tolerances) and compared with the outward ray
    direction x.
    """
    m = mp_mobius_add([-p for p in x], y, c)
    assert mp_norm([p - q for p, q in zip(mp_mobius_add(x, m, c), y)]) < mp.mpf(10) ** -40
    step = mp.mpf(10) ** -25
    nm = mp_norm(m)
    p = mp_mobius_add(x, [step * q / nm for q in m], c)
    return mp_angle([(a - b) / step for a, b in zip(p, x)], x)


def mp_xi_circle(x, y, c):
    """Xi from Euclidean geometry alone: the geodesic through x and y is the arc,
    inside the ball, of the circle through x, y and the inversion x* = x/(c|x|^2) of x
    in the boundary sphere (geodesics are circles orthogonal to the boundary). Work
    in the plane spanned by x and y (y not on the line through 0 and x)."""
    nx = mp_norm(x)
    e1 = [p / nx for p in x]
    y1 = mp_dot(y, e1)
    y_perp = [q - y1 * p for p, q in zip(e1, y)]
    y2 = mp_norm(y_perp)
    X, Y, S = (nx, mp.mpf(0)), (y1, y2), (1 / (c * nx), mp.mpf(0))
    ox = (X[0] + S[0]) / 2  # X and S lie on the first axis
    oy = ((ox - Y[0]) ** 2 + Y[1] ** 2 - (ox - X[0]) ** 2) / (2 * Y[1])

    def theta(P):
        return mp.atan2(P[1] - oy, P[0] - ox)

    two_pi = 2 * mp.pi
    to_y = (theta(Y) - theta(X)) % two_pi
    to_s = (theta(S) - theta(X)) % two_pi
    sign = 1 if to_y < to_s else -1  # counter-clockwise reaches y before leaving the ball
    tangent = (-sign * (X[1] - oy), sign * (X[0] - ox))
    return mp.acos(tangent[0] / mp.sqrt(tangent[0] ** 2 + tangent[1] ** 2))


def mp_rows(fn, *tensors, c):
    """fn applied to matching rows of the tensors at 50 digits, as float64 numpy."""
    with mp.workdps(50):
        rows = zip(*[t.detach().double().tolist() for t in tensors])
        return np.array([float(fn(*[[mp.mpf(a) for a in r] for r in row], c)) for row in rows])


def mp_vec_rows(fn, *tensors, c):
    with mp.workdps(50):
        rows = zip(*[t.detach().double().tolist() for t in tensors])
        return np.array([[float(a) for a in fn(*[[mp.mpf(a) for a in r] for r in row], c)] for row in rows])


# ---------------------------------------------------------------- distance


def row_dist(x, y, *, c):
    """``pairwise_dist`` of matching rows, ``(N, D), (N, D) -> (N,)``: each pair as a 1 x 1 batch."""
    return pm.pairwise_dist(x[:, None], y[:, None], c=c)[:, 0, 0]


def numpy_dist(x, y, c):
    """All-pairs geodesic distance in float64 numpy with explicit differences, written out here
    as an independent reference: (2/sqrt(c)) asinh(sqrt(c)|x-y| / sqrt((1-c|x|^2)(1-c|y|^2)))."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    diff = np.sqrt(((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1))
    ax, ay = 1 - c * (x ** 2).sum(-1), 1 - c * (y ** 2).sum(-1)
    return 2 / np.sqrt(c) * np.arcsinh(np.sqrt(c) * diff / np.sqrt(ax[..., :, None] * ay[..., None, :]))


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("seed", SEEDS)
def test_agrees_with_geoopt(c, seed):
    dt = torch.float64
    # geoopt stores a python-float c as float32 (0.1 -> 0.10000000149), which alone
    # moves its float64 distances by up to ~5e-3 near the boundary; give it c in float64.
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=dt))
    x = ball_points(64, 8, c=c, dtype=dt, seed=seed)
    y = ball_points(64, 8, c=c, dtype=dt, seed=seed + 100)
    # tangent norms up to sqrt(c)|u| = 7, where tanh is still below 1 - 1e-6
    z = torch.logspace(-6, math.log10(7.0), 64, dtype=dt)
    u = unit_rows(64, 8, seed=seed + 200) * (z / math.sqrt(c))[:, None]

    assert row_rel_err(pm.expmap0(u, c=c), ball.expmap0(u, project=False)).max() < 1e-5
    assert row_rel_err(pm.logmap0(x, c=c), ball.logmap0(x)).max() < 1e-5

    # Away from the boundary geoopt's distance is accurate and must agree.
    xi = ball_points(64, 8, c=c, dtype=dt, seed=seed, max_frac=0.9)
    yi = ball_points(64, 8, c=c, dtype=dt, seed=seed + 1, max_frac=0.9)
    assert rel_err(row_dist(xi, yi, c=c), ball.dist(xi, yi)).max() < 1e-5

    # Near the boundary geoopt's float64 distance drifts (~1e-3); where it disagrees
    # with ours, the 50-digit closed form decides, and it must be geoopt that is off.
    ours, theirs = row_dist(x, y, c=c).numpy(), ball.dist(x, y).numpy()
    ref = mp_rows(mp_dist, x, y, c=mp_c(c, dt))
    assert rel_err(ours, ref).max() < RTOL[dt]
    disagree = rel_err(ours, theirs) > 1e-5
    assert (rel_err(theirs, ref)[disagree] > 1e-5).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_distance_matches_mpmath(dtype, c):
    for seed in SEEDS:
        x = ball_points(48, 8, c=c, dtype=dtype, seed=seed)
        y = ball_points(48, 8, c=c, dtype=dtype, seed=seed + 100)
        ref = mp_rows(mp_dist, x, y, c=mp_c(c, dtype))
        assert rel_err(row_dist(x, y, c=c), ref).max() < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_dist_from_origin(dtype, c):
    # out to 0.999 of the radius, plus points beyond the usable ball's margin
    fracs = [0.0, 1e-15, 1e-8, 0.3, 0.9, 0.999, 1 - 1e-7, 1.0]
    x = at_fractions(fracs, 8, c=c, dtype=dtype, seed=5)
    d0 = pm.dist0(x, c=c)
    torch.testing.assert_close(row_dist(torch.zeros_like(x), x, c=c), d0, rtol=RTOL[dtype], atol=0)
    def mp_dist0(a, cc):
        return 2 / mp.sqrt(cc) * mp.atanh(mp.sqrt(cc) * mp_norm(a))

    assert d0[0] == 0
    assert rel_err(d0[1:6], mp_rows(mp_dist0, x[1:6], c=mp_c(c, dtype))).max() < RTOL[dtype]
    # beyond the margin: read as on it, the largest distance the ball allows
    assert (d0 <= MAX_DIST0[dtype] / math.sqrt(c) * (1 + RTOL[dtype])).all()
    assert (d0[-1] >= MAX_DIST0[dtype] / math.sqrt(c) * (1 - 1e-2)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("seed", SEEDS)
def test_metric_axioms(dtype, c, seed):
    x = ball_points(64, 8, c=c, dtype=dtype, seed=seed)
    y = ball_points(64, 8, c=c, dtype=dtype, seed=seed + 100)
    z = ball_points(64, 8, c=c, dtype=dtype, seed=seed + 200)
    dxy, dyx = row_dist(x, y, c=c), row_dist(y, x, c=c)
    torch.testing.assert_close(dxy, dyx, rtol=RTOL[dtype], atol=0)
    assert (dxy > 0).all()
    dxz, dyz = row_dist(x, z, c=c), row_dist(y, z, c=c)
    assert (dxz <= (dxy + dyz) * (1 + RTOL[dtype])).all()
    # equality case: the geodesic from x to -x runs through the origin
    d_through_0 = row_dist(x, torch.zeros_like(x), c=c) + row_dist(torch.zeros_like(x), -x, c=c)
    torch.testing.assert_close(row_dist(x, -x, c=c), d_through_0, rtol=RTOL[dtype], atol=1e-30)
    torch.testing.assert_close(d_through_0, 2 * pm.dist0(x, c=c), rtol=RTOL[dtype], atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_pairwise_dist_matches_a_numpy_reference(dtype, c):
    x = ball_points(40, 8, c=c, dtype=dtype, seed=6)
    y = ball_points(30, 8, c=c, dtype=dtype, seed=7)
    pair = pm.pairwise_dist(x, y, c=c)
    assert pair.shape == (40, 30)
    rtol = RTOL[dtype]  # against a float64 reference at the same (rounded) inputs, as against mpmath
    torch.testing.assert_close(pair.double(), torch.from_numpy(numpy_dist(x, y, c)), rtol=rtol, atol=0)
    # leading batch dimensions
    batched = pm.pairwise_dist(torch.stack([x, -x]), torch.stack([y, y]), c=c)
    torch.testing.assert_close(batched[1].double(), torch.from_numpy(numpy_dist(-x, y, c)), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_pairwise_dist_identical_points_within_documented_precision(dtype, c):
    # the docstring: identical pairs come out at up to ~2e-3 (float32) or ~2e-7
    # (float64) / (sqrt(c)(1 - c|x|^2)), for D up to ~512
    x = ball_points(128, 512, c=c, dtype=dtype, seed=8)
    diag = pm.pairwise_dist(x, x, c=c).diagonal().double()
    one_minus = 1 - c * x.double().square().sum(-1)
    bound = {torch.float32: 2e-3, torch.float64: 2e-7}[dtype]
    assert (diag * math.sqrt(c) * one_minus <= bound).all()


# ---------------------------------------------------------------- exp / log maps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_logmap0_match_mpmath(dtype, c):
    # sqrt(c)|u| from 1e-15 up to where tanh(.) would reach the usable ball's margin
    z_max = {torch.float32: 5.0, torch.float64: 15.0}[dtype]
    z = torch.logspace(-15, math.log10(z_max), 40, dtype=torch.float64)
    u = (unit_rows(40, 6, seed=9) * (z / math.sqrt(c))[:, None]).to(dtype)
    cc = mp_c(c, dtype)

    def mp_exp(a, c):
        n = mp.sqrt(c) * mp_norm(a)
        return [mp.tanh(n) / n * p for p in a]

    def mp_log(a, c):
        n = mp.sqrt(c) * mp_norm(a)
        return [mp.atanh(n) / n * p for p in a]

    assert row_rel_err(pm.expmap0(u, c=c), mp_vec_rows(mp_exp, u, c=cc)).max() < RTOL[dtype]
    x = at_fractions(np.geomspace(1e-15, 0.999, 40), 6, c=c, dtype=dtype, seed=10)
    assert row_rel_err(pm.logmap0(x, c=c), mp_vec_rows(mp_log, x, c=cc)).max() < RTOL[dtype]
    zero = torch.zeros(2, 6, dtype=dtype)
    assert torch.equal(pm.expmap0(zero, c=c), zero) and torch.equal(pm.logmap0(zero, c=c), zero)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("seed", SEEDS)
def test_expmap0_logmap0_are_inverse(dtype, c, seed):
    # up to sqrt(c)|v| = 4; beyond, tanh's rounding near 1 is amplified ~e^(2z)/z by artanh
    z = torch.cat([torch.zeros(1), torch.logspace(-15, 0, 20), torch.linspace(1, 4, 20)]).double()
    v = (unit_rows(41, 8, seed=seed) * (z / math.sqrt(c))[:, None]).to(dtype)
    assert row_rel_err(pm.logmap0(pm.expmap0(v, c=c), c=c), v).max() < RTOL[dtype]
    x = ball_points(64, 8, c=c, dtype=dtype, seed=seed)
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    assert row_rel_err(pm.expmap0(pm.logmap0(x, c=c), c=c), x).max() < rtol


@pytest.mark.parametrize("dtype", DTYPES)
def test_expmap0_jacobian_at_origin_is_identity(dtype):
    jac = torch.autograd.functional.jacobian(lambda u: pm.expmap0(u, c=2.0), torch.zeros(5, dtype=dtype))
    assert torch.equal(jac, torch.eye(5, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1e-4, 0.1, 1.0, 5.0, 100.0])
def test_expmap0_of_huge_vectors_stays_strictly_inside(dtype, c):
    # tanh(sqrt(c)|u|) rounds to 1 from ~9 (float32) or ~19 (float64) on
    norms = torch.tensor([30.0, 1e2, 1e4, 1e6], dtype=torch.float64) / math.sqrt(c)
    x = pm.expmap0((unit_rows(4, 512, seed=11) * norms[:, None]).to(dtype), c=c)
    s = torch.tensor(c, dtype=dtype).sqrt() * x.norm(dim=-1)  # measured again, in the dtype
    assert (s < 1).all()
    assert (math.sqrt(c) * x.double().norm(dim=-1) < 1).all()
    # and it is on the margin, not far inside it
    assert (s >= 1 - 2 * pm.BALL_EPS[dtype]).all()


# ---------------------------------------------------------------- finite everywhere


def finite_grads(out, inputs):
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True, retain_graph=True)
    return all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c_value", [1e-4, 1.0, 100.0])
def test_finite_values_and_gradients_at_extremes(dtype, c_value):
    c = torch.tensor(c_value, dtype=dtype, requires_grad=True)
    tangent_norms = torch.tensor([0.0, 1e-15, 1e-8, 1.0, 30.0, 1e6], dtype=torch.float64) / math.sqrt(c_value)
    u = (unit_rows(6, 4, seed=14) * tangent_norms[:, None]).to(dtype).requires_grad_()
    x_exp = pm.expmap0(u, c=c)
    for out in [x_exp, pm.logmap0(x_exp, c=c), pm.dist0(x_exp, c=c)]:
        assert torch.isfinite(out).all()
        assert finite_grads(out, [u, c])

    fracs = [0.0, 1e-15, 1e-8, 0.5, 0.999, 1 - 1e-7]
    x = at_fractions(fracs, 4, c=c_value, dtype=dtype, seed=15).requires_grad_()
    y = at_fractions(fracs[::-1], 4, c=c_value, dtype=dtype, seed=16).requires_grad_()
    twin = x.detach().clone().requires_grad_()  # identical points
    outputs = [
        row_dist(x, twin, c=c),
        row_dist(x, y, c=c),
        pm.pairwise_dist(x, y, c=c),
        pm.pairwise_dist(x, twin, c=c),
        pm.dist0(x, c=c),
        pm.logmap0(x, c=c),
        pm.oxy_angle(x, y, c=c),
        pm.oxy_angle(x, twin, c=c),
        pm.half_aperture(x, c=c),
        pm.cone_violation(x, y, c=c),
    ]
    for out in outputs:
        assert torch.isfinite(out).all()
        assert finite_grads(out, [x, y, twin, c])
    # points at 1 - 1e-7 of the radius: inside float64's margin, so still exact there
    if dtype == torch.float64:
        ref = mp_rows(mp_dist, x[-2:], y[-2:], c=mp_c(c_value, dtype))
        assert rel_err(outputs[1][-2:].detach(), ref).max() < RTOL[dtype]


def test_gradients_match_finite_differences():
    # float64 gradcheck w.r.t. points and c, on both sides of the series switch
    # (sqrt(c)|x| < SERIES_MAX) and out to 0.99 of the radius
    dt = torch.float64
    c = torch.tensor(0.7, dtype=dt, requires_grad=True)
    x = at_fractions([1e-3, 5e-3, 0.3, 0.9, 0.99], 3, c=0.7, dtype=dt, seed=30).requires_grad_()
    y = at_fractions([0.5, 0.2, 0.95, 2e-3, 0.6], 3, c=0.7, dtype=dt, seed=31).requires_grad_()
    u_norms = torch.tensor([1e-3, 5e-3, 0.5, 2.0, 5.0], dtype=dt)
    u = (unit_rows(5, 3, seed=32) * u_norms[:, None]).requires_grad_()
    checks = {
        "expmap0": (lambda u, c: pm.expmap0(u, c=c), (u, c)),
        "logmap0": (lambda x, c: pm.logmap0(x, c=c), (x, c)),
        "dist0": (lambda x, c: pm.dist0(x, c=c), (x, c)),
        "pairwise_dist": (lambda x, y, c: pm.pairwise_dist(x, y, c=c), (x, y, c)),
        "oxy_angle": (lambda x, y, c: pm.oxy_angle(x, y, c=c), (x, y, c)),
        "half_aperture": (lambda x, c: pm.half_aperture(x[2:], c=c), (x, c)),
    }
    for name, (fn, inputs) in checks.items():
        assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-5), name


def test_dtype_and_curvature_handling():
    x = at_fractions([0.2, 0.7], 4, c=2.0, dtype=torch.float64, seed=33)
    c32 = torch.tensor(2.0, dtype=torch.float32, requires_grad=True)
    d = pm.pairwise_dist(x[:1], x[1:], c=c32)
    assert d.dtype == torch.float64  # a float32 c does not downcast float64 points
    d.sum().backward()
    assert c32.grad is not None and c32.grad != 0
    torch.testing.assert_close(d, pm.pairwise_dist(x[:1], x[1:], c=2.0), rtol=1e-15, atol=0)
    with pytest.raises(TypeError, match="float32 or float64"):
        pm.expmap0(x.half(), c=1.0)
    with pytest.raises(ValueError, match="c must be > 0"):
        pm.pairwise_dist(x, x, c=0.0)
    with pytest.raises(ValueError, match="0-dim"):
        pm.pairwise_dist(x, x, c=torch.ones(1))


NORMS = st.one_of(st.just(0.0), st.floats(-15, 6).map(lambda e: 10.0**e))


@settings(max_examples=50, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    log10_c=st.floats(-4, 2),
    u_norm=NORMS,
    v_norm=NORMS,
    relation=st.sampled_from(["independent", "identical", "antipodal", "same direction"]),
    dim=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_extreme_inputs_give_finite_values_and_gradients(dtype, log10_c, u_norm, v_norm, relation, dim, seed):
    c_value = 10.0**log10_c
    c = torch.tensor(c_value, dtype=dtype, requires_grad=True)
    dirs = unit_rows(2, dim, seed=seed)
    u = (dirs[0] * u_norm).to(dtype).requires_grad_()
    v_value = {
        "independent": dirs[1] * v_norm,
        "identical": dirs[0] * u_norm,
        "antipodal": -dirs[0] * u_norm,
        "same direction": dirs[0] * v_norm,
    }[relation]
    v = v_value.to(dtype).requires_grad_()
    x, y = pm.expmap0(u, c=c), pm.expmap0(v, c=c)
    outputs = {
        "expmap0": x,
        "pairwise_dist": pm.pairwise_dist(x[None], y[None], c=c),
        "dist0": pm.dist0(x, c=c),
        "logmap0": pm.logmap0(x, c=c),
        "oxy_angle": pm.oxy_angle(x, y, c=c),
        "half_aperture": pm.half_aperture(x, c=c),
        "cone_violation": pm.cone_violation(x, y, c=c),
    }
    for name, out in outputs.items():
        assert torch.isfinite(out).all(), name
        assert finite_grads(out, [u, v, c]), name
    out = {name: value.detach().double() for name, value in outputs.items()}
    sqrt_c = math.sqrt(float(torch.tensor(c_value, dtype=dtype)))
    tol = 1 + RTOL[dtype]
    assert sqrt_c * out["expmap0"].norm() < 1
    assert 0 <= out["pairwise_dist"] <= 2 * MAX_DIST0[dtype] / sqrt_c * tol
    assert out["dist0"] <= MAX_DIST0[dtype] / sqrt_c * tol
    assert out["logmap0"].norm() <= MAX_DIST0[dtype] / 2 / sqrt_c * tol
    pi_in_dtype = float(torch.tensor(math.pi, dtype=dtype))  # float32's pi is above math.pi
    assert 0 <= out["oxy_angle"] <= pi_in_dtype
    assert 0 < out["half_aperture"] < math.pi / 2
    assert out["cone_violation"] >= 0


# ---------------------------------------------------------------- legacy distance


def numpy_legacy_dist(x, y, c):
    """The old formula restated: c outside the fraction, clamps of the old code."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x2 = np.minimum((x**2).sum(1), 1 - 1e-10)
    y2 = np.minimum((y**2).sum(1), 1 - 1e-10)
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    den = np.maximum(np.outer(1 - x2, 1 - y2), 1e-10)
    return np.arccosh(np.maximum(1 + 2 * sq / den, 1 + 1e-10)) / np.sqrt(c)


@pytest.mark.parametrize("c", CURVATURES)
def test_legacy_pairwise_dist_matches_old_formula(c, monkeypatch):
    monkeypatch.setattr(legacy, "_CHUNK_ELEMENTS", 50)  # several chunks of rows
    x = ball_points(20, 6, c=1.0, dtype=torch.float64, seed=17)
    y = ball_points(13, 6, c=1.0, dtype=torch.float64, seed=18)
    x[0] = y[0]  # arcosh-argument clamp
    x[1] *= 1.5  # |x|^2 clamp: outside the unit ball
    y[1] = y[1] / y[1].norm() * (1 - 1e-12)  # with x[1]: denominator clamp
    got = legacy.pairwise_dist(x, y, c=c).numpy()
    np.testing.assert_allclose(got, numpy_legacy_dist(x, y, c), rtol=1e-12, atol=0)
    assert got[0, 0] == pytest.approx(math.acosh(1 + 1e-10) / math.sqrt(c), rel=1e-12)


def test_legacy_pairwise_dist_has_c_outside_the_fraction():
    # inside the ball of curvature -4 (radius 0.5), where both formulas are defined
    x = ball_points(20, 6, c=4.0, dtype=torch.float64, seed=19, max_frac=0.9)
    y = ball_points(15, 6, c=4.0, dtype=torch.float64, seed=20, max_frac=0.9)
    legacy_4 = legacy.pairwise_dist(x, y, c=4.0)
    torch.testing.assert_close(legacy_4, pm.pairwise_dist(x, y, c=1.0) / 2, rtol=1e-9, atol=0)
    assert (rel_err(legacy_4, pm.pairwise_dist(x, y, c=4.0)) > 0.05).all()
    legacy_1 = legacy.pairwise_dist(x, y, c=1.0)
    torch.testing.assert_close(legacy_1, pm.pairwise_dist(x, y, c=1.0), rtol=1e-9, atol=0)


# ---------------------------------------------------------------- entailment cones


def cone_min_s(K):
    """sqrt(c) * the default minimum radius: where K(1 - s^2)/s = 1 - CONE_ARG_MARGIN."""
    t = 1 - pm.CONE_ARG_MARGIN
    return (math.sqrt(t * t + 4 * K * K) - t) / (2 * K)


@pytest.mark.parametrize("K", [1e-3, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("c", CURVATURES)
def test_half_aperture_below_min_radius(K, c):
    dt = torch.float64
    with mp.workdps(50):
        # K(1 - c r^2)/(sqrt(c) r) = 1, by bisection in s = sqrt(c) r in (0, 1)
        s1 = float(mp.findroot(lambda s: K * (1 - s * s) / s - 1, (mp.mpf(10) ** -9, 1), solver="bisect"))
    s_min = cone_min_s(K)
    assert s1 < s_min < s1 * 1.01
    psi_max = math.asin(1 - pm.CONE_ARG_MARGIN)
    # clamped to the minimum radius, from the origin up to it
    x = at_fractions(np.array([0.0, 1e-15, 0.5 * s1, s1, s_min]), 4, c=c, dtype=dt, seed=21)
    psi = pm.half_aperture(x, c=c, K=K).numpy()
    assert rel_err(psi, psi_max).max() < RTOL[dt]
    assert math.pi / 2 - 0.05 < psi_max < math.pi / 2  # the margin costs little
    beyond = at_fractions([s_min * 1.001], 4, c=c, dtype=dt, seed=21)
    assert pm.half_aperture(beyond, c=c, K=K) < psi_max
    # with the exact root as min_radius, the argument reaches 1 and is clamped just below
    psi_root = pm.half_aperture(x[:-1], c=c, K=K, min_radius=s1 / math.sqrt(c))
    assert (psi_root < math.pi / 2).all() and (psi_root > math.pi / 2 - 1e-6).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("K", [0.1, 1.0])
def test_half_aperture_matches_mpmath(dtype, c, K):
    x = at_fractions(np.geomspace(cone_min_s(K) * 1.001, 0.999, 30), 6, c=c, dtype=dtype, seed=22)

    def mp_psi(a, cc):
        s = mp.sqrt(cc) * mp_norm(a)
        return mp.asin(K * (1 - s * s) / s)

    psi = pm.half_aperture(x, c=c, K=K)
    # near the boundary psi ~ 1 - c|x|^2, which the stored float32 x fixes only to ~1e-4
    rtol = {torch.float32: 3e-4, torch.float64: 1e-10}[dtype]
    assert rel_err(psi, mp_rows(mp_psi, x, c=mp_c(c, dtype))).max() < rtol
    assert (psi.diff() < 0).all()  # narrower cones farther out
    # the aperture depends on sqrt(c) x only
    scaled = pm.half_aperture((x.double() * math.sqrt(c)).to(dtype), c=1.0, K=K)
    torch.testing.assert_close(psi, scaled, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("seed", SEEDS)
def test_oxy_angle_closed_form_is_the_angle(c, seed):
    # The closed form, the Mobius-isometry route and the circle-through-the-inversion
    # route agree at 50 digits, out to 0.999 of the radius.
    x = at_fractions([0.1, 0.5, 0.9, 0.999, 0.999], 5, c=c, dtype=torch.float64, seed=seed)
    y = ball_points(5, 5, c=c, dtype=torch.float64, seed=seed + 100)
    with mp.workdps(50):
        for a, b in zip(x.tolist(), y.tolist()):
            a, b, cc = mp_vec(a), mp_vec(b), mp.mpf(c)
            closed = mp_xi_closed_form(a, b, cc)
            assert abs(closed - mp_xi_mobius(a, b, cc)) < mp.mpf(10) ** -20
            assert abs(closed - mp_xi_circle(a, b, cc)) < mp.mpf(10) ** -40


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_oxy_angle_matches_mpmath(dtype, c):
    # x from near the cones' minimum radius to 0.999 of the radius; y anywhere,
    # including near the boundary and near x
    fracs = np.concatenate([np.linspace(0.1, 0.999, 24), [0.999] * 8])
    x = at_fractions(fracs, 6, c=c, dtype=dtype, seed=23)
    y = ball_points(32, 6, c=c, dtype=dtype, seed=24)
    y[-4:] = (x[-4:].double() + 1e-3 / math.sqrt(c) * unit_rows(4, 6, seed=25)).to(dtype)
    ref = mp_rows(mp_xi_circle, x, y, c=mp_c(c, dtype))
    xi = pm.oxy_angle(x, y, c=c).numpy()
    # float32: y near x at 0.999 of the radius turns with 1 - c|x|^2, known to ~1e-4
    atol = {torch.float32: 1e-4, torch.float64: 1e-12}[dtype]
    assert np.abs(xi - ref).max() < atol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_cone_of_points_on_the_ray(dtype, c):
    # along an axis, so that y lies exactly on the ray through x in the dtype
    fracs = torch.tensor([0.05, 0.3, 0.6, 0.99, 0.999], dtype=torch.float64)
    x, outward, inward = (torch.zeros(5, 6, dtype=dtype) for _ in range(3))
    x[:, 2] = fracs / math.sqrt(c)
    outward[:, 2] = (fracs + (1 - fracs) / 2) / math.sqrt(c)
    inward[:, 2] = fracs / 2 / math.sqrt(c)
    tiny = 8 * torch.finfo(dtype).eps
    assert (pm.oxy_angle(x, outward, c=c) < tiny).all()
    assert (pm.oxy_angle(x, inward, c=c) > math.pi - tiny).all()
    # inside the cone even near the boundary, where the aperture is only ~2e-4 rad
    psi = pm.half_aperture(x, c=c)
    assert psi[-1] < 3e-4
    assert torch.equal(pm.cone_violation(x, outward, c=c), torch.zeros(5, dtype=dtype))
    torch.testing.assert_close(pm.cone_violation(x, inward, c=c), math.pi - psi, rtol=0, atol=tiny)
    # in a random direction, y = 1.0005 x is off the ray only by its rounding
    xr = at_fractions(fracs, 6, c=c, dtype=dtype, seed=26)
    yr = xr * 1.0005
    off_ray = 8 * torch.finfo(dtype).eps * xr.norm(dim=-1) / (yr - xr).norm(dim=-1)
    assert (pm.oxy_angle(xr, yr, c=c) < off_ray).all()
    # in general, the violation is the part of the angle beyond the aperture
    y = ball_points(5, 6, c=c, dtype=dtype, seed=27)
    expected = torch.relu(pm.oxy_angle(xr, y, c=c) - pm.half_aperture(xr, c=c, K=0.3))
    assert torch.equal(pm.cone_violation(xr, y, c=c, K=0.3), expected)


def test_oxy_angle_undefined_cases_are_right_angles():
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.0, 0.0]])
    y = torch.tensor([[0.5, 0.1], [0.3, 0.4], [0.0, 0.0]])  # x at origin, y == x, both
    torch.testing.assert_close(pm.oxy_angle(x, y, c=1.0), torch.full((3,), math.pi / 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cone_gradients_finite_near_min_radius_and_boundary(dtype):
    c = torch.tensor(2.0, dtype=dtype, requires_grad=True)
    s_min = cone_min_s(0.1)
    fracs = [0.0, 0.5 * s_min, s_min, s_min * (1 + 1e-6), 0.5, 0.999, 1 - 1e-7]
    x = at_fractions(fracs, 6, c=2.0, dtype=dtype, seed=28).requires_grad_()
    others = [ball_points(7, 6, c=2.0, dtype=dtype, seed=29), x.detach().clone(), torch.zeros_like(x), x.detach() * 1.0001]
    for y in others:
        y = y.requires_grad_()
        for out in [pm.half_aperture(x, c=c), pm.oxy_angle(x, y, c=c), pm.cone_violation(x, y, c=c)]:
            assert torch.isfinite(out).all()
            assert finite_grads(out, [x, y, c])
