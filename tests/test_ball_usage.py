"""Issue 10: curvature as a reparametrisation, the clip's gradients, and the ball-usage diagnostics."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from hyperbolic.evaluation.ball_usage import ON_SPHERE_TOL, ball_usage, ranking_vs_cosine
from hyperbolic.geometry import poincare
from hyperbolic.model.projector import CLIP_MODES, Geometry, Projector, clip_tangent, similarity
from tests.helpers import train_argv


@pytest.fixture(scope="module")
def tiny_class_labels(tmp_path_factory):
    from data.synthetic import DEMO_CLASSES
    path = tmp_path_factory.mktemp("labels") / "class_labels.json"
    path.write_text(json.dumps(dict(enumerate(DEMO_CLASSES))))
    return path


def _logits(W, b, x, t, *, c, tau, clip_r=0.9, mode="inward"):
    """The projector's map in float64: linear, clip, expmap0; then -d_c / tau."""
    def project(v):
        return poincare.expmap0(clip_tangent(v @ W.T + b, c=c, clip_r=clip_r, mode=mode), c=c)
    return similarity(project(x), project(t), geometry="hyperbolic", c=c, temperature=tau)


@pytest.mark.parametrize("c", [0.01, 0.1, 4.0])
def test_curvature_is_a_reparametrisation_of_scale_and_temperature(c):
    """(W, b, c, tau) and (sqrt(c) W, sqrt(c) b, 1, tau sqrt(c)) give the same logits, clipped or not."""
    g = torch.Generator().manual_seed(0)
    D = 6
    x = torch.randn(20, D, generator=g, dtype=torch.float64)
    t = torch.randn(7, D, generator=g, dtype=torch.float64)
    for scale in (0.05, 1.0, 30.0):  # from nothing clipped to everything clipped
        W = torch.randn(D, D, generator=g, dtype=torch.float64) * scale
        b = torch.randn(D, generator=g, dtype=torch.float64) * scale
        a = _logits(W, b, x, t, c=c, tau=0.3)
        k = math.sqrt(c)
        ref = _logits(k * W, k * b, x, t, c=1.0, tau=0.3 * k)
        assert torch.allclose(a, ref, rtol=1e-10, atol=1e-12)
    geo = Geometry(c, 0.3)
    assert geo.effective_temperature.item() == pytest.approx(0.3 * math.sqrt(c), rel=1e-6)


@pytest.mark.parametrize("mode", CLIP_MODES)
def test_gradient_of_c_through_the_clip_radius_matches_finite_differences(mode):
    """d(sum of distances)/dc with every point clipped, float64: autograd against central differences."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(8, 5, generator=g, dtype=torch.float64) * 20  # all far beyond the clip
    v = torch.randn(6, 5, generator=g, dtype=torch.float64) * 20

    def total(c):
        a = poincare.expmap0(clip_tangent(u, c=c, clip_r=0.9, mode=mode), c=c)
        b = poincare.expmap0(clip_tangent(v, c=c, clip_r=0.9, mode=mode), c=c)
        return poincare.pairwise_dist(a, b, c=c).sum()

    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    total(c).backward()
    h = 1e-6
    fd = (total(torch.tensor(0.5 + h, dtype=torch.float64)) - total(torch.tensor(0.5 - h, dtype=torch.float64))) / (2 * h)
    assert fd.item() < 0  # a larger c shrinks the ball and every clipped distance
    assert c.grad.item() == pytest.approx(fd.item(), rel=1e-6)


def _pre_clip_norm_under_outward_pressure(mode, steps=100):
    """Adam on -|expmap0(clip(u))| (the loss wants the point further out) from beyond the clip."""
    u = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        (-poincare.expmap0(clip_tangent(u, c=1.0, clip_r=0.9, mode=mode), c=1.0).norm()).backward()
        opt.step()
    return u.detach().norm().item()


def test_inward_clip_cannot_run_away_but_straight_through_does():
    assert _pre_clip_norm_under_outward_pressure("straight-through") > 10.0  # grew from 5 without bound
    assert _pre_clip_norm_under_outward_pressure("inward") == pytest.approx(5.0, rel=1e-9)  # never pushed out
    # ... and a clipped point that the loss wants inward comes back inside (the hard clip cannot).
    u = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([u], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        poincare.expmap0(clip_tangent(u, c=1.0, clip_r=0.9, mode="inward"), c=1.0).norm().backward()
        opt.step()
    assert math.tanh(u.detach().norm().item()) < 0.9 - 0.05


def test_inward_clip_value_is_the_clip_and_inside_is_untouched():
    u = torch.randn(50, 4, dtype=torch.float64) * torch.logspace(-3, 2, 50, dtype=torch.float64)[:, None]
    for mode in CLIP_MODES:
        out = clip_tangent(u, c=2.0, clip_r=0.9, mode=mode)
        expected = u * torch.clamp(math.atanh(0.9) / math.sqrt(2.0) / u.norm(dim=-1, keepdim=True), max=1.0)
        assert torch.allclose(out, expected, rtol=1e-12, atol=0)


def test_scale_to_radius_puts_the_median_at_the_requested_radius():
    torch.manual_seed(0)
    proj = Projector(16)
    x = torch.nn.functional.normalize(torch.randn(101, 16), dim=-1)
    proj.scale_to_radius_(x, c=0.3, radius=0.4)
    radius = (proj(x, c=0.3).norm(dim=-1) * math.sqrt(0.3))
    assert radius.median().item() == pytest.approx(0.4, abs=1e-5)


def test_rank_correlation_matches_scipy_spearman():
    g = torch.Generator().manual_seed(3)
    a, t = torch.randn(30, 5, generator=g), torch.randn(9, 5, generator=g)
    scores = (-torch.cdist(a, t)).numpy() + np.round(np.random.default_rng(0).normal(size=(30, 9)), 1)
    cos = (torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T).numpy()
    expected = np.mean([spearmanr(scores[i], cos[i]).statistic for i in range(30)])
    out = ranking_vs_cosine(scores, a, t)
    assert out["rank_corr_with_cosine"] == pytest.approx(expected, rel=1e-9)
    assert out["top1_same_as_cosine"] == pytest.approx(np.mean(scores.argmax(1) == cos.argmax(1)))


def test_ball_usage_of_points_at_one_radius_equals_cosine():
    """Closed form: every point at one radius, so -d_c is decreasing in the angle."""
    g = torch.Generator().manual_seed(4)
    c = 0.25
    a = torch.nn.functional.normalize(torch.randn(40, 6, generator=g, dtype=torch.float64), dim=-1) * 0.6 / math.sqrt(c)
    t = torch.nn.functional.normalize(torch.randn(12, 6, generator=g, dtype=torch.float64), dim=-1) * 0.6 / math.sqrt(c)
    scores = (-poincare.pairwise_dist(a, t, c=c)).numpy()
    out = ball_usage(a, t, scores, c=c, clip_radius=0.9)
    assert out["top1_same_as_cosine"] == 1.0 and out["rank_corr_with_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert out["audio"]["relative_radius"]["median"] == pytest.approx(0.6, abs=1e-12)
    assert out["audio"]["on_clip_sphere"] == 0.0
    # Radii that differ make the rankings differ: prompts at random radii.
    t2 = t * torch.rand(12, 1, generator=g, dtype=torch.float64)
    out2 = ball_usage(a, t2, (-poincare.pairwise_dist(a, t2, c=c)).numpy(), c=c, clip_radius=0.9)
    assert out2["rank_corr_with_cosine"] < 0.99
    assert out2["audio"]["on_clip_sphere"] == 0.0 and out2["text"]["relative_radius"]["max"] < 0.6


def _checkpoint(path, dim, weight, *, c):
    proj = Projector(dim)
    with torch.no_grad():
        proj.linear.weight.copy_(weight)
        proj.linear.bias.zero_()
    torch.save({"epoch": 1, "projection_state_dict": proj.state_dict(), "c": c, "temperature": 0.5,
                "embed_dim": dim, "train_loss": 0.0, "val_loss": 0.0}, path)  # the earlier scripts' keys
    return path


@pytest.mark.slow
@pytest.mark.parametrize("scale, c", [(1.0, 0.25), (10.0, 1.0)])
def test_results_ball_usage_of_constructed_checkpoints(tmp_path, tiny_clap_dir, demo_eval_dir, tiny_class_labels,
                                                       scale, c):
    """W = I: a unit CLAP embedding maps to tangent norm 1, relative radius tanh(sqrt(c)) (0.462 at
    c = 0.25), every point at one radius, so the ranking is the cosine one. W = 10 I at c = 1:
    tangent norm 10 > artanh(0.9), every point on the clip sphere."""
    from hyperbolic.embedding.clap import FrozenClap
    dim = FrozenClap.load(str(tiny_clap_dir)).embed_dim
    ckpt = _checkpoint(tmp_path / "w.pth", dim, scale * torch.eye(dim), c=c)
    out = tmp_path / "r.json"
    assert eval_script.main(["--parquet-dir", str(demo_eval_dir), "--checkpoint", str(tiny_clap_dir), "--device",
                             "cpu", "--class-labels", str(tiny_class_labels), "--num-samples", "40",
                             "--projection-checkpoint", str(ckpt), "--output-json", str(out), "--no-cache"]) == 0
    block = json.loads(out.read_text())["models"]["w-hyperbolic"]
    usage = block["ball_usage"]
    assert block["model_info"]["effective_temperature"] == pytest.approx(0.5 * math.sqrt(c))
    if scale == 1.0:
        expected = math.tanh(math.sqrt(c))
        for side in ("audio", "text"):
            r = usage[side]["relative_radius"]
            assert r["min"] == pytest.approx(expected, abs=1e-5) and r["max"] == pytest.approx(expected, abs=1e-5)
            assert usage[side]["on_clip_sphere"] == 0.0
        assert usage["top1_same_as_cosine"] == 1.0
        assert usage["rank_corr_with_cosine"] == pytest.approx(1.0, abs=1e-6)
    else:
        assert usage["audio"]["on_clip_sphere"] == 1.0 and usage["text"]["on_clip_sphere"] == 1.0
        assert usage["audio"]["relative_radius"]["min"] == pytest.approx(0.9, abs=ON_SPHERE_TOL)
    assert json.loads(out.read_text())["models"]["clap_cosine"]["ball_usage"] is None


def _train_argv(train_dir, clap_dir, out, labels, *extra):
    return train_argv(train_dir, clap_dir, out, *extra, class_labels=labels, no_cache=True)


@pytest.mark.parametrize("flags, message", [
    (["--learn-c", "--learn-temperature"], "direction the loss cannot see"),
    (["--batch-size", "1"], "--negatives all-classes"),
    (["--batch-size", "1", "--text-pairing", "first-label"], "first-label"),
    (["--init-radius", "0.95"], "--init-radius"),
])
def test_training_refuses_configurations_that_cannot_learn(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--parquet-dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_learn_c_alone_keeps_the_temperature_fixed():
    args = train_script.parse_args(["--parquet-dir", "x", "--learn-c"])
    assert args.learn_c and not args.learn_temperature
    assert train_script.parse_args(["--parquet-dir", "x"]).learn_temperature


@pytest.mark.slow
def test_batch_of_one_trains_with_all_class_negatives(tmp_path, tiny_clap_dir, demo_train_dir, tiny_class_labels):
    out = tmp_path / "run"
    assert train_script.main(_train_argv(demo_train_dir, tiny_clap_dir, out, tiny_class_labels, "--batch-size", "1",
                                         "--negatives", "all-classes", "--num-samples", "24")) == 0
    setup = json.loads((out / "setup.json").read_text())
    rows = setup["history"]
    assert all(r["train_loss"] > 0.1 for r in rows)
    assert rows[0]["val_loss"] != rows[1]["val_loss"]  # it learns
    for r in rows:  # the epoch row carries the curvature honestly and the ball usage
        assert r["effective_temperature"] == pytest.approx(r["temperature"] * math.sqrt(r["c"]), rel=1e-6)
        assert 0 < r["val_audio_radius_median"] < 1 and 0 <= r["val_text_on_clip_sphere"] <= 1
    ckpt = torch.load(out / "projection_epoch_2.pth", weights_only=False)
    assert ckpt["effective_temperature"] == pytest.approx(rows[-1]["effective_temperature"])
    assert ckpt["clip_mode"] == "inward"


def test_resuming_a_run_from_before_the_new_recipe_keeps_its_clip_rule(tmp_path):
    """A run whose setup.json predates clip_mode/init_radius/negatives resumes with the rules it
    trained with (straight-through clip, Xavier scale, in-batch negatives), not today's defaults."""
    from hyperbolic.config import TrainConfig
    from hyperbolic.training.run_folder import resume_settings
    config = TrainConfig(parquet_dir="data", learning_rate=1e-4, temperature=1.0, learn_temperature=False).to_dict()
    for key in ("clip_mode", "init_radius", "negatives"):
        config.pop(key)
    (tmp_path / "setup.json").write_text(json.dumps({"config": config, "history": []}))
    cfg, c_values, temperatures = resume_settings(tmp_path, {})
    assert (cfg.clip_mode, cfg.init_radius, cfg.negatives) == ("straight-through", None, "in-batch")
    assert (cfg.learning_rate, cfg.learn_temperature, temperatures) == (1e-4, False, [1.0])
