"""``--proj-dim D``: the projector Linear(d, D) in training, checkpoints, evaluation, resume, export,
the report and the plots; ``--init-radius`` means the same at every D."""

import json
import math

import numpy as np
import pytest
import torch

import test_clap_modelscope as test_script
import train_hyperbolic_clap as train_script
from hyperbolic import report
from hyperbolic.config import TrainConfig
from hyperbolic.model.checkpoint import CheckpointError, read_projection, read_resume
from hyperbolic.model.projector import Projector
from hyperbolic.training import train as train_module
from hyperbolic.training.trainer import Trainer


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def _initial_norms(geometry, proj_dim, *, init_radius, c, d=512):
    """|u| = |W x + b| of 201 unit clips under the layer a Trainer starts from, in numpy float64."""
    cfg = TrainConfig(parquet_dir="unused", geometry=geometry, proj_dim=proj_dim, init_radius=init_radius, c=c,
                      seed=7)
    audio = _unit(201, d, seed=1)  # odd: one median, the same in torch and numpy
    trainer = Trainer(cfg, d, _unit(5, d, seed=2), [0, 1, 2, 3, 4], init_audio=audio)
    W = trainer.projector.linear.weight.detach().double().numpy()
    b = trainer.projector.linear.bias.detach().double().numpy()
    assert W.shape == (proj_dim, d)
    return np.linalg.norm(audio.double().numpy() @ W.T + b, axis=1), trainer


@pytest.mark.parametrize("c", [1.0, 0.3])
@pytest.mark.parametrize("proj_dim", [2, 16, 512])
def test_init_radius_puts_the_median_clip_at_R_whatever_D(proj_dim, c):
    R = 0.5
    norms, trainer = _initial_norms("hyperbolic", proj_dim, init_radius=R, c=c)
    # relative radius of expmap0(u) is tanh(sqrt(c)|u|) (closed form, not the code's expmap0)
    assert np.median(np.tanh(math.sqrt(c) * norms)) == pytest.approx(R, abs=1e-6)
    points = trainer.projector(_unit(201, 512, seed=1), c=c).detach().double()
    assert float(np.median(points.norm(dim=-1).numpy() * math.sqrt(c))) == pytest.approx(R, abs=1e-6)
    # euclidean-distance starts from the same tangent norm artanh(R) / sqrt(c)
    norms, _ = _initial_norms("euclidean-distance", proj_dim, init_radius=R, c=c)
    assert np.median(norms) == pytest.approx(math.atanh(R) / math.sqrt(c), rel=1e-6)


def test_without_init_radius_the_scale_depends_on_D():
    """What --init-radius corrects: Xavier's output norm is about sqrt(2D / (d + D))."""
    small, _ = _initial_norms("hyperbolic", 2, init_radius=None, c=1.0)
    large, _ = _initial_norms("hyperbolic", 512, init_radius=None, c=1.0)
    ratio = np.median(large) / np.median(small)
    assert ratio == pytest.approx(math.sqrt(512 / 2 * (512 + 2) / (512 + 512)), rel=0.35)
    assert ratio > 5


def test_checkpoint_without_proj_dim_loads_square(tmp_path):
    """Checkpoints written before --proj-dim (and the earlier scripts') have no key: D = d."""
    path = tmp_path / "best_projection_epoch_1.pth"
    p = Projector(8)
    torch.save({"epoch": 1, "projection_state_dict": p.state_dict(), "c": 1.0, "temperature": 0.1,
                "embed_dim": 8, "geometry": "euclidean", "config": {"seed": 1}}, path)
    read = read_projection(path, embed_dim=8)
    assert (read.embed_dim, read.proj_dim, read.geometry) == (8, 8, "euclidean")


def test_checkpoint_whose_proj_dim_contradicts_its_weight_is_refused(tmp_path):
    path = tmp_path / "best_projection_epoch_1.pth"
    torch.save({"projection_state_dict": Projector(8, proj_dim=3).state_dict(), "proj_dim": 5}, path)
    with pytest.raises(CheckpointError, match=r"best_projection_epoch_1\.pth: proj_dim 5 does not match"):
        read_projection(path)
    torch.save({"projection_state_dict": Projector(8, proj_dim=3).state_dict(), "proj_dim": 3}, path)
    assert read_projection(path).proj_dim == 3


def test_resume_refuses_another_proj_dim(tmp_path):
    path = tmp_path / "projection_epoch_1.pth"
    torch.save({"generator_state": torch.Generator().get_state(), "embed_dim": 8, "split": {},
                "projection_state_dict": Projector(8, proj_dim=3).state_dict(), "config": {"epochs": 2}}, path)
    assert read_resume(path, {"epochs": 2, "proj_dim": 3}, {}, 8)["embed_dim"] == 8
    with pytest.raises(CheckpointError, match="projects to 3 dimensions, this run asks for --proj-dim 8"):
        read_resume(path, {"epochs": 2}, {}, 8)  # a run before --proj-dim: D = d = 8


# ------------------------------------------------------------------ end to end, every consumer

RUNS = {"hyperbolic": 2, "euclidean-distance": 3, "euclidean": 4}


def _argv(data, clap, out, geometry, *extra):
    return ["--parquet-dir", str(data), "--checkpoint", str(clap), "--device", "cpu", "--output-dir", str(out),
            "--epochs", "2", "--batch-size", "8", "--seed", "3", "--geometry", geometry,
            "--proj-dim", str(RUNS[geometry]), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clap_dir, demo_train_dir):
    root = tmp_path_factory.mktemp("proj_dim_runs")
    for geometry in RUNS:
        assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, root / geometry, geometry)) == 0
    return root


@pytest.mark.slow
def test_training_writes_D_into_the_checkpoint(runs, tiny_clap):
    for geometry, D in RUNS.items():
        ckpt = torch.load(runs / geometry / "projection_epoch_2.pth", weights_only=False)
        assert ckpt["proj_dim"] == D and ckpt["config"]["proj_dim"] == D
        assert ckpt["projection_state_dict"]["linear.weight"].shape == (D, tiny_clap.embed_dim)
        assert ckpt["embed_dim"] == tiny_clap.embed_dim
        assert (runs / geometry / "training_curves.png").is_file()


@pytest.mark.slow
def test_evaluation_report_and_plots_follow_D(runs, tmp_path, tiny_clap_dir, demo_eval_dir, classes_file):
    result = tmp_path / "r.json"
    assert test_script.main(["--parquet-dir", str(demo_eval_dir), "--checkpoint", str(tiny_clap_dir), "--device",
                             "cpu", "--class-labels", str(classes_file), "--output-json", str(result), "--plots",
                             "--projection-checkpoint", *(str(runs / g) for g in RUNS)]) == 0
    blocks = json.loads(result.read_text())["models"]
    by_geometry = {b["model_info"].get("geometry", "cosine"): b for b in blocks.values()}
    for geometry, D in RUNS.items():
        block = by_geometry[geometry]
        assert block["model_info"]["proj_dim"] == D
        assert len(block["predictions"][0]["top_k_predictions"]) == 10 and block["metrics"]["mAP"] > 0
    assert by_geometry["hyperbolic"]["ball_usage"]["audio"]["relative_radius"]["max"] < 1
    assert by_geometry["euclidean-distance"]["ball_usage"] is None
    assert by_geometry["euclidean-distance"]["ball_usage_skipped"].startswith("no ball")
    disk = by_geometry["hyperbolic"]["plots"]["poincare_disk"]
    assert disk and (tmp_path / disk.rsplit("/", 1)[-1]).is_file()
    rows = report.build_report([result]).rows
    assert {(r["geometry"], r["proj_dim"]) for r in rows} == {("cosine", "-"), *((g, str(D)) for g, D in RUNS.items())}


@pytest.mark.slow
def test_resume_at_D_equals_the_uninterrupted_run(runs, tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    geometry = "euclidean-distance"
    out = tmp_path / "interrupted"
    original, writes = train_module.atomic_write_json, []

    def crash_after_one_epoch(path, obj):
        original(path, obj)
        writes.append(path)
        if len(writes) == 2:  # setup.json at the start, then after epoch 1
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(train_module, "atomic_write_json", crash_after_one_epoch)
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, geometry)) == 130
    monkeypatch.setattr(train_module, "atomic_write_json", original)
    assert train_script.main(["--resume", str(out)]) == 0
    a = torch.load(runs / geometry / "projection_epoch_2.pth", weights_only=False)["projection_state_dict"]
    b = torch.load(out / "projection_epoch_2.pth", weights_only=False)["projection_state_dict"]
    assert b["linear.weight"].shape[0] == RUNS[geometry]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _hyperbolic_by_hand(a, t, W, b, *, c, clip_r, tau):
    """Closed form: clip, expmap0, arcosh distance; float64 numpy."""
    def project(x):
        u = x @ W.T + b
        n = np.linalg.norm(u, axis=1, keepdims=True)
        u = u * np.minimum(1.0, math.atanh(clip_r) / math.sqrt(c) / n)
        n = np.linalg.norm(u, axis=1, keepdims=True)
        return np.tanh(math.sqrt(c) * n) * u / (math.sqrt(c) * n)
    x, y = project(a), project(t)
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    den = (1 - c * (x ** 2).sum(1))[:, None] * (1 - c * (y ** 2).sum(1))[None, :]
    return -np.arccosh(1 + 2 * c * sq / den) / math.sqrt(c) / tau


@pytest.mark.slow
def test_onnx_export_at_D_matches_the_closed_form(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from hyperbolic.export import export_onnx
    for geometry, D in RUNS.items():
        ckpt = torch.load(runs / geometry / "projection_epoch_2.pth", weights_only=False)
        W = ckpt["projection_state_dict"]["linear.weight"].double().numpy()
        b = ckpt["projection_state_dict"]["linear.bias"].double().numpy()
        info = export_onnx(runs / geometry / "projection_epoch_2.pth", tmp_path / f"{geometry}.onnx")
        assert info["proj_dim"] == D and info["max_error"] < 1e-5
        a, t = _unit(9, W.shape[1], seed=11), _unit(5, W.shape[1], seed=12)
        session = ort.InferenceSession(str(tmp_path / f"{geometry}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["scores"], {"audio_emb": a.numpy(), "text_emb": t.numpy()})[0]
        A, T, tau = a.double().numpy(), t.double().numpy(), ckpt["temperature"]
        if geometry == "hyperbolic":
            want = _hyperbolic_by_hand(A, T, W, b, c=ckpt["c"], clip_r=ckpt["clip_r"], tau=tau)
        elif geometry == "euclidean-distance":
            pa, pt = A @ W.T + b, T @ W.T + b
            want = -((pa[:, None, :] - pt[None, :, :]) ** 2).sum(-1) / tau
        else:
            pa, pt = A @ W.T + b, T @ W.T + b
            pa, pt = pa / np.linalg.norm(pa, axis=1, keepdims=True), pt / np.linalg.norm(pt, axis=1, keepdims=True)
            want = pa @ pt.T / tau
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
