"""Flags both entry scripts share: the data, the frozen CLAP and the embedding stage."""

from __future__ import annotations

import argparse
import math

from hyperbolic.config import DEFAULT_CHECKPOINT, DEFAULT_CLASS_LABELS, PRECISIONS, default_num_workers


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def add_embedding_args(p: argparse.ArgumentParser, *, per_rank: bool = False) -> None:
    """The embedding-stage flags. ``per_rank``: as ``hyperbolic.distributed`` declares them, for
    ranks that default to the CPU (``cuda``: each rank its own GPU), share a machine's cores
    (``--num-workers`` unset: resolved per rank at run time) and only fill the audio and
    class-prompt cache (no ``--no-cache``, no caption flags)."""
    if per_rank:
        p.add_argument("--device", default="cpu",
                       help="cpu, or cuda (each rank takes cuda:LOCAL_RANK), or an explicit cuda:N")
    else:
        p.add_argument("--device", default="cuda:0", help="torch device; falls back to cpu without CUDA")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="CLAP model folder, or a model id looked up in the ModelScope cache")
    p.add_argument("--class-labels", default=str(DEFAULT_CLASS_LABELS),
                   help="class names: a .json/.csv/text file" if per_rank else
                        "class names: a .json/.csv/text file, or from-data: the sorted distinct labels of "
                        "--label-column in the rows read (ESC-50: --label-column category)")
    p.add_argument("--label-column", default="human_labels")
    p.add_argument("--embed-batch-size", type=int, default=32, help="clips per CLAP forward")
    if per_rank:
        p.add_argument("--num-workers", type=int, default=None,
                       help="decoding worker processes per rank (default: spare cores / ranks on this machine)")
    else:
        p.add_argument("--num-workers", type=int, default=default_num_workers(),
                       help="decoding worker processes (0: decode in the main process)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default $HYPERBOLIC_CLAP_CACHE or ~/.cache/hyperbolic_clap)"
                        + ("; the same for every rank" if per_rank else ""))
    if not per_rank:
        p.add_argument("--no-cache", action="store_true", help="compute every embedding, read and write no cache")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="CLAP forward: fp32, bf16 (CPU or GPU), fp16 (CUDA only); the geometry stays fp32")
    p.add_argument("--segment", type=float, default=None, metavar="SECONDS",
                   help="embed whole recordings: mean of the embeddings of windows this long (<= 10), "
                        "the last one aligned to the end (default: the first 10 s)")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="seconds between --segment windows (default: --segment, no overlap)")
    if per_rank:  # the ranks embed audio and class prompts; captions are embedded by the scripts
        p.add_argument("--verbose", action="store_true")
        return
    p.add_argument("--text-column", nargs="+", default=None, metavar="COL",
                   help="caption column(s): a caption (string) or several (list) per row. Evaluation: caption "
                        "retrieval (t2a/a2t R@k, mAP@10); training: captions are the clip's positives")
    p.add_argument("--clip-id-column", default="video_id",
                   help="with --text-column: rows sharing this value are one clip with all their captions, "
                        "its audio embedded once (a file without the column: each row is a clip)")
    p.add_argument("--verbose", action="store_true")


def embedding_arg_errors(args: argparse.Namespace) -> list[str]:
    """Messages for invalid shared flags, each naming the flag and the fix."""
    from data.audio import segmenting_from
    errors = [message for failed, message in [
        (args.embed_batch_size < 1, f"--embed-batch-size must be >= 1 (got {args.embed_batch_size})"),
        (args.num_workers is not None and args.num_workers < 0,
         f"--num-workers must be >= 0 (got {args.num_workers})"),
        (args.precision == "fp16" and args.device == "cpu",
         "--precision fp16 needs a CUDA --device; on the CPU use --precision bf16 or fp32"),
    ] if failed]
    try:
        segmenting_from(args.segment, args.hop)
    except ValueError as err:
        errors.append(str(err))
    return errors
