"""Train a hyperbolic projector on top of a frozen CLAP model (see README.md)."""

from __future__ import annotations

import argparse
import itertools
import logging
import sys

from hyperbolic.cli import explicit_dests, train_parser
from hyperbolic.config import TrainConfig, default_of
from hyperbolic.outputs import setup_logging

log = logging.getLogger("train_hyperbolic_clap")

DEMO_FLAGS = {"demo", "seed", "output_dir", "verbose"}  # the flags --demo uses; it names the others it ignores


def build_parser() -> argparse.ArgumentParser:
    return train_parser(__doc__)

def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked: those only a command line has (the data source, a sweep, --export-onnx)
    here, every setting by ``TrainConfig.problems`` for each (c, temperature) of the sweep, as the
    library checks a configuration built in code. The defaults decided after parsing are filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Whether --label-column was typed (it mixes class labels into caption training) is a fact of
    # the command line, not of the configuration.
    args.caption_labels = bool(args.text_column) and args.label_column is not None
    if args.label_column is None:
        args.label_column = default_of(TrainConfig, "label_column")
    checks = [
        (args.parquet_dir is None and args.embeddings is None and not args.demo and not args.resume,
         "--parquet-dir (or --embeddings DIR) is required (or use --demo, or --resume RUN_DIR to continue a run)"),
        (args.learn_c and len(args.c) > 1, "--learn-c with several --c values: sweep or learn, not both"),
        (args.export_onnx is not None and not args.export_onnx.endswith(".onnx"),
         f"--export-onnx must name a .onnx file (got {args.export_onnx!r})"),
    ]
    messages = [m for failed, m in checks if failed]
    for c, t in itertools.product(args.c, args.temperature):
        cfg = _config(args, c, t)
        messages += [m for m in cfg.problems() if m not in messages]
    for message in messages:
        parser.error(message)
    for name in ("learn_temperature", "init_radius", "select_metric"):  # as the configuration decided them
        setattr(args, name, getattr(cfg, name))
    return args


def _config(args: argparse.Namespace, c: float, temperature: float) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{**{k: v for k, v in vars(args).items() if k in fields}, "c": c, "temperature": temperature})


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
        if args.parquet_dir is None and args.embeddings is None:
            raise TrainingError(f"--resume {args.resume} holds no setup.json of a run (it stopped before its "
                                "first epoch, or is not a run folder); give the run's flags again with --resume")
    return _config(args, args.c[0], args.temperature[0]), args.c, args.temperature


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
