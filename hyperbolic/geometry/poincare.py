"""Poincare-ball geometry as pure functions over torch tensors.

Convention (the only one in this module): ``c > 0``; the ball ``{x : c|x|^2 < 1}``
has constant curvature ``-c`` and radius ``1/sqrt(c)``. ``c`` is keyword-only
everywhere. It may be a python float (checked to be > 0) or a 0-dim tensor (not
checked, which would cost a device sync); a tensor may be a learned parameter, and
gradients flow to it. ``c`` is cast to the dtype of the points.

Points and tangent vectors at the origin are ``(..., D)`` tensors of dtype float32
or float64. Everything is computed in the input's dtype (float64 is never
downcast); half precision is rejected, cast it to float32 first.

``s = sqrt(c)|x|`` below is a point's norm in units of the radius, in ``[0, 1)``.
The usable ball is ``s <= 1 - BALL_EPS[dtype]``: ``expmap0`` and ``project`` land
inside it, and every function that takes artanh(s) or divides by 1 - c|x|^2 treats
a point beyond it (reachable only through rounding, or from a caller) as lying on
it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hyperbolic.geometry import constants
from hyperbolic.geometry.constants import BOUNDARY_ULPS, DEFAULT_K

# Usable ball: s = sqrt(c)|x| <= 1 - BALL_EPS. Without a margin, artanh(s) and
# 1/(1 - c|x|^2) are infinite on the boundary, which float32 reaches at tangent
# norms of only ~9/sqrt(c) (tanh rounds to 1). The margin is about 8 machine
# epsilons so that it survives the few-ulp error with which |x| is recomputed from
# stored coordinates (D squares summed, sqrt, times sqrt(c)): a projected point is
# still strictly inside when measured again. It caps the distance from the origin
# at ln(2/BALL_EPS)/sqrt(c): about 14.5/sqrt(c) in float32, 34.5/sqrt(c) in float64.
BALL_EPS = {torch.float32: 1e-6, torch.float64: 2e-15}

# tanh(z)/z and artanh(z)/z are taken from their Taylor series (through z^6; the
# first omitted term is below the dtype's epsilon) when z < SERIES_MAX. The
# quotient is 0/0 at z = 0, and its autograd derivative is the difference of two
# terms of size 1/z that cancel to O(z), losing every digit as z -> 0.
SERIES_MAX = {torch.float32: 0.1, torch.float64: 0.01}

# An arcsin argument is clamped to at most 1 - ASIN_EPS: rounding can push it just
# past 1 (NaN), and asin' = 1/sqrt(1 - t^2) is infinite at 1. One machine epsilon
# keeps asin' below ~2e3 (float32) / ~5e7 (float64). (oxy_angle needs no such
# clamp: it takes its angle from atan2, which is defined everywhere.)
ASIN_EPS = {dt: torch.finfo(dt).eps for dt in (torch.float32, torch.float64)}

# A vector shorter than MIN_NORM has no usable direction (oxy_angle with x at
# the origin or y == x): its unit vector is replaced by the vector itself (~0),
# which keeps the 1/|v| in the gradient below 1e15, finite even in float32.
MIN_NORM = 1e-15

# half_aperture's default minimum radius is where its arcsin argument equals
# 1 - CONE_ARG_MARGIN rather than 1: a safety margin, so that rounding never pushes
# the argument past 1 and asin' stays ~22 there instead of infinite. The price is
# a largest aperture of asin(1 - 1e-3) = pi/2 - 0.045 rad instead of pi/2.
CONE_ARG_MARGIN = 1e-3


# The numerical boundary: 1 - c|x|^2 at or below BOUNDARY_RESOLUTION[dtype] (64 machine epsilons:
# 7.6e-6 in float32, 1.4e-14 in float64). |x|^2 recomputed from stored coordinates carries a
# few ulps of error per term summed, so there 1 - c|x|^2 (and every distance, which divides by it)
# keeps at most a digit or two: points that close to the boundary are rounding, not position.
BOUNDARY_RESOLUTION = {dt: BOUNDARY_ULPS * torch.finfo(dt).eps for dt in (torch.float32, torch.float64)}


def at_numerical_boundary(x: Tensor, *, c: float) -> Tensor:
    """``(N,)`` bool: points of ``(N, D)`` ``x`` whose ``1 - c|x|^2``, formed in float64 from the stored
    coordinates, is at most ``BOUNDARY_RESOLUTION`` of ``x``'s dtype."""
    _check_dtype(x)
    s2 = x.double().square().sum(-1) * float(c)
    return (1 - s2) <= BOUNDARY_RESOLUTION[x.dtype]


def clip_radius_resolvable(clip_r: float, dtype: torch.dtype = torch.float32) -> bool:
    """Whether points on a clip sphere of relative radius ``clip_r`` (1: no clip, so the usable
    ball's edge ``1 - BALL_EPS``) stay off the numerical boundary in ``dtype``."""
    return constants.clip_radius_resolvable(clip_r, eps=torch.finfo(dtype).eps, ball_eps=BALL_EPS[dtype])


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in BALL_EPS:
        raise TypeError(
            f"poincare functions take float32 or float64 tensors (got {x.dtype}); "
            "cast with .float() first"
        )


def _curvature(c: float | Tensor, x: Tensor) -> Tensor:
    """``c`` as a 0-dim tensor with ``x``'s dtype and device, differentiable if given so."""
    _check_dtype(x)
    if isinstance(c, Tensor):
        if c.dim() != 0:
            raise ValueError(f"c must be a python float or a 0-dim tensor (got shape {tuple(c.shape)})")
        return c.to(dtype=x.dtype, device=x.device)
    c = float(c)
    if not c > 0:
        raise ValueError(f"c must be > 0 (got {c})")
    return torch.tensor(c, dtype=x.dtype, device=x.device)


def _norm(x: Tensor, keepdim: bool = True) -> Tensor:
    # vector_norm's backward is 0 (a subgradient) at x = 0, not NaN.
    return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdim)


def _safe_sqrt(t: Tensor) -> Tensor:
    """sqrt(t) for t >= 0, with gradient 0 instead of inf where t == 0."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, 1.0).sqrt(), 0.0)


def _unit(v: Tensor) -> Tensor:
    """v/|v| along the last dim; v itself (~0) where |v| <= MIN_NORM (no direction)."""
    n = _norm(v)
    return v / torch.where(n > MIN_NORM, n, 1.0)


def _one_minus_s2(s: Tensor) -> Tensor:
    """1 - s^2 = 1 - c|x|^2 for s = sqrt(c)|x|, with s clamped to the usable ball.

    Factored as (1 - s)(1 + s) so it never forms s^2 near 1; >= BALL_EPS(2 - BALL_EPS).
    """
    s = s.clamp_max(1 - BALL_EPS[s.dtype])
    return (1 - s) * (1 + s)


def _tanhc(z: Tensor) -> Tensor:
    """tanh(z)/z for z >= 0; 1 at z = 0."""
    small = SERIES_MAX[z.dtype]
    z2 = z * z
    series = 1 + z2 * (-1 / 3 + z2 * (2 / 15 - z2 * (17 / 315)))
    z_big = z.clamp_min(small)  # keeps the unused branch finite at z = 0
    return torch.where(z < small, series, torch.tanh(z_big) / z_big)


def _artanhc(z: Tensor) -> Tensor:
    """artanh(min(z, 1 - BALL_EPS))/z for z >= 0; 1 at z = 0.

    The artanh argument is clamped below 1 because artanh(1) = inf: a point on or
    over the boundary (by rounding) is read as lying on the edge of the usable ball.
    """
    small = SERIES_MAX[z.dtype]
    z2 = z * z
    series = 1 + z2 * (1 / 3 + z2 * (1 / 5 + z2 * (1 / 7)))
    z_big = z.clamp_min(small)
    inside = z_big.clamp_max(1 - BALL_EPS[z.dtype])
    return torch.where(z < small, series, torch.atanh(inside) / z_big)


def project(x: Tensor, *, c: float | Tensor) -> Tensor:
    """Pull points back into the usable ball ``sqrt(c)|x| <= 1 - BALL_EPS``.

    ``x * min(1, (1 - BALL_EPS)/(sqrt(c)|x|))``; ``(..., D) -> (..., D)``. Points
    already inside are returned unchanged (factor exactly 1).
    """
    c = _curvature(c, x)
    max_s = 1 - BALL_EPS[x.dtype]
    s = c.sqrt() * _norm(x)
    return x * (max_s / s.clamp_min(max_s))


def expmap0(u: Tensor, *, c: float | Tensor) -> Tensor:
    """Exponential map at the origin: tangent vector -> point of the ball.

    ``expmap0(u) = tanh(sqrt(c)|u|) u / (sqrt(c)|u|)``; ``(..., D) -> (..., D)``.
    Range: ``|expmap0(u)| <= (1 - BALL_EPS)/sqrt(c)``. tanh rounds to exactly 1 for
    ``sqrt(c)|u|`` above ~9 (float32) or ~19 (float64), which would put the point
    on the boundary, where logmap0 and the distance are infinite; the result is therefore
    projected into the usable ball (see ``BALL_EPS``). Value and gradient are
    finite for every finite ``u``; at ``u = 0`` the value is 0 and the Jacobian is
    the identity.
    """
    c = _curvature(c, u)
    y = u * _tanhc(c.sqrt() * _norm(u))
    return project(y, c=c)


def logmap0(y: Tensor, *, c: float | Tensor) -> Tensor:
    """Logarithmic map at the origin, the inverse of ``expmap0``.

    ``logmap0(y) = artanh(sqrt(c)|y|) y / (sqrt(c)|y|)``; ``(..., D) -> (..., D)``.
    The artanh argument is clamped to ``1 - BALL_EPS`` (artanh(1) = inf), so the
    range is ``|logmap0(y)| <= artanh(1 - BALL_EPS)/sqrt(c)``.
    """
    c = _curvature(c, y)
    return y * _artanhc(c.sqrt() * _norm(y))


def pairwise_dist(x: Tensor, y: Tensor, *, c: float | Tensor) -> Tensor:
    """All-pairs geodesic distance: ``(..., N, D), (..., M, D) -> (..., N, M)``.

    ``d_c(x, y) = (1/sqrt(c)) arcosh(1 + 2c|x-y|^2 / ((1 - c|x|^2)(1 - c|y|^2)))``,
    evaluated as the equal
    ``(2/sqrt(c)) asinh(sqrt(c)|x-y| / sqrt((1 - c|x|^2)(1 - c|y|^2)))``, which has none of
    arcosh(1 + 2q)'s cancellation (q below the dtype's epsilon rounds to 0 there); for nearby
    pairs the accuracy is then that of ``|x-y|`` (Precision, below).
    ``1 - c|x|^2`` is formed as ``(1 - s)(1 + s)`` with ``s = sqrt(c)|x|`` clamped to
    ``1 - BALL_EPS`` (so it is >= ~2 BALL_EPS, never 0). Range about
    ``[0, 2 ln(2/BALL_EPS)/sqrt(c)]``. No ``(N, M, D)`` tensor is built:
    ``|x-y|^2 = max(0, |x|^2 + |y|^2 - 2 x.y^T)`` by one matmul.

    Precision: that difference has an absolute error of a few ulps of
    ``|x|^2 + |y|^2 <= 2/c`` (~1e-6/c in float32, ~3e-15/c in float64 for D up to
    ~512), so ``|x-y|`` is resolved only down to ~1e-3/sqrt(c) (float32) or
    ~5e-8/sqrt(c) (float64). Pairs farther apart than that get the closed form's relative
    accuracy; closer pairs, identical ones included, can come out at a distance of up to
    ~2e-3/(sqrt(c)(1 - c|x|^2)) in float32 (~2e-7/(...) in float64) instead of ~0: pass
    float64 for them. On GPU, a float32 matmul in TF32 mode
    (``torch.set_float32_matmul_precision("high")``) has ~1e-3 relative error in
    ``x.y^T`` and loses far more.
    """
    c = _curvature(c, x)
    sqrt_c = c.sqrt()
    x2 = x.square().sum(-1)
    y2 = y.square().sum(-1)
    sq = (x2.unsqueeze(-1) + y2.unsqueeze(-2) - 2 * (x @ y.transpose(-1, -2))).clamp_min(0)
    ax = _one_minus_s2(sqrt_c * _norm(x, keepdim=False))
    ay = _one_minus_s2(sqrt_c * _norm(y, keepdim=False))
    z = sqrt_c * _safe_sqrt(sq) / torch.sqrt(ax.unsqueeze(-1) * ay.unsqueeze(-2))
    return 2 / sqrt_c * torch.asinh(z)


def dist0(x: Tensor, *, c: float | Tensor) -> Tensor:
    """Distance from the origin: ``(2/sqrt(c)) artanh(sqrt(c)|x|)``; ``(..., D) -> (...)``.

    Evaluated as ``2|x| artanh(s)/s`` (series near 0), with ``s = sqrt(c)|x|``
    clamped to ``1 - BALL_EPS``. Range about ``[0, ln(2/BALL_EPS)/sqrt(c)]``.
    """
    c = _curvature(c, x)
    r = _norm(x, keepdim=False)
    return 2 * r * _artanhc(c.sqrt() * r)


def _cone_root(K: float, t: float) -> float:
    """The s = sqrt(c) r > 0 where K (1 - s^2)/s = t, i.e. K s^2 + t s - K = 0.

    ``s = (sqrt(t^2 + 4K^2) - t)/(2K)``, written as ``2K/(t + sqrt(t^2 + 4K^2))`` so
    it does not cancel for small K.
    """
    return 2 * K / (t + math.sqrt(t * t + 4 * K * K))


def half_aperture(
    x: Tensor, *, c: float | Tensor, K: float = DEFAULT_K, min_radius: float | Tensor | None = None
) -> Tensor:
    """Half-aperture of the entailment cone at ``x`` (Ganea et al. 2018).

    ``psi(x) = arcsin(K (1 - c r^2)/(sqrt(c) r))`` with ``r = max(|x|, min_radius)``;
    ``(..., D) -> (...)``, range ``(0, pi/2)``, decreasing in ``|x|`` towards 0 at
    the boundary. Near the origin the argument exceeds 1; it equals ``t`` at
    ``r = s_t/sqrt(c)``, ``s_t = 2K/(t + sqrt(t^2 + 4K^2))`` (``s_1`` ~ 0.099 for
    K = 0.1). The default ``min_radius`` is ``s_t/sqrt(c)`` for
    ``t = 1 - CONE_ARG_MARGIN``, a small safety margin just beyond ``s_1/sqrt(c)``
    that keeps asin's derivative finite (~22): ``psi <= asin(1 - CONE_ARG_MARGIN)
    = pi/2 - 0.045``. The argument is also clamped to ``1 - ASIN_EPS``, which
    acts only for a caller's ``min_radius`` below ``s_1/sqrt(c)``.
    """
    if not K > 0:
        raise ValueError(f"K must be > 0 (got {K})")
    c = _curvature(c, x)
    sqrt_c = c.sqrt()
    if min_radius is None:
        min_radius = _cone_root(K, 1 - CONE_ARG_MARGIN) / sqrt_c
    r = torch.maximum(_norm(x, keepdim=False), torch.as_tensor(min_radius, dtype=x.dtype, device=x.device))
    s = sqrt_c * r
    arg = K * _one_minus_s2(s) / s
    return torch.asin(arg.clamp_max(1 - ASIN_EPS[x.dtype]))


def _angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle between a and b along the last dim, in [0, pi]: (..., D), (..., D) -> (...).

    ``2 atan2(|a^ - b^|, |a^ + b^|)`` for unit vectors ``a^, b^`` (Kahan), which is
    accurate to a few ulps at every angle, whereas ``acos(<a^, b^>)`` resolves
    nothing closer than ~sqrt(2 eps) to 0 or pi (5e-4 rad in float32). A vector
    without a direction (see ``_unit``) counts as perpendicular to every other; if
    both lack one, the angle is pi/2 (atan2(0, 0) would give a NaN gradient).
    """
    a, b = _unit(a), _unit(b)
    p, q = _norm(a - b, keepdim=False), _norm(a + b, keepdim=False)
    undefined = (p == 0) & (q == 0)
    p, q = torch.where(undefined, 1.0, p), torch.where(undefined, 1.0, q)
    return 2 * torch.atan2(p, q)


def oxy_angle(x: Tensor, y: Tensor, *, c: float | Tensor) -> Tensor:
    """Exterior angle Xi(x, y) at ``x`` between the ray origin -> x (continued away
    from the origin) and the geodesic from ``x`` to ``y``.

    Closed form (Ganea et al. 2018, with curvature ``-c``):
    ``cos Xi = (<x,y>(1 + c|x|^2) - |x|^2(1 + c|y|^2))
               / (|x| |x-y| sqrt(1 + c^2|x|^2|y|^2 - 2c<x,y>))``.
    Evaluated as the angle between ``v = y - x`` and
    ``w = x - c|x|^2 y = (1 - c|x|^2) x - c|x|^2 v``: the numerator above is
    ``<v, w>`` and ``|w| = |x| sqrt(1 + c^2|x|^2|y|^2 - 2c<x,y>)``, so nothing
    cancels when y is near x or the expression under the sqrt is small. The angle
    itself comes from atan2 (see ``_angle``), not from acos of a clamped cosine:
    near the boundary the cone's half-aperture is tiny (2e-4 rad at 0.999 of the
    radius for K = 0.1), below the ~5e-4 rad that acos resolves in float32, so with
    acos a child could never lie inside such a cone.

    ``(..., D), (..., D) -> (...)``, range ``[0, pi]``: 0 when y lies farther out on
    the ray through x, pi when y lies between the origin and x. For x at the
    origin or y == x the angle is undefined; pi/2 is returned there, with finite
    gradients.
    """
    c = _curvature(c, x)
    rx = _norm(x)
    v = y - x
    w = _one_minus_s2(c.sqrt() * rx) * x - c * rx.square() * v
    return _angle(v, w)


def cone_violation(
    x: Tensor, y: Tensor, *, c: float | Tensor, K: float = DEFAULT_K, min_radius: float | Tensor | None = None
) -> Tensor:
    """How far ``y`` lies outside the entailment cone of ``x``, in radians.

    ``relu(oxy_angle(x, y) - half_aperture(x))``; ``(..., D), (..., D) -> (...)``,
    range ``[0, pi)``; 0 iff y is inside the cone.
    """
    return torch.relu(oxy_angle(x, y, c=c) - half_aperture(x, c=c, K=K, min_radius=min_radius))


def mobius_add(x: Tensor, y: Tensor, *, c: float | Tensor) -> Tensor:
    """Möbius addition ``x (+)_c y``; ``(..., D), (..., D) -> (..., D)``.

    ``((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2|x|^2|y|^2)``.
    ``z -> (-m) (+)_c z`` is an isometry of the ball that moves ``m`` to the origin, and
    ``z -> m (+)_c z`` is its inverse (left cancellation), which ``frechet_mean`` uses. The result
    is projected into the usable ball (rounding near the boundary).
    """
    c = _curvature(c, x)
    xy = (x * y).sum(-1, keepdim=True)
    x2 = x.square().sum(-1, keepdim=True)
    y2 = y.square().sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return project(num / den.clamp_min(MIN_NORM), c=c)


FRECHET_TOL = 1e-10   # stop when the step is this short (in units of 1/sqrt(c))
FRECHET_STEPS = 100   # Riemannian gradient steps at most


def frechet_mean(x: Tensor, *, c: float | Tensor) -> Tensor:
    """Fréchet (Karcher) mean of ``(N, D)`` points: the point ``m`` minimising
    ``sum_i d_c(m, x_i)^2``; returns ``(D,)``.

    Riemannian gradient descent: move ``m`` to the origin by the isometry ``z -> (-m) (+)_c z``,
    where ``v = mean_i logmap0((-m) (+)_c x_i)`` is the descent direction (``log_m`` up to the
    conformal factor), and step to ``m (+)_c expmap0(eta v)``. The step ``eta = 1 / mean_i(s_i
    coth s_i)``, ``s_i = sqrt(c) d_c(m, x_i)``, is the inverse of the largest curvature of the
    objective (the Hessian of d^2/2 has eigenvalues 1 and s coth s): a unit step overshoots and
    diverges for spread points in negative curvature. The objective is strictly convex, so the
    minimiser is unique; stops when ``sqrt(c)|eta v| < FRECHET_TOL`` or after ``FRECHET_STEPS``.
    Computed in the input's dtype (pass float64 for accuracy). Raises ValueError on no points.
    """
    if x.dim() != 2 or len(x) == 0:
        raise ValueError(f"frechet_mean takes (N, D) points with N >= 1 (got shape {tuple(x.shape)})")
    c = _curvature(c, x)
    m = expmap0(logmap0(x, c=c).mean(0), c=c)  # start: the tangent mean at the origin
    for _ in range(FRECHET_STEPS):
        z = logmap0(mobius_add(-m.expand_as(x), x, c=c), c=c)
        s = 2 * c.sqrt() * _norm(z, keepdim=False)               # sqrt(c) d_c(m, x_i)
        kappa = torch.where(s > 1e-6, s / torch.tanh(s.clamp_min(1e-6)), torch.ones_like(s))
        step = z.mean(0) / kappa.mean()
        m = mobius_add(m, expmap0(step, c=c), c=c)
        if float(c.sqrt() * _norm(step, keepdim=False)) < FRECHET_TOL:
            break
    return m
