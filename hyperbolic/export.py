"""Export a trained projector with its similarity head to ONNX, for serving without this codebase.

    python -m hyperbolic.export checkpoints_hyperbolic/best_projection_epoch_7.pth projector.onnx
    python train_hyperbolic_clap.py ... --export-onnx projector.onnx     # the best checkpoint, after training

The graph takes CLAP embeddings, as ``FrozenClap`` gives them (L2-normalised float32):

    audio_emb  (N, D)  audio CLAP embeddings
    text_emb   (M, D)  prompt CLAP embeddings (the checkpoint's prompt template, in the metadata)
    scores     (N, M)  -d_c(proj(a), proj(t)) / tau   (hyperbolic; cos / tau for euclidean;
                                                    -|proj(a) - proj(t)|^2 / tau for euclidean-distance)

N and M are dynamic. The projection (Linear, tangent clip, expmap0) and the distance are
``hyperbolic.model.projector`` / ``hyperbolic.geometry.poincare`` traced as they are, in float32, with ``c`` and
``tau`` of the checkpoint as constants: the numerics are the evaluation's, not a re-derivation.
The projection maps the D_in = ``embed_dim`` CLAP size to ``proj_dim`` (D). The model's metadata
holds geometry, c, temperature, clip_r, embed_dim, proj_dim, prompt_template, epoch and the source
checkpoint.

The exporter is PyTorch's TorchScript one (``dynamo=False``: the dynamo exporter needs
onnxscript). It has no symbolic for ``aten::asinh`` (the distance is computed through asinh, see
``poincare.pairwise_dist``), so one is registered that maps it to ONNX's ``Asinh`` (opset >= 9), the same
function. Every export is checked with onnxruntime (when installed) against the PyTorch head.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE
from hyperbolic.errors import ExportError, UserError  # noqa: F401 (re-exported)
from hyperbolic.model.checkpoint import read_projection
from hyperbolic.model.projector import Projector, similarity

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MIN_OPSET = 9  # ONNX Asinh
# onnxruntime and PyTorch order float32 reductions differently, so scores agree to a few ulps of
# their size: the check is |onnx - torch| <= VERIFY_TOL * (1 + |torch|).
VERIFY_TOL = 1e-5


OUTPUT_TEXT = {"hyperbolic": "scores (N, M) = -d_c(proj(a), proj(t)) / tau",
               "euclidean": "scores (N, M) = cos(proj(a), proj(t)) / tau",
               "euclidean-distance": "scores (N, M) = -|proj(a) - proj(t)|^2 / tau"}


class SimilarityHead(nn.Module):
    """(N, D) audio and (M, D) prompt CLAP embeddings -> (N, M) scores of a trained projector."""

    def __init__(self, projector: Projector, *, geometry: str, c: float, temperature: float):
        super().__init__()
        self.projector, self.geometry, self.c, self.temperature = projector, geometry, c, temperature

    def forward(self, audio_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        a = self.projector(audio_emb, c=self.c)
        t = self.projector(text_emb, c=self.c)
        return similarity(a, t, geometry=self.geometry, c=self.c, temperature=self.temperature)


def _asinh(g, x):
    return g.op("Asinh", x)


def register_symbolics(opset: int) -> None:
    """aten::asinh -> ONNX Asinh, for the TorchScript exporter (idempotent)."""
    torch.onnx.register_custom_op_symbolic("aten::asinh", _asinh, MIN_OPSET)


def head_from_checkpoint(checkpoint: str | Path) -> tuple[SimilarityHead, dict]:
    """The head of a projection checkpoint (train_hyperbolic_clap.py's or the earlier scripts')
    and the metadata stored with the export."""
    model = read_projection(checkpoint)
    head = SimilarityHead(model.projector, geometry=model.geometry, c=model.c,
                          temperature=model.temperature).eval()
    template = model.raw["prompt_template"] if "prompt_template" in model.raw else DEFAULT_PROMPT_TEMPLATE
    meta = {"geometry": model.geometry, "c": model.c, "temperature": model.temperature,
            "clip_r": model.projector.clip_r, "embed_dim": model.embed_dim, "proj_dim": model.proj_dim,
            "prompt_template": template,
            "epoch": model.raw.get("epoch"), "source_checkpoint": str(Path(checkpoint).resolve()),
            "inputs": "audio_emb (N, D), text_emb (M, D): L2-normalised float32 CLAP embeddings",
            "output": OUTPUT_TEXT[model.geometry]}
    return head, meta


def _sample_inputs(dim: int, n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(m, dim, generator=g), dim=-1)
    return a, t


def verify(path: str | Path, head: SimilarityHead, *, n: int = 9, m: int = 5, seed: int = 1) -> float | None:
    """Max of |onnxruntime - PyTorch| / (1 + |PyTorch|) over the scores of random unit inputs, of
    sizes other than the traced ones; None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed; %s was not checked (pip install onnxruntime)", path)
        return None
    dim = head.projector.linear.in_features
    a, t = _sample_inputs(dim, n, m, seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["scores"], {"audio_emb": a.numpy(), "text_emb": t.numpy()})[0]
    with torch.no_grad():
        want = head(a, t).numpy()
    return float((np.abs(got - want) / (1 + np.abs(want))).max())


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                check: bool = True) -> dict:
    """Write the ONNX model of ``checkpoint`` to ``out`` (atomically); return its metadata plus
    ``max_error`` (see ``verify``; None if not checked). ValueError if the check fails."""
    import onnx

    from hyperbolic.outputs import atomic_write_bytes
    if opset < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET} (ONNX Asinh); got {opset}")
    head, meta = head_from_checkpoint(checkpoint)
    register_symbolics(opset)
    a, t = _sample_inputs(meta["embed_dim"], 3, 2, seed=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # c and tau are constants of the checkpoint: the tracer's "registered as constants" notes are
        # what is meant; the legacy-exporter deprecation note is the point of dynamo=False.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(head, (a, t), buffer, dynamo=False, opset_version=opset,
                          input_names=["audio_emb", "text_emb"], output_names=["scores"],
                          dynamic_axes={"audio_emb": {0: "num_clips"}, "text_emb": {0: "num_prompts"},
                                        "scores": {0: "num_clips", 1: "num_prompts"}})
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    path = atomic_write_bytes(out, model.SerializeToString())
    diff = verify(path, head) if check else None
    if diff is not None and diff > VERIFY_TOL:
        raise ExportError(f"{path}: onnxruntime scores differ from PyTorch's by {diff:.3g} x (1 + |score|) "
                         f"(> {VERIFY_TOL:g})")
    log.info("exported %s -> %s (opset %d; onnxruntime vs torch: max |diff| / (1 + |score|) %s)", checkpoint,
             path, opset, "not checked" if diff is None else f"{diff:.2g}")
    return {**meta, "path": str(path), "opset": opset, "max_error": diff}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hyperbolic.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="projection checkpoint (.pth)")
    p.add_argument("out", help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--no-check", action="store_true", help="do not compare onnxruntime with PyTorch")
    args = p.parse_args(argv)
    if args.opset < MIN_OPSET:
        p.error(f"--opset must be >= {MIN_OPSET} (ONNX Asinh) (got {args.opset})")
    if not args.out.endswith(".onnx"):
        p.error(f"the output must name a .onnx file (got {args.out!r})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from hyperbolic.outputs import setup_logging
    setup_logging()
    try:
        info = export_onnx(args.checkpoint, args.out, opset=args.opset, check=not args.no_check)
    except UserError as err:
        log.error("%s", err)
        return 2
    error = "not checked" if info["max_error"] is None else f"{info['max_error']:.2g}"
    print(f"ONNX model written to {info['path']} (onnxruntime vs torch: max |diff| / (1 + |score|) {error})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
