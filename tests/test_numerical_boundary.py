"""Numerical honesty near the boundary of the ball: ``at_numerical_boundary``, the ``--clip-r``
check, and radius statistics computed in float64 and null when the radii do not differ beyond the
dtype's resolution. Constructed points with known radii."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import train_hyperbolic_clap as train_script
from hyperbolic.evaluation.ball_usage import radius_resolved, radius_summary, relative_radius
from hyperbolic.evaluation.hierarchy import _norm_depth64
from hyperbolic.geometry import poincare
from tests.helpers import run_main


def _at_radius(radii, dim=8, seed=0, dtype=torch.float32, c=1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(len(radii), dim, generator=g, dtype=torch.float64), dim=-1)
    return (u * torch.tensor(radii, dtype=torch.float64)[:, None] / c ** 0.5).to(dtype)


def test_at_numerical_boundary_by_radius():
    # 1 - s^2 at s = 1 - 1e-6 is 2e-6, below float32's 64 eps (7.6e-6); at 0.999 it is 2e-3.
    x = _at_radius([1 - 1e-6, 0.999999, 0.999, 0.5])
    assert poincare.at_numerical_boundary(x, c=1.0).tolist() == [True, True, False, False]
    assert not poincare.at_numerical_boundary(x.double(), c=1.0).any()  # float64 resolves all four
    summary = radius_summary(relative_radius(x, c=1.0), 0.9, x.dtype)
    assert summary["at_numerical_boundary"] == 0.5


def test_clip_radius_resolvable():
    assert not poincare.clip_radius_resolvable(1.0) and not poincare.clip_radius_resolvable(0.9999999)
    assert poincare.clip_radius_resolvable(0.999) and poincare.clip_radius_resolvable(0.9)
    assert poincare.clip_radius_resolvable(0.9999999, torch.float64)


def test_clip_r_on_the_numerical_boundary_is_refused():
    code, err = run_main(train_script, ["--parquet-dir", "x", "--clip-r", "1"])
    assert code == 2 and "--clip-r 1 " in err and "float32" in err and "0.999" in err
    args = train_script.parse_args(["--parquet-dir", "x", "--clip-r", "0.999"])
    assert args.clip_r == 0.999
    assert train_script.parse_args(["--parquet-dir", "x", "--clip-r", "1", "--geometry", "euclidean"]).clip_r == 1


def test_norm_depth_is_null_when_every_radius_is_one_value():
    depth = [0, 1, 2, 1, 2, None]
    on_sphere = _at_radius([0.9] * 6, seed=1)
    out = _norm_depth64(on_sphere, depth, 1.0)
    assert out["rho"] is None and "resolution" in out["skipped"]
    assert radius_resolved(relative_radius(on_sphere, c=1.0), on_sphere.dtype) is not None
    spread = _at_radius([0.1, 0.3, 0.6, 0.35, 0.7, 0.2], seed=2)
    out = _norm_depth64(spread, depth, 1.0)
    d0 = 2 * np.arctanh(np.linalg.norm(spread.double().numpy()[:5], axis=1))
    assert out["rho"] == pytest.approx(stats.spearmanr(d0, depth[:5]).statistic)
