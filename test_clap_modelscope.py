"""Zero-shot classification with a frozen CLAP: plain cosine, a trained projector, or several
checkpoints compared with plain CLAP on the same clips (see README.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from hyperbolic.cli import eval_parser
from hyperbolic.config import EvalConfig
from hyperbolic.outputs import setup_logging

log = logging.getLogger("test_clap_modelscope")


def build_parser() -> argparse.ArgumentParser:
    return eval_parser(__doc__)

def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked by ``EvalConfig.problems`` (as the library checks a configuration built
    in code)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for message in config_from_args(args).problems():
        parser.error(message)
    return args


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    fields = EvalConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["projection_checkpoints"] = list(args.projection_checkpoint or [])
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
        if cfg.embeddings:
            from hyperbolic.embedding.stored import read_class_names
            num_classes = len(read_class_names(cfg.embeddings))
        else:
            num_classes = None if cfg.text_column else len(resolve_class_names(
                cfg.class_labels, parquet_dir=cfg.parquet_dir, label_column=cfg.label_column, limit=cfg.num_samples))
        if num_classes is not None and args.top_k > num_classes:
            source = "--embeddings classes.parquet" if cfg.embeddings else "--class-labels"
            build_parser().error(f"--top-k must be <= the number of classes in {source} "
                                 f"({num_classes}) (got {args.top_k})")
        results, path = evaluate(cfg)
    except UserError as err:
        log.error("%s", err)
        return 2
    from data.audioset import describe_skipped
    print(format_results_table(results))
    print(f"{describe_skipped(results.get('skipped'))} (examples under 'skipped' in the results JSON)")
    print(f"Results saved to: {path}")
    if results["test_info"]["scores_file"]:
        print(f"Scores saved to: {results['test_info']['scores_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
