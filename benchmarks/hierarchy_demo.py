"""Hierarchy comparison on the offline demo: plain cosine CLAP, euclidean, hyperbolic and
hyperbolic + entailment-cone projectors, trained with one recipe and scored in one evaluation
with the 3-level demo ontology (mAP, acc@1, mistake severity, cone consistency, norm-depth rho).

    python benchmarks/hierarchy_demo.py --output-dir demo_runs/hierarchy --seed 42

Nothing is downloaded: a tiny random CLAP and generated sounds (see hyperbolic/demo.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere as a plain script

from hyperbolic.hierarchy.cones import DEFAULT_K  # noqa: E402
from hyperbolic.outputs import setup_logging  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default=None,
                   help="where the CLAP, data, checkpoints and results go (default demo_runs/hierarchy_<time>)")
    p.add_argument("--seed", type=int, default=42, help="CLAP weights, data, split and training")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--train-clips-per-class", type=int, default=32)
    p.add_argument("--eval-clips-per-class", type=int, default=8)
    p.add_argument("--entailment-weight", type=float, nargs="+", default=[1.0], metavar="W",
                   help="cone term weight of the entailment run; several values: one entailment run each")
    p.add_argument("--entailment-k", type=float, default=DEFAULT_K, help="cone aperture K (training and evaluation)")
    p.add_argument("--expand-ancestors", action="store_true",
                   help="train every projector and score every model with ancestor-closed ground truth")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    checks = [
        (args.epochs < 1, f"--epochs must be >= 1 (got {args.epochs})"),
        (args.train_clips_per_class < 2, f"--train-clips-per-class must be >= 2 (got {args.train_clips_per_class})"),
        (args.eval_clips_per_class < 1, f"--eval-clips-per-class must be >= 1 (got {args.eval_clips_per_class})"),
        (not all(math.isfinite(w) and w > 0 for w in args.entailment_weight),
         f"--entailment-weight values must be > 0 (got {args.entailment_weight}); the hyperbolic run is w = 0"),
        (len(set(args.entailment_weight)) != len(args.entailment_weight), "--entailment-weight lists a value twice"),
        (not (math.isfinite(args.entailment_k) and args.entailment_k > 0),
         f"--entailment-k must be > 0 (got {args.entailment_k})"),
        (args.output_dir is not None and Path(args.output_dir).is_dir() and any(Path(args.output_dir).iterdir()),
         f"--output-dir {args.output_dir} is not empty; choose a new folder (the demo writes its data there)"),
    ]
    for failed, message in checks:
        if failed:
            p.error(message)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from hyperbolic.demo import run_hierarchy_demo
    run_hierarchy_demo(args.output_dir, seed=args.seed, epochs=args.epochs,
                       train_clips_per_class=args.train_clips_per_class,
                       eval_clips_per_class=args.eval_clips_per_class,
                       entailment_weights=tuple(args.entailment_weight),
                       entailment_k=args.entailment_k, expand_ancestors=args.expand_ancestors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
