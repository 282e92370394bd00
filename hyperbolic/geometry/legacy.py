"""The earlier public scripts' geometry, kept only to reproduce the numbers of their checkpoints
(``test_clap_modelscope.py --legacy-distance``). Nothing else uses it.

Their projection: ``y = expmap0(W x + b, c)``, then ``y`` rescaled to ``|y| <= 0.9`` in absolute
units whatever ``c`` is (``project``). Their distance: ``c`` missing inside the fraction
(``pairwise_dist``), which is the distance of the ball of curvature ``-1`` divided by
``sqrt(c)``: WRONG geometry for ``c != 1``. The correct geometry is ``hyperbolic.geometry.poincare``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hyperbolic.geometry import poincare

# The rescale of their projection: |y| <= MAX_NORM (absolute), NORM_EPS added to |y| before dividing.
MAX_NORM = 0.9
NORM_EPS = 1e-10

# Clamps of their distance. They are applied in the input's dtype, as the old code did (in
# float32, 1 - 1e-10 and 1 + 1e-10 both round to 1).
_EPS = 1e-10

# pairwise_dist builds (rows, M, D) differences at most this many elements.
_CHUNK_ELEMENTS = 1 << 22


def project(projector, x: Tensor, *, c: float) -> Tensor:
    """Their projection with ``projector``'s linear layer: ``y = expmap0(W x + b, c)``, then
    ``y * min(1, 0.9 / (|y| + 1e-10))``; ``(N, D) -> (N, D)``, ``|y| <= 0.9``."""
    y = poincare.expmap0(projector.linear(x.float()), c=c)
    scale = (MAX_NORM / (y.norm(dim=-1, keepdim=True) + NORM_EPS)).clamp(max=1.0)
    return y * scale


def pairwise_dist(x: Tensor, y: Tensor, *, c: float | Tensor) -> Tensor:
    """Their distance, all pairs: ``(N, D), (M, D) -> (N, M)``. WRONG geometry for ``c != 1``:
    ``c`` is missing inside the fraction, so it equals ``poincare.pairwise_dist(x, y, c=1)/sqrt(c)``
    (up to the clamps), not the distance in the ball of curvature ``-c``.

    ``d = (1/sqrt(c)) arcosh(max(1 + 1e-10, 1 + 2|x-y|^2 / max(1e-10, (1 - X)(1 - Y))))``
    with ``X = min(|x|^2, 1 - 1e-10)``, ``Y = min(|y|^2, 1 - 1e-10)``, the clamps of
    the old code, applied in the input's dtype; ``|x-y|^2`` is summed from explicit
    differences, built a chunk of rows at a time.
    """
    c = poincare._curvature(c, x)  # the same checks and cast as every poincare function
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"legacy pairwise_dist takes (N, D) and (M, D) (got {tuple(x.shape)} and {tuple(y.shape)})"
        )
    x2 = x.square().sum(-1).clamp_max(1 - _EPS)
    y2 = y.square().sum(-1).clamp_max(1 - _EPS)
    den = ((1 - x2).unsqueeze(1) * (1 - y2).unsqueeze(0)).clamp_min(_EPS)
    rows = max(1, _CHUNK_ELEMENTS // max(1, y.shape[0] * y.shape[1]))
    chunks = [(x[i : i + rows].unsqueeze(1) - y).square().sum(-1) for i in range(0, x.shape[0], rows)]
    sq = torch.cat(chunks) if chunks else x.new_zeros(0, y.shape[0])
    arg = (1 + 2 * sq / den).clamp_min(1 + _EPS)
    return torch.acosh(arg) / c.sqrt()
