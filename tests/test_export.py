"""ONNX export (``python -m hyperbolic.export``, ``--export-onnx``): scores equal the evaluation's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_hyperbolic_clap as train_script
from hyperbolic.evaluation.scoring import load_projection
from hyperbolic.model.projector import Projector


def _checkpoint(path: Path, *, geometry: str, c: float, temperature: float, dim: int = 32, scale: float = 1.0):
    torch.manual_seed(0)
    projector = Projector(dim, geometry=geometry, clip_r=0.9)
    with torch.no_grad():
        projector.linear.weight.mul_(scale)  # scale 20: most points land on the clip radius
        projector.linear.bias.normal_(0, 0.1)
    torch.save({"epoch": 3, "projection_state_dict": projector.state_dict(), "c": c, "temperature": temperature,
                "embed_dim": dim, "geometry": geometry, "clip_r": 0.9, "prompt_template": "A {label} sound.",
                "config": {}}, path)
    return path


@pytest.mark.parametrize("geometry, c, temperature, scale", [
    ("hyperbolic", 1.0, 1.0, 1.0), ("hyperbolic", 0.3, 0.07, 20.0), ("euclidean", 1.0, 0.1, 1.0)])
@pytest.mark.slow
def test_onnx_scores_match_evaluation(tmp_path, geometry, c, temperature, scale):
    import onnx
    import onnxruntime as ort

    from hyperbolic.export import main as export_main
    ckpt = _checkpoint(tmp_path / "best.pth", geometry=geometry, c=c, temperature=temperature, scale=scale)
    out = tmp_path / "head.onnx"
    assert export_main([str(ckpt), str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["geometry"] == geometry and float(meta["c"]) == c and meta["prompt_template"] == "A {label} sound."
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_projection(ckpt)
    g = torch.Generator().manual_seed(5)
    for n, m in ((1, 527), (64, 3)):  # dynamic sizes, none of them the traced ones
        a = F.normalize(torch.randn(n, 32, generator=g), dim=-1)
        t = F.normalize(torch.randn(m, 32, generator=g), dim=-1)
        got = session.run(["scores"], {"audio_emb": a.numpy(), "text_emb": t.numpy()})[0]
        want = model.scores(a, t)  # exactly what test_clap_modelscope.py scores with
        assert got.shape == (n, m)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_script_exports_the_best_checkpoint(tmp_path, tiny_clap_dir, demo_train_dir):
    import onnx
    out = tmp_path / "run"
    argv = ["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--output-dir", str(out), "--epochs", "2", "--num-workers", "0", "--export-onnx", str(tmp_path / "p.onnx")]
    assert train_script.main(argv) == 0
    best = json.loads((out / "setup.json").read_text())["summary"]["best_checkpoint"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    assert meta["source_checkpoint"] == str(Path(best).resolve())
