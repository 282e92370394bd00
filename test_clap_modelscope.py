"""Zero-shot classification with a frozen CLAP: plain cosine, a trained projector, or several
checkpoints compared with plain CLAP on the same clips (see README.md)."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from hyperbolic.cli import embedding_arg_errors, eval_parser, positive
from hyperbolic.config import EvalConfig
from hyperbolic.outputs import setup_logging

log = logging.getLogger("test_clap_modelscope")


def build_parser() -> argparse.ArgumentParser:
    return eval_parser(__doc__)

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
        (args.entailment_k is not None and not positive(args.entailment_k),
         f"--entailment-k must be > 0 and finite (got {args.entailment_k})"),
        (args.entailment_k is not None and not args.ontology,
         "--entailment-k needs --ontology PATH (the cones it measures)"),
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
    from hyperbolic.evaluation.evaluate import evaluate
    from hyperbolic.evaluation.tables import format_results_table
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
    print(format_results_table(results))
    print(f"Results saved to: {path}")
    if results["test_info"]["scores_file"]:
        print(f"Scores saved to: {results['test_info']['scores_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
