"""Train a hyperbolic projector on top of a frozen CLAP model (see README.md)."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from hyperbolic.cli import embedding_arg_errors, explicit_dests, positive, train_parser
from hyperbolic.config import TrainConfig
from hyperbolic.geometry.poincare import clip_radius_resolvable
from hyperbolic.outputs import setup_logging

log = logging.getLogger("train_hyperbolic_clap")

DEMO_FLAGS = {"demo", "seed", "output_dir", "verbose"}  # the flags --demo uses; it names the others it ignores


def build_parser() -> argparse.ArgumentParser:
    return train_parser(__doc__)

def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.learn_temperature is None:
        args.learn_temperature = not args.learn_c
    if args.init_radius == 0:
        args.init_radius = None
    args.caption_labels = bool(args.text_column) and args.label_column is not None
    if args.label_column is None:
        args.label_column = "human_labels"
    if args.select_metric is None:
        args.select_metric = "val_t2a_R@10" if args.text_column else "val_mAP"
    checks = [
        (args.parquet_dir is None and not args.demo and not args.resume,
         "--parquet-dir is required (or use --demo, or --resume RUN_DIR to continue a run)"),
        (args.epochs < 1, f"--epochs must be >= 1 (got {args.epochs})"),
        (args.batch_size < 1, f"--batch-size must be >= 1 (got {args.batch_size})"),
        (not positive(args.learning_rate), f"--learning-rate must be a finite number > 0 (got {args.learning_rate})"),
        *[(not positive(c), f"--c must be > 0 and finite (got {c:g})") for c in args.c],
        *[(not positive(t), f"--temperature must be > 0 and finite (got {t:g})") for t in args.temperature],
        (args.learn_c and len(args.c) > 1, "--learn-c with several --c values: sweep or learn, not both"),
        (not 0 < args.train_ratio < 1, f"--train-ratio must be in (0, 1) (got {args.train_ratio})"),
        (not 0 < args.clip_r <= 1, f"--clip-r must be in (0, 1] (got {args.clip_r})"),
        (0 < args.clip_r <= 1 and args.geometry == "hyperbolic" and not clip_radius_resolvable(args.clip_r),
         f"--clip-r {args.clip_r:g} lets points reach relative radius {min(args.clip_r, 1 - 1e-6):.7f}, where "
         f"1 - c|x|^2 is within float32's resolution of 0 (hyperbolic.geometry.poincare.BOUNDARY_RESOLUTION): "
         "distances there are rounding noise, not geometry; use --clip-r 0.999 or less"),
        (args.init_radius is not None and not 0 < args.init_radius < min(1.0, args.clip_r),
         f"--init-radius must be in [0, --clip-r) (0: no rescaling; got {args.init_radius})"),
        (args.learn_c and args.learn_temperature,
         "--learn-c with --learn-temperature: (W, b, c, tau) and (sqrt(c) W, sqrt(c) b, 1, tau sqrt(c)) give the "
         "same logits, so with a learned layer c only moves the effective temperature tau*sqrt(c), which "
         "--learn-temperature already learns; the pair has a direction the loss cannot see. Use one of them"),
        (args.negatives == "in-batch" and args.batch_size == 1 and args.text_pairing == "all-labels",
         "--batch-size 1 with --negatives in-batch: a clip's only candidates are its own labels, so the loss is 0 "
         "and nothing trains; use --negatives all-classes or a larger --batch-size"),
        (args.text_pairing == "first-label" and args.batch_size == 1,
         "--batch-size 1 with --text-pairing first-label: the one clip has no other text to be contrasted with, "
         "so the loss is 0; use a larger --batch-size"),
        ("{label}" not in args.prompt_template, f"--prompt-template must contain {{label}} (got {args.prompt_template!r})"),
        (not (math.isfinite(args.weight_decay) and args.weight_decay >= 0),
         f"--weight-decay must be a finite number >= 0 (got {args.weight_decay})"),
        (not (math.isfinite(args.warmup_epochs) and args.warmup_epochs >= 0),
         f"--warmup-epochs must be a finite number >= 0 (got {args.warmup_epochs})"),
        (not positive(args.grad_clip), f"--grad-clip must be a finite number > 0 (got {args.grad_clip})"),
        (args.patience < 0, f"--patience must be >= 0 (got {args.patience})"),
        (args.keep_epochs < 0, f"--keep-epochs must be >= 0 (0 keeps every epoch) (got {args.keep_epochs})"),
        (args.export_onnx is not None and not args.export_onnx.endswith(".onnx"),
         f"--export-onnx must name a .onnx file (got {args.export_onnx!r})"),
        (args.entailment_weight < 0, f"--entailment-weight must be >= 0 (got {args.entailment_weight})"),
        (not args.entailment_k > 0, f"--entailment-k must be > 0 (got {args.entailment_k})"),
        ((args.entailment_weight > 0 and not args.text_column or args.expand_ancestors) and not args.ontology,
         "--entailment-weight > 0 and --expand-ancestors need --ontology PATH (AudioSet's ontology.json); "
         "with --text-column the cone pairs are caption -> clip and need no ontology"),
        (args.select_metric.startswith("val_t2a") and not args.text_column,
         f"--select-metric {args.select_metric} is a caption retrieval metric; it needs --text-column COL"),
        *[(args.text_column and value, f"{flag} works on class labels and is not available with --text-column")
          for flag, value in (("--ontology", args.ontology), ("--holdout-classes", args.holdout_classes),
                              ("--expand-ancestors", args.expand_ancestors))],
        (args.entailment_weight > 0 and args.geometry != "hyperbolic",
         "--entailment-weight > 0 needs --geometry hyperbolic: entailment cones live on the Poincare ball"),
        (args.expand_ancestors and args.text_pairing == "first-label",
         "--expand-ancestors adds positives, which --text-pairing first-label (one text per clip) cannot use; "
         "use --text-pairing all-labels"),
    ]
    for message in [m for failed, m in checks if failed] + embedding_arg_errors(args):
        parser.error(message)
    return args


def config_from_args(args: argparse.Namespace, argv=None) -> tuple[TrainConfig, list[float], list[float]]:
    """The run's configuration and sweep lists. With ``--resume``, the resumed run's settings with
    the flags typed on this command line on top (``hyperbolic.training.run_folder.resume_settings``)."""
    from hyperbolic.training.run_folder import resume_settings
    from hyperbolic.training.trainer import TrainingError
    fields = TrainConfig.__dataclass_fields__
    if args.resume:
        typed = explicit_dests(build_parser(), sys.argv[1:] if argv is None else [str(a) for a in argv])
        given = {k: getattr(args, k) for k in typed if k in fields and k not in ("c", "temperature")}
        if "c" in typed:
            given["c_values"] = args.c
        if "temperature" in typed:
            given["temperatures"] = args.temperature
        resumed = resume_settings(args.resume, given)
        if resumed is not None:
            return resumed
        if args.parquet_dir is None:
            raise TrainingError(f"--resume {args.resume} holds no setup.json of a run (it stopped before its "
                                "first epoch, or is not a run folder); give the run's flags again with --resume")
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**{**values, "c": args.c[0], "temperature": args.temperature[0]}), args.c, args.temperature


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from hyperbolic.errors import UserError
    from hyperbolic.training.train import TrainingInterrupted, train
    try:
        if args.demo:
            from hyperbolic.demo import run_demo
            typed = explicit_dests(build_parser(), sys.argv[1:] if argv is None else [str(a) for a in argv])
            ignored = sorted(typed - DEMO_FLAGS)
            if ignored:
                log.warning("--demo runs its own recipe and data; ignoring %s (only --seed, --output-dir and "
                            "--verbose apply)", ", ".join("--" + k.replace("_", "-") for k in ignored))
            default_out = build_parser().get_default("output_dir")
            run_demo(output_dir=None if args.output_dir == default_out else args.output_dir, seed=args.seed)
            return 0
        cfg, c_values, temperatures = config_from_args(args, argv)
        summary = train(cfg, c_values=c_values, temperatures=temperatures)
    except TrainingInterrupted as stop:
        print(stop.line(), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before training started; the embeddings computed so far are cached, so the same "
              "command goes on from there", file=sys.stderr)
        return 130
    except UserError as err:
        log.error("%s", err)
        return 2
    log.info("best epoch %s: %s", summary["best_epoch"], summary["best_checkpoint"])
    if args.export_onnx:
        from hyperbolic.export import export_onnx
        export_onnx(summary["best_checkpoint"], args.export_onnx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
