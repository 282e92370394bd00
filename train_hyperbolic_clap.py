"""Train a hyperbolic projector on top of a frozen CLAP model (see README.md)."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from hyperbolic.cli import HelpFormatter, add_embedding_args, embedding_arg_errors, explicit_dests, num_samples_arg, positive
from hyperbolic.config import (DEFAULT_PROMPT_TEMPLATE, LR_SCHEDULES, NEGATIVES, SELECT_METRICS, TEXT_PAIRINGS,
                               TrainConfig)
from hyperbolic.outputs import setup_logging
from hyperbolic.projector import CLIP_MODES, GEOMETRIES

log = logging.getLogger("train_hyperbolic_clap")

DEMO_FLAGS = {"demo", "seed", "output_dir", "verbose"}  # the flags --demo uses; it names the others it ignores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--parquet-dir", help="folder of AudioSet-style .parquet files (required unless --demo or "
                                         "--resume; no default)")
    p.add_argument("--num-samples", type=num_samples_arg, default=None, metavar="N|all",
                   help="use the first N rows; 'all' or 0: every row (default: all)")
    p.add_argument("--output-dir", default="./checkpoints_hyperbolic",
                   help="run folder: checkpoints, setup.json, training_curves.png")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training clips")
    p.add_argument("--batch-size", type=int, default=16, help="clips per training step")
    p.add_argument("--learning-rate", type=float, default=1e-2,
                   help="AdamW learning rate, peak of --lr-schedule (the earlier scripts' default was 1e-4; "
                        "docs/geometry.md)")
    p.add_argument("--c", type=float, nargs="+", default=[1.0],
                   help="curvature: the ball has curvature -c; several values run a sweep")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.1],
                   help="logits are -d_c / temperature (its initial value when learned); several values run a "
                        "sweep (the earlier scripts' default was 1.0)")
    p.add_argument("--train-ratio", type=float, default=0.8, help="fraction of the clips that train; the rest validate")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--clip-r", type=float, default=0.9,
                   help="clip embeddings to this fraction of the ball radius 1/sqrt(c) (1 = no clip)")
    p.add_argument("--clip-mode", choices=CLIP_MODES, default="inward",
                   help="gradient of a clipped point: inward (never pushed further out, can come back), "
                        "straight-through (earlier rule: the pre-clip norm can run away), hard")
    p.add_argument("--init-radius", type=float, default=0.5, metavar="R",
                   help="scale the initial layer so the training audio's median point sits at this fraction "
                        "of the ball radius, hyperbolic only (0: Xavier init as is)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="text of each class prompt; {label} is the class name")
    p.add_argument("--text-pairing", choices=TEXT_PAIRINGS, default="all-labels",
                   help="all-labels: multi-positive loss over class prompts; first-label: earlier scripts")
    p.add_argument("--negatives", choices=NEGATIVES, default="in-batch",
                   help="classes each clip is contrasted with: those in its batch, or every seen class")
    p.add_argument("--geometry", choices=GEOMETRIES, default="hyperbolic",
                   help="hyperbolic: Poincare ball, score -d_c / tau; euclidean: cosine / tau (a baseline)")
    p.add_argument("--learn-c", action="store_true",
                   help="learn the curvature; with a learned linear layer this only learns the effective "
                        "temperature tau*sqrt(c), so it cannot be combined with --learn-temperature")
    p.add_argument("--learn-temperature", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the temperature (default: learned, unless --learn-c)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="learning rate after warmup: cosine decay to 0, or constant")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup, in epochs (fractions allowed)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--patience", type=int, default=0, help="early stop after N epochs without improvement (0: off)")
    p.add_argument("--select-metric", choices=SELECT_METRICS, default=None,
                   help="the best epoch is the one with the best value of this (default: val_mAP; with "
                        "--text-column: val_t2a_R@10)")
    p.add_argument("--export-onnx", default=None, metavar="PATH.onnx",
                   help="after training, export the best checkpoint's projector and similarity head to ONNX "
                        "(default: no export)")
    p.add_argument("--holdout-classes", default=None, metavar="FRACTION|FILE",
                   help="keep these classes out of training entirely: a seeded fraction of the classes "
                        "present, or a file with one class name per line (default: none)")
    p.add_argument("--ontology", default=None, metavar="PATH",
                   help="AudioSet ontology.json (CLAP/class_labels/audioset_ontology.json): its abstract parents "
                        "get prompts too (needed by the two below) (default: none)")
    p.add_argument("--entailment-weight", type=float, default=0.0,
                   help="weight of the entailment-cone term (clip in its labels' cones, child prompt in its "
                        "parent's); 0: off")
    p.add_argument("--entailment-k", type=float, default=0.1,
                   help="cone aperture constant K: psi(x) = arcsin(K (1 - c|x|^2) / (sqrt(c)|x|))")
    p.add_argument("--expand-ancestors", action="store_true",
                   help="every ontology ancestor of a clip's labels is a positive in training")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a run from its output dir (latest epoch) or a projection_epoch_*.pth; the "
                        "run's settings (data, CLAP, every training flag) come from it, flags given here "
                        "must match them except where and how it runs (--device, --num-workers, "
                        "--cache-dir, --no-cache, --keep-epochs, swanlab) (default: start a new run)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output-dir")
    p.add_argument("--keep-epochs", type=int, default=3, metavar="N",
                   help="keep the newest N projection_epoch_*.pth (enough to --resume); 0 keeps every epoch. "
                        "One best_projection_epoch_*.pth is always kept")
    p.add_argument("--use-swanlab", action="store_true",
                   help="log the epochs to SwanLab; its local files go under --output-dir/swanlog")
    p.add_argument("--swanlab-project", default="Hyperbolic_CLAP", help="SwanLab project")
    p.add_argument("--swanlab-workspace", default=None, help="SwanLab workspace (default: your own)")
    p.add_argument("--swanlab-mode", default=None, choices=["cloud", "online", "local", "offline", "disabled"],
                   help="SwanLab mode (default: SwanLab's own, cloud when logged in)")
    p.add_argument("--demo", action="store_true",
                   help="train and evaluate on generated sounds with a tiny random CLAP (no download); "
                        "uses its own recipe, only --seed and --output-dir apply")
    add_embedding_args(p)
    # None tells "not given" apart: with --text-column, a --label-column given mixes class labels in.
    p.set_defaults(label_column=None)
    return p


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
    the flags typed on this command line on top (``hyperbolic.train.resume_settings``)."""
    from hyperbolic.train import TrainingError, resume_settings
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
    from hyperbolic.train import TrainingInterrupted, train
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
