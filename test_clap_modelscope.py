"""Zero-shot classification with a frozen CLAP: plain cosine, a trained projector, or several
checkpoints compared with plain CLAP on the same clips (see README.md)."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from hyperbolic.cli import HelpFormatter, add_embedding_args, embedding_arg_errors, num_samples_arg, positive
from hyperbolic.config import EvalConfig
from hyperbolic.outputs import setup_logging

log = logging.getLogger("test_clap_modelscope")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--parquet-dir", required=True, help="folder of AudioSet-style .parquet files (required)")
    p.add_argument("--projection-checkpoint", nargs="+", default=None, metavar="PATH",
                   help="projector checkpoint(s): a .pth from training or from the earlier scripts, or a "
                        "training run's --output-dir (its best checkpoint; a sweep's: the winner's). One path "
                        "with --use-hyperbolic: that projector alone. Otherwise (one path without "
                        "--use-hyperbolic, or several paths): plain CLAP and every checkpoint compared on "
                        "the same clips, one block per model under 'models' (default: plain CLAP only)")
    p.add_argument("--num-samples", type=num_samples_arg, default=100, metavar="N|all",
                   help="evaluate the first N rows of the folder; 'all' or 0: every row (the log and "
                        "test_info say how many rows the folder holds and how many were used)")
    p.add_argument("--output-json", default=None,
                   help="results file (default: result/clap_modelscope_results_<time>.json); never overwritten")
    p.add_argument("--top-k", type=int, default=10, help="predictions listed per clip")
    p.add_argument("--c", type=float, default=None,
                   help="curvature; taken from the checkpoint, a differing value is reported (default: the "
                        "checkpoint's; 1.0 for a checkpoint without one)")
    p.add_argument("--temperature", type=float, default=None,
                   help="temperature; taken from the checkpoint, a differing value is reported (default: the "
                        "checkpoint's; 1.0 for a checkpoint without one)")
    p.add_argument("--use-hyperbolic", action="store_true",
                   help="with one --projection-checkpoint, score with that projector only (single-model "
                        "layout); with several it changes nothing (they are always compared)")
    p.add_argument("--legacy-distance", action="store_true",
                   help="hyperbolic checkpoints: the earlier scripts' projection (|y| rescaled to <= 0.9) "
                        "and distance (c outside the fraction), to reproduce their numbers")
    p.add_argument("--prompt-template", default=None,
                   help="prompt for plain CLAP (default: 'This is a sound of {label}.'); checkpoints use their own")
    p.add_argument("--set-k", type=int, default=5, help="predicted set = top-k classes, for precision/recall/F1")
    p.add_argument("--threshold", type=float, default=None,
                   help="predicted set = classes scoring >= threshold (default: none, the --set-k rule)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95%% bootstrap intervals of mAP and acc@1 from N resamples of the clips (0: none)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--save-scores", default=None, metavar="PATH.npz",
                   help="also write the (N, C) score matrix of every model, the ground truth, class names "
                        "and clip ids; never overwritten (default: not written)")
    p.add_argument("--ontology", default=None, metavar="PATH",
                   help="AudioSet ontology.json: adds a 'hierarchy' block per model (norm vs depth, "
                        "mistake severity, entailment-cone consistency) and colours the --plots disk by "
                        "top-level category (default: none)")
    p.add_argument("--expand-ancestors", action="store_true",
                   help="ground truth closed under the ontology: a clip is also positive for every class "
                        "above one of its labels, for every metric (recorded as test_info.ground_truth)")
    p.add_argument("--plots", action="store_true",
                   help="write PNGs next to the results JSON: prompts on the Poincare disk (hyperbolic "
                        "models) and best/worst per-class AP")
    add_embedding_args(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = args.projection_checkpoint or []
    checks = [
        (args.top_k < 1, f"--top-k must be >= 1 (got {args.top_k})"),
        (args.set_k < 1, f"--set-k must be >= 1 (got {args.set_k})"),
        (args.c is not None and not positive(args.c), f"--c must be > 0 and finite (got {args.c})"),
        (args.temperature is not None and not positive(args.temperature),
         f"--temperature must be > 0 and finite (got {args.temperature})"),
        (args.use_hyperbolic and not paths, "--use-hyperbolic needs --projection-checkpoint PATH"),
        (args.expand_ancestors and not args.ontology,
         "--expand-ancestors needs --ontology PATH (the ontology whose ancestors are added)"),
        (args.legacy_distance and not paths, "--legacy-distance needs --projection-checkpoint PATH"),
        (args.prompt_template is not None and "{label}" not in args.prompt_template,
         f"--prompt-template must contain {{label}} (got {args.prompt_template!r})"),
        (args.bootstrap < 0, f"--bootstrap must be >= 0 (got {args.bootstrap})"),
        (args.threshold is not None and not math.isfinite(args.threshold),
         f"--threshold must be a finite number (got {args.threshold})"),
        (args.save_scores is not None and not args.save_scores.endswith(".npz"),
         f"--save-scores must name a .npz file (got {args.save_scores!r})"),
        (len(set(paths)) != len(paths), "--projection-checkpoint lists a path twice; give each checkpoint once"),
        *[(args.text_column and value, f"{flag} is for class labels; caption retrieval (--text-column) "
                                       "does not use it") for flag, value in (
            ("--ontology", args.ontology), ("--expand-ancestors", args.expand_ancestors), ("--plots", args.plots),
            ("--threshold", args.threshold is not None))],
    ]
    for message in [m for failed, m in checks if failed] + embedding_arg_errors(args):
        parser.error(message)
    return args


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    fields = EvalConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    paths = args.projection_checkpoint or []
    values["projection_checkpoints"] = list(paths)
    return EvalConfig(**values)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from data.class_list import resolve_class_names
    from hyperbolic.errors import UserError
    from hyperbolic.evaluate import evaluate, format_metrics_table
    cfg = config_from_args(args)
    try:
        num_classes = None if cfg.text_column else len(resolve_class_names(
            cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column, limit=cfg.num_samples))
        if num_classes is not None and args.top_k > num_classes:
            build_parser().error(f"--top-k must be <= the number of classes in --class-labels "
                                 f"({num_classes}) (got {args.top_k})")
        results, path = evaluate(cfg)
    except UserError as err:
        log.error("%s", err)
        return 2
    if results["test_info"].get("task") == "retrieval":
        from hyperbolic.retrieval import format_retrieval_table
        print(format_retrieval_table(results))
    else:
        print(format_metrics_table(results))
    print(f"Results saved to: {path}")
    if results["test_info"]["scores_file"]:
        print(f"Scores saved to: {results['test_info']['scores_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
