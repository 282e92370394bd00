"""Flags both entry scripts share: the data, the frozen CLAP and the embedding stage."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex

from hyperbolic.config import DEFAULT_CHECKPOINT, DEFAULT_CLASS_LABELS, PRECISIONS, default_num_workers


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, once: ``(default: X)`` is added unless the help
    already says what the default is (an option whose default is None must say it in words, since
    "None" tells a reader nothing), and on-off flags (off by default) get none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.default is None or action.default is argparse.SUPPRESS
                or action.nargs == 0):
            return text
        if isinstance(action.default, (list, tuple)):  # nargs="+": "1.0", not "[1.0]"
            return text + f" (default: {' '.join(str(v) for v in action.default)})"
        return text + " (default: %(default)s)"


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def command_line(script: str, cfg, parser: argparse.ArgumentParser, *, extra: list[str] = (),
                 always: tuple[str, ...] = ()) -> str:
    """``python SCRIPT --flag value ...`` that gives ``cfg``: one flag of ``parser`` (the script's)
    per dataclass field whose value differs from the flag's default, then ``extra``; shell-quoted.
    An on/off flag whose default is decided after parsing (``--x/--no-x``, default None) is always
    written out; another flag whose parser default is None is compared with the field's default.
    Fields without a flag are left out; the fields named in ``always`` are written even at their
    default."""
    actions = {a.dest: a for a in parser._actions}
    args = []
    for f in dataclasses.fields(cfg):
        action, value = actions.get(f.name), getattr(cfg, f.name)
        if action is None or not action.option_strings:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            if action.default is None or value != action.default:
                args.append(flag if value else "--no-" + flag[2:])
            continue
        default = action.default
        if default is None and f.default is not dataclasses.MISSING:  # decided after parsing, as the dataclass does
            default = f.default
        if isinstance(default, list) and not isinstance(value, list):
            default = default[0] if len(default) == 1 else default
        if (value == default and f.name not in always) or value is None or (action.nargs == 0 and not value):
            continue
        args += [flag] if action.nargs == 0 else [flag, *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return " ".join(shlex.quote(a) for a in ["python", script, *args, *extra])


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags ``argv`` gives, even those given their default value:
    ``parser`` (a fresh one: its defaults are changed) parses ``argv`` with every default
    replaced by a marker."""
    unset = object()
    parser.set_defaults(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    return {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}


def num_samples_arg(text: str) -> int | None:
    """``--num-samples``: a count of rows, or ``all`` / ``0`` for every row (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of rows or 'all' (got {text!r})") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 or 'all': every row) (got {n})")
    return None if n == 0 else n


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
    files = ("class list: .json (index -> name), .csv (index, mid, display_name) or one name per line")
    p.add_argument("--class-labels", default=str(DEFAULT_CLASS_LABELS), metavar="PATH" if per_rank else "PATH|from-data",
                   help=files + ("" if per_rank else "; or from-data: the sorted distinct labels of --label-column "
                                 "in the rows read (ESC-50: --label-column category)")
                        + " (default: the 527 AudioSet classes, CLAP/class_labels/audioset_class_labels_indices.json)")
    p.add_argument("--label-column", default="human_labels",
                   help="parquet column holding each clip's labels: class names (human_labels) or AudioSet "
                        "machine ids such as /m/09x0r (labels) (default: human_labels)")
    p.add_argument("--embed-batch-size", type=int, default=32, help="clips per CLAP forward")
    if per_rank:
        p.add_argument("--num-workers", type=int, default=None,
                       help="decoding worker processes per rank (default: spare cores / ranks on this machine)")
    else:
        p.add_argument("--num-workers", type=int, default=default_num_workers(),
                       help="decoding worker processes (0: decode in the main process)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default: $HYPERBOLIC_CLAP_CACHE, else ~/.cache/hyperbolic_clap)"
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
        p.add_argument("--verbose", action="store_true", help="debug-level log")
        return
    p.add_argument("--text-column", nargs="+", default=None, metavar="COL",
                   help="caption column(s): a caption (string) or several (list) per row. Evaluation: caption "
                        "retrieval (t2a/a2t R@k, mAP@10); training: captions are the clip's positives (default: none, "
                        "class labels)")
    p.add_argument("--clip-id-column", default="video_id",
                   help="with --text-column: rows sharing this value are one clip with all their captions, "
                        "its audio embedded once (a file without the column: each row is a clip)")
    p.add_argument("--verbose", action="store_true", help="debug-level log")


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
