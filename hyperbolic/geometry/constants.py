"""Constants of the geometry that configuration needs too, kept free of torch so that
``hyperbolic.config`` (and the flags built from it) can import them without the tensor stack."""

# Cone aperture constant K of the entailment cones, psi(x) = arcsin(K (1 - c|x|^2) / (sqrt(c)|x|)):
# the value Ganea, Bécigneul and Hofmann (2018) use with this Poincaré formula
# (``hyperbolic.hierarchy.cones``). The one place it is written.
DEFAULT_K = 0.1

# The numerical boundary (``hyperbolic.geometry.poincare.BOUNDARY_RESOLUTION``): 1 - c|x|^2 at or
# below this many machine epsilons of the points' dtype keeps a digit or two at most.
BOUNDARY_ULPS = 64
FLOAT32_EPS = 2.0 ** -23
FLOAT32_BALL_EPS = 1e-6  # poincare.BALL_EPS[torch.float32]: the usable ball's margin


def clip_radius_resolvable(clip_r: float, *, eps: float = FLOAT32_EPS, ball_eps: float = FLOAT32_BALL_EPS) -> bool:
    """Whether points on a clip sphere of relative radius ``clip_r`` (1: no clip, so the usable
    ball's edge ``1 - ball_eps``) stay off the numerical boundary: ``1 - s^2 > BOUNDARY_ULPS eps``
    (float32 by default)."""
    s = min(clip_r, 1 - ball_eps)
    return 1 - s * s > BOUNDARY_ULPS * eps
