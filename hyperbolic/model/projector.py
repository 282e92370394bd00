"""The projector that maps frozen CLAP embeddings into the Poincaré ball, and the similarity head.

``Projector``: Linear(d, D) (Xavier-uniform weight, zero bias; D = ``proj_dim``, by default the
    CLAP size d), shared by audio and text, then
    hyperbolic:         clip the tangent vector to ``clip_r`` of the ball radius, then ``expmap0``;
    euclidean:          L2-normalise (the ablation: same layer, cosine similarity);
    euclidean-distance: nothing (the EuCLIP control: same layer, no expmap, no clip).
``Geometry``: curvature ``c`` and temperature ``tau``, stored as logs (optionally learned) and
    clamped, so they stay positive and bounded.
``similarity``: the logits every loss and every metric uses: ``-d_c(a, t) / tau`` on the ball,
    ``cos(a, t) / tau`` for the euclidean ablation, ``-|a - t|^2 / tau`` for euclidean-distance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hyperbolic.config import CLIP_MODES, GEOMETRIES
from hyperbolic.geometry import legacy, poincare

# Geometries whose points keep the scale the layer gives them (so --init-radius sets it): the ball's
# tangent vectors, and the unnormalised points of euclidean-distance. Cosine ignores the scale.
SCALED_GEOMETRIES = ("hyperbolic", "euclidean-distance")

# Learned curvature may move at most this factor away from its initial value (either way), so the
# ball radius cannot collapse or blow up during training.
C_RANGE_FACTOR = 10.0
# Temperature bounds: below 0.01 logits span hundreds of nats and softmax saturates in float32;
# above 100 every pair looks alike.
TAU_MIN, TAU_MAX = 0.01, 100.0


class _InwardClip(torch.autograd.Function):
    """``u * scale`` (``scale = min(1, r / |u|)``, given, detached) with the gradient of the
    ``inward`` clip mode (see ``clip_tangent``); the curvature's share is added by the caller."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u, scale)
        return u * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, scale = ctx.saved_tensors
        direction = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
        g = grad * scale
        radial = (g * direction).sum(-1, keepdim=True)
        # A gradient step moves u by -g: a negative radial part would push a clipped vector further
        # out, where it changes nothing but the pre-clip norm. That part is dropped; an inward
        # one is kept, so a clipped point can always be brought back into the ball.
        outward = (scale < 1) & (radial < 0)
        return torch.where(outward, g - radial * direction, g), None


def clip_tangent(u: torch.Tensor, *, c: torch.Tensor | float, clip_r: float,
                 mode: str = "inward") -> torch.Tensor:
    """Rescale tangent vectors so that ``expmap0`` lands within ``clip_r / sqrt(c)`` of the origin.

    ``u`` (..., D) -> (..., D), value ``u * min(1, r_t / |u|)`` with ``r_t = artanh(clip_r) / sqrt(c)``,
    the tangent norm that ``expmap0`` maps to relative radius ``clip_r``. The modes differ only in
    the gradient with respect to ``u`` of a clipped vector (inside the clip every mode is the
    identity):

    - ``inward`` (default): the scaled gradient, minus its radial part when that part would push
      the vector further out. The pre-clip norm cannot run away, and a clipped point can still be
      pulled back inside.
    - ``straight-through`` (this code's earlier rule): the scaled gradient, radial part included.
      The pre-clip norm grows without bound when the loss keeps pushing outward, so a point that
      reached the clip never comes back.
    - ``hard``: the exact derivative of the value: no radial part at all, so a clipped point is
      stuck on the clip sphere until the shared weights move it.

    In every mode the gradient with respect to ``c`` is the exact one: a clipped vector's norm is
    ``r_t(c)`` and moves with ``c``.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode must be one of {CLIP_MODES} (got {mode!r})")
    if clip_r >= 1.0:
        return u
    sqrt_c = torch.as_tensor(c, dtype=u.dtype, device=u.device).sqrt()
    r_t = math.atanh(clip_r) / sqrt_c
    # Norms are clamped away from zero only to keep the division finite; such vectors are kept.
    norm = u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    if mode == "hard" or not (torch.is_grad_enabled() and u.requires_grad):
        # Without a gradient to shape, every mode is this value (plain ops, so ONNX export traces it).
        return u * (r_t / norm).clamp(max=1.0)
    scale = (r_t.detach() / norm).clamp(max=1.0).detach()
    out = u * scale if mode == "straight-through" else _InwardClip.apply(u, scale)
    # Value unchanged (factor 1); restores d(out)/dc = (u/|u|) dr_t/dc for clipped vectors.
    return out * torch.where(scale < 1, r_t / r_t.detach(), torch.ones_like(norm))


class Projector(nn.Module):
    def __init__(self, embed_dim: int, *, geometry: str = "hyperbolic", clip_r: float = 0.9,
                 clip_mode: str = "inward", proj_dim: int | None = None):
        """``embed_dim`` d: the CLAP embedding size; ``proj_dim`` D: the output size (None: d).
        ``clip_r`` and ``clip_mode`` apply to the hyperbolic geometry only."""
        super().__init__()
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES} (got {geometry!r})")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES} (got {clip_mode!r})")
        self.geometry = geometry
        self.clip_r = clip_r
        self.clip_mode = clip_mode
        # Named ``linear`` so that state dicts match those of the earlier public scripts.
        self.linear = nn.Linear(embed_dim, embed_dim if proj_dim is None else proj_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def proj_dim(self) -> int:
        """D, the size of the projected points."""
        return self.linear.out_features

    def forward(self, x: torch.Tensor, *, c: torch.Tensor | float) -> torch.Tensor:
        """(N, d) CLAP embeddings -> (N, D) points (ball of curvature -c, unit sphere, or R^D)."""
        u = self.linear(x.float())  # geometry runs in float32 even if CLAP ran in half precision
        if self.geometry == "euclidean":
            return F.normalize(u, dim=-1)
        if self.geometry == "euclidean-distance":
            return u
        return poincare.expmap0(clip_tangent(u, c=c, clip_r=self.clip_r, mode=self.clip_mode), c=c)

    @torch.no_grad()
    def scale_to_radius_(self, x: torch.Tensor, *, c: float, radius: float) -> float:
        """Rescale the layer so that the median of ``x`` (N, d) lands at relative radius ``radius``.

        Relative radius is ``sqrt(c)|expmap0(u)| = tanh(sqrt(c)|u|)``, so the target tangent norm is
        ``artanh(radius) / sqrt(c)``; weight and bias are multiplied by target / median |u| (before
        the clip). Returns that factor. Only the scale changes: directions, hence the cosine
        ranking of the projected points, are those of the layer as initialised.

        The median is measured on the layer's own output, so the result does not depend on D
        (Xavier's output norm does: about sqrt(2D / (d + D)) for unit inputs). euclidean-distance
        uses the same target norm: it starts from the very layer the hyperbolic model starts from.
        """
        norms = self.linear(x.float()).norm(dim=-1)
        factor = (math.atanh(radius) / math.sqrt(c)) / norms.median().clamp_min(torch.finfo(norms.dtype).tiny).item()
        self.linear.weight.mul_(factor)
        self.linear.bias.mul_(factor)
        return factor


class Geometry(nn.Module):
    """Curvature and temperature in log space; learned when asked, always clamped."""

    def __init__(self, c: float, temperature: float, *, learn_c: bool = False,
                 learn_temperature: bool = False):
        super().__init__()
        self.log_c = nn.Parameter(torch.tensor(math.log(c)), requires_grad=learn_c)
        self.log_tau = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.log_c_min = math.log(c / C_RANGE_FACTOR)
        self.log_c_max = math.log(c * C_RANGE_FACTOR)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the raw parameters after each optimizer step. The properties below clamp too, but
        a raw value left beyond its bound would get zero gradient and could never come back."""
        self.log_c.clamp_(self.log_c_min, self.log_c_max)
        self.log_tau.clamp_(math.log(TAU_MIN), math.log(TAU_MAX))

    @property
    def c(self) -> torch.Tensor:
        return self.log_c.clamp(self.log_c_min, self.log_c_max).exp()

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_tau.clamp(math.log(TAU_MIN), math.log(TAU_MAX)).exp()

    @property
    def effective_temperature(self) -> torch.Tensor:
        """``tau * sqrt(c)``: the temperature of the same model at c = 1 (see ``effective_temperature``)."""
        return effective_temperature(self.c, self.temperature)


def effective_temperature(c, temperature):
    """``tau * sqrt(c)``. ``(W, b, c, tau)`` and ``(sqrt(c) W, sqrt(c) b, 1, tau sqrt(c))`` give the
    same logits: ``sqrt(c) expmap0_c(u) = expmap0_1(sqrt(c) u)``, ``d_c(x, y) = d_1(sqrt(c) x,
    sqrt(c) y) / sqrt(c)``, and the clip radius is a fraction of the ball radius. So two runs with
    the same effective temperature and the same ``sqrt(c) W`` are the same model."""
    return temperature * c ** 0.5


def similarity(a: torch.Tensor, t: torch.Tensor, *, geometry: str, c: torch.Tensor | float,
               temperature: torch.Tensor | float, legacy_distance: bool = False) -> torch.Tensor:
    """Logits (N, M) between projected audio ``a`` (N, D) and projected text ``t`` (M, D).

    hyperbolic: ``-d_c(a_i, t_j) / tau``; euclidean: ``<a_i, t_j> / tau`` on unit vectors;
    euclidean-distance: ``-|a_i - t_j|^2 / tau = (2 <a_i, t_j> - |a_i|^2 - |t_j|^2) / tau`` on the
    unnormalised points: ``-|t_j|^2 / tau`` is a per-class bias set by the prompt's norm (as a
    prompt's radius is in the ball), ``-|a_i|^2 / tau`` is the same for every class of a clip.
    ``legacy_distance`` uses the earlier scripts' formula with c outside the fraction.
    """
    if geometry == "euclidean":
        return (a @ t.T) / temperature
    if geometry == "euclidean-distance":
        sq = (a * a).sum(-1, keepdim=True) + (t * t).sum(-1) - 2 * (a @ t.T)
        # The expansion can round below 0 for (nearly) equal points; a squared distance cannot be.
        return -sq.clamp_min(0.0) / temperature
    if legacy_distance:
        return -legacy.pairwise_dist(a, t, c=c) / temperature
    return -poincare.pairwise_dist(a, t, c=c) / temperature
