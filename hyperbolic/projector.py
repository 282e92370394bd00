"""The projector that maps frozen CLAP embeddings into the Poincaré ball, and the similarity head.

``Projector``: Linear(d, d) (Xavier-uniform weight, zero bias), shared by audio and text, then
    hyperbolic: clip the tangent vector to ``clip_r`` of the ball radius, then ``expmap0``;
    euclidean:  L2-normalise (the ablation: same layer, cosine similarity).
``Geometry``: curvature ``c`` and temperature ``tau``, stored as logs (optionally learned) and
    clamped, so they stay positive and bounded.
``similarity``: the logits every loss and every metric uses: ``-d_c(a, t) / tau`` on the ball,
    ``cos(a, t) / tau`` for the euclidean ablation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hyperbolic import legacy, poincare

GEOMETRIES = ("hyperbolic", "euclidean")

# Learned curvature may move at most this factor away from its initial value (either way), so the
# ball radius cannot collapse or blow up during training.
C_RANGE_FACTOR = 10.0
# Temperature bounds: below 0.01 logits span hundreds of nats and softmax saturates in float32;
# above 100 every pair looks alike.
TAU_MIN, TAU_MAX = 0.01, 100.0


def clip_tangent(u: torch.Tensor, *, c: torch.Tensor | float, clip_r: float) -> torch.Tensor:
    """Rescale tangent vectors so that ``expmap0`` lands within ``clip_r / sqrt(c)`` of the origin.

    ``u`` (..., D) -> (..., D). The tangent norm that maps to ball radius ``r / sqrt(c)`` is
    ``artanh(r) / sqrt(c)``. The scale factor ``min(1, r_t / |u|)`` is detached: the value is
    clipped, but the gradient passes through unchanged (times the scale), radial part included.
    A hard clip with a live scale would have zero radial gradient beyond the radius, so a point
    stuck on the clip sphere could never be pulled back inward.
    """
    if clip_r >= 1.0:
        return u
    sqrt_c = torch.as_tensor(c, dtype=u.dtype, device=u.device).sqrt()
    r_t = math.atanh(clip_r) / sqrt_c
    # Norms are clamped away from zero only to keep the division finite; such vectors are kept.
    norm = u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    scale = (r_t / norm).clamp(max=1.0).detach()
    return u * scale


class Projector(nn.Module):
    def __init__(self, embed_dim: int, *, geometry: str = "hyperbolic", clip_r: float = 0.9):
        super().__init__()
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES} (got {geometry!r})")
        self.geometry = geometry
        self.clip_r = clip_r
        # Named ``linear`` so that state dicts match those of the earlier public scripts.
        self.linear = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, *, c: torch.Tensor | float) -> torch.Tensor:
        """(N, D) CLAP embeddings -> (N, D) points (ball of curvature -c, or unit sphere)."""
        u = self.linear(x.float())  # geometry runs in float32 even if CLAP ran in half precision
        if self.geometry == "euclidean":
            return F.normalize(u, dim=-1)
        return poincare.expmap0(clip_tangent(u, c=c, clip_r=self.clip_r), c=c)


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


def similarity(a: torch.Tensor, t: torch.Tensor, *, geometry: str, c: torch.Tensor | float,
               temperature: torch.Tensor | float, legacy_distance: bool = False) -> torch.Tensor:
    """Logits (N, M) between projected audio ``a`` (N, D) and projected text ``t`` (M, D).

    hyperbolic: ``-d_c(a_i, t_j) / tau``; euclidean: ``<a_i, t_j> / tau`` on unit vectors.
    ``legacy_distance`` uses the earlier scripts' formula with c outside the fraction.
    """
    if geometry == "euclidean":
        return (a @ t.T) / temperature
    if legacy_distance:
        return -legacy.pairwise_dist(a, t, c=c) / temperature
    return -poincare.pairwise_dist(a, t, c=c) / temperature
