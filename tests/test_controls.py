"""The matched controls: ``--geometry euclidean-distance`` (the EuCLIP control) beside hyperbolic and cosine."""

import numpy as np
import pytest
import torch

import train_hyperbolic_clap as train_script
from hyperbolic.evaluation.scoring import load_projection, usage_skipped
from hyperbolic.model.projector import Projector, similarity
from tests.helpers import run_main


def _by_hand(a: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    """-|a_i - t_j|^2 / tau, one pair at a time in float64."""
    out = np.empty((len(a), len(t)))
    for i in range(len(a)):
        for j in range(len(t)):
            diff = a[i].astype(np.float64) - t[j].astype(np.float64)
            out[i, j] = -float(diff @ diff) / tau
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_euclidean_distance_logits_are_the_closed_form(dtype, tol, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(7, 5, generator=g, dtype=dtype) * 3
    t = torch.randn(4, 5, generator=g, dtype=dtype)
    t[1] = a[2]  # a pair at distance 0: the expansion must not round below 0
    tau = 0.37
    got = similarity(a, t, geometry="euclidean-distance", c=1.0, temperature=tau).numpy()
    want = _by_hand(a.numpy(), t.numpy(), tau)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    # float32 loses the zero to cancellation in |a|^2 + |t|^2 - 2<a, t> (a few ulps of |a|^2), but the
    # clamp keeps every score <= 0
    assert (got <= 0).all()
    assert abs(got[2, 1]) <= 8 * torch.finfo(dtype).eps * float((a[2] @ a[2]) / tau)
    # the per-class bias: minus |t_j|^2 / tau, with the clip's own term and the dot product apart
    bias = got - (2 * a.numpy() @ t.numpy().T - (a.numpy() ** 2).sum(1, keepdims=True)) / tau
    np.testing.assert_allclose(bias, np.broadcast_to(-(t.numpy() ** 2).sum(1) / tau, bias.shape),
                               rtol=tol, atol=tol * np.abs(want).max())


def test_euclidean_distance_projector_is_the_bare_layer():
    """No normalisation, no expmap, no clip: points far beyond any ball come out as the layer gives them."""
    torch.manual_seed(0)
    p = Projector(6, geometry="euclidean-distance", clip_r=0.5, proj_dim=3)
    with torch.no_grad():
        p.linear.weight.mul_(50)
    x = torch.randn(10, 6)
    want = x.numpy() @ p.linear.weight.detach().numpy().T + p.linear.bias.detach().numpy()
    got = p(x, c=1.0).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.linalg.norm(got, axis=1).max() > 5  # a hyperbolic projector would keep these below 0.5


def _checkpoint(path, *, geometry, proj_dim, dim=6, seed=0, tau=0.25):
    torch.manual_seed(seed)
    p = Projector(dim, geometry=geometry, proj_dim=proj_dim)
    with torch.no_grad():
        p.linear.bias.normal_()
    torch.save({"epoch": 2, "projection_state_dict": p.state_dict(), "c": 1.0, "temperature": tau,
                "embed_dim": dim, "proj_dim": proj_dim, "geometry": geometry, "clip_r": 0.9,
                "prompt_template": "{label}", "config": {}}, path)
    return p.linear.weight.detach().numpy().astype(np.float64), p.linear.bias.detach().numpy().astype(np.float64)


def test_evaluation_scores_a_euclidean_distance_checkpoint_by_the_closed_form(tmp_path):
    path = tmp_path / "best_projection_epoch_2.pth"
    W, b = _checkpoint(path, geometry="euclidean-distance", proj_dim=3)
    model = load_projection(path, embed_dim=6)
    g = torch.Generator().manual_seed(5)
    audio = torch.nn.functional.normalize(torch.randn(11, 6, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    got = model.scores(audio, text)
    want = _by_hand(audio.numpy() @ W.T + b, text.numpy() @ W.T + b, 0.25)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert model.info["geometry"] == "euclidean-distance" and model.info["proj_dim"] == 3
    assert model.info["effective_temperature"] is None  # there is no curvature to fold in
    assert "per-class bias" in model.info["distance"]
    assert usage_skipped(model).startswith("no ball")


def test_learn_c_and_cones_need_the_ball(tmp_path):
    base = ["--parquet-dir", str(tmp_path), "--geometry", "euclidean-distance"]
    code, err = run_main(train_script, [*base, "--learn-c", "--no-learn-temperature"])
    assert code == 2 and "--learn-c needs --geometry hyperbolic" in err
    code, err = run_main(train_script, [*base, "--ontology", "o.json", "--entailment-weight", "1"])
    assert code == 2 and "needs --geometry hyperbolic" in err
