"""Training recipes compared on the offline demo data, over seeds: accuracy and ball usage.

    python benchmarks/recipes.py --output-dir demo_runs/recipes --seeds 42 7 1
    python benchmarks/recipes.py --output-dir demo_runs/recipes --hierarchy --seeds 42 7 1

Per seed, the demo's tiny random CLAP, training data and held-out evaluation data are built once
(hyperbolic.demo); every recipe then trains from the same cached embeddings and its best
checkpoint (on validation mAP) is scored on the held-out clips. ``--hierarchy`` trains with the
3-level demo ontology and reports the cone numbers too. Prints one markdown table of means (and
standard deviations) over seeds; the per-run numbers go to ``<output-dir>/recipes.json``.

Columns: mAP and acc@1 on the held-out clips; audio/text: fraction of points on the clip sphere
and median relative radius sqrt(c)|x|; top1=cos: fraction of clips whose top class equals the
cosine top class of the same projected points (1.0: the ball adds nothing to a linear map + cosine).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere as a plain script

from data.synthetic import write_demo_ontology  # noqa: E402
from hyperbolic.config import EvalConfig, TrainConfig  # noqa: E402
from hyperbolic.demo import _demo_inputs  # noqa: E402
from hyperbolic.evaluation.evaluate import evaluate  # noqa: E402
from hyperbolic.evaluation.scoring import load_projection  # noqa: E402
from hyperbolic.outputs import setup_logging  # noqa: E402
from hyperbolic.training.train import train  # noqa: E402

# name -> TrainConfig overrides. "earlier default" is the flags' default recipe before this table.
EARLIER = dict(learning_rate=1e-4, temperature=1.0, learn_temperature=False, clip_mode="straight-through", epochs=10)
DEMO = dict(learning_rate=1e-2, temperature=0.1, learn_temperature=False, clip_mode="straight-through", epochs=60)
RECIPES = {
    "earlier default (lr 1e-4, tau 1, 10 ep)": EARLIER,
    "earlier demo (lr 1e-2, tau 0.1, 60 ep)": DEMO,
    "demo + inward clip": {**DEMO, "clip_mode": "inward"},
    "demo + inward + learned tau": {**DEMO, "clip_mode": "inward", "learn_temperature": True},
    "demo + inward + learned tau + r0 0.5": {**DEMO, "clip_mode": "inward", "learn_temperature": True,
                                             "init_radius": 0.5},
    "demo + ST + learned tau + r0 0.5": {**DEMO, "learn_temperature": True, "init_radius": 0.5},
    "lr 1e-3, learned tau 0.1, inward, r0 0.5, 10 ep": dict(learning_rate=1e-3, temperature=0.1,
                                                             learn_temperature=True, clip_mode="inward",
                                                             init_radius=0.5, epochs=10),
    "lr 1e-2, learned tau 0.1, inward, r0 0.5, 10 ep": dict(learning_rate=1e-2, temperature=0.1,
                                                             learn_temperature=True, clip_mode="inward",
                                                             init_radius=0.5, epochs=10),
    "lr 1e-2, learned tau 0.1, inward, 10 ep": dict(learning_rate=1e-2, temperature=0.1, learn_temperature=True,
                                                     clip_mode="inward", epochs=10),
    "lr 1e-2, learned tau 0.1, inward, r0 0.5, 10 ep, all-classes": dict(
        learning_rate=1e-2, temperature=0.1, learn_temperature=True, clip_mode="inward", init_radius=0.5,
        epochs=10, negatives="all-classes"),
    "demo + inward + learned tau + r0 0.5, all-classes": {**DEMO, "clip_mode": "inward", "learn_temperature": True,
                                                          "init_radius": 0.5, "negatives": "all-classes"},
}

COLUMNS = (("mAP", ("metrics", "mAP")), ("acc@1", ("metrics", "acc@1")),
           ("audio on clip", ("ball_usage", "audio", "on_clip_sphere")),
           ("text on clip", ("ball_usage", "text", "on_clip_sphere")),
           ("audio radius", ("ball_usage", "audio", "relative_radius", "median")),
           ("text radius", ("ball_usage", "text", "relative_radius", "median")),
           ("top1=cos", ("ball_usage", "top1_same_as_cosine")))
HIER_COLUMNS = (("pairs in cone", ("hierarchy", "cones", "prompt_pairs_in_cone")),
                ("rho all nodes", ("hierarchy", "cones", "norm_depth", "rho")))


def _get(block, path):
    for key in path:
        block = block.get(key) if isinstance(block, dict) else None
    return block


def _measure_k_columns(measure_k) -> tuple:
    """``pairs in cone @K`` for each K of ``--measure-k``: every row's cones at the same K."""
    return tuple((f"pairs in cone @K={k:g}", ("hierarchy", "cones", "prompt_pairs_in_cone")) for k in measure_k)


def run(out: Path, seeds: list[int], names: list[str], overrides: dict, hierarchy: bool,
        measure_k: tuple[float, ...] = ()) -> dict:
    cache = out / "cache"
    runs: dict[str, dict[int, dict]] = {name: {} for name in names}
    for seed in seeds:
        base_dir = out / f"seed{seed}"
        clap_dir, labels = _demo_inputs(base_dir, seed, 32, 8)
        ontology = str(write_demo_ontology(base_dir / "data" / "demo_ontology.json")) if hierarchy else None
        base = TrainConfig(parquet_dir=str(base_dir / "data" / "train"), checkpoint=str(clap_dir), device="cpu",
                           batch_size=16, class_labels=str(labels), seed=seed, overwrite=True,
                           cache_dir=str(cache), num_workers=0, ontology=ontology)
        eval_cfg = EvalConfig(parquet_dir=str(base_dir / "data" / "eval"), checkpoint=str(clap_dir), device="cpu",
                              num_samples=None, class_labels=str(labels), cache_dir=str(cache), num_workers=0,
                              ontology=ontology, result_dir=str(base_dir / "results"))
        for name in names:
            cfg = replace(base, **{**RECIPES[name], **overrides},
                          output_dir=str(base_dir / "runs" / name.replace(" ", "_").replace("/", "-")))
            summary = train(cfg)
            results, _ = evaluate(replace(eval_cfg, output_json=str(Path(cfg.output_dir) / "results.json")),
                                  [load_projection(summary["best_checkpoint"], name="model")])
            block = results
            cols = COLUMNS + (HIER_COLUMNS if hierarchy else ())
            runs[name][seed] = {label: _get(block, path) for label, path in cols}
            for k, (label, path) in zip(measure_k, _measure_k_columns(measure_k)):
                at_k, _ = evaluate(replace(eval_cfg, entailment_k=k, output_json=str(
                    Path(cfg.output_dir) / f"results_k{k:g}.json")), [load_projection(summary["best_checkpoint"],
                                                                                         name="model")])
                runs[name][seed][label] = _get(at_k, path)
            runs[name][seed]["best_epoch"] = summary["best_epoch"]
    return runs


def table(runs: dict, hierarchy: bool, measure_k: tuple[float, ...] = ()) -> str:
    cols = [label for label, _ in COLUMNS + (HIER_COLUMNS if hierarchy else ()) + _measure_k_columns(measure_k)]
    lines = ["| recipe | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, by_seed in runs.items():
        cells = []
        for col in cols:
            values = [r[col] for r in by_seed.values() if r[col] is not None]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    p.add_argument("--recipes", nargs="+", default=None, help="names of RECIPES (default: all)")
    p.add_argument("--hierarchy", action="store_true", help="train with the demo ontology; report cones")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides applied to every recipe, e.g. entailment_weight=0.2")
    p.add_argument("--measure-k", type=float, nargs="+", default=[], metavar="K",
                   help="with --hierarchy: also measure every row's cones at each of these K "
                        "(test_clap_modelscope.py --entailment-k), so rows trained at different K compare")
    args = p.parse_args(argv)
    # The steps are tiny matmuls: one thread is fastest, and several contend with other jobs.
    import torch
    torch.set_num_threads(1)
    setup_logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)  # numbers, true/false, null
        except json.JSONDecodeError:
            overrides[key] = value  # a word: a choice such as all-classes
    names = args.recipes or list(RECIPES)
    out = Path(args.output_dir)
    if args.measure_k and not args.hierarchy:
        p.error("--measure-k needs --hierarchy (the cones it measures)")
    if any(not k > 0 for k in args.measure_k):
        p.error(f"--measure-k values must be > 0 (got {args.measure_k})")
    runs = run(out, args.seeds, names, overrides, args.hierarchy, tuple(args.measure_k))
    (out / "recipes.json").write_text(json.dumps({"seeds": args.seeds, "overrides": overrides, "runs": runs},
                                                 indent=2))
    print(table(runs, args.hierarchy, tuple(args.measure_k)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
