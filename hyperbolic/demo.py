"""``train_hyperbolic_clap.py --demo``: the whole path on generated sounds, nothing downloaded.

A tiny random CLAP is built on the spot, AudioSet classes that can be synthesised (sine wave,
white noise, mains hum, ...) are written as parquet, a hyperbolic projector is trained, and
plain cosine CLAP and the projector are evaluated on the same held-out clips. The random CLAP's
text tower knows nothing about sounds, so its cosine scores are near chance; the projector learns
to align the (random but informative) audio features with the class prompts.

``run_hierarchy_demo`` (``benchmarks/hierarchy_demo.py``) is the same setting with the 3-level
demo ontology (``data.synthetic.demo_ontology``): plain cosine CLAP and three projectors trained
with one recipe (euclidean, hyperbolic, hyperbolic + entailment cones), compared in one
evaluation on the same held-out clips with the ``--ontology`` hierarchy numbers.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from data.synthetic import DEMO_CLASSES, write_demo_dataset, write_demo_ontology
from hyperbolic.cli import command_line, eval_parser, train_parser
from hyperbolic.config import EvalConfig, TrainConfig
from hyperbolic.embedding.tiny_clap import build_tiny_clap
from hyperbolic.evaluation.evaluate import evaluate
from hyperbolic.evaluation.scoring import ScoringModel, load_projection
from hyperbolic.evaluation.tables import format_hierarchy_table, format_metrics_table
from hyperbolic.hierarchy.cones import DEFAULT_K
from hyperbolic.outputs import atomic_write_json
from hyperbolic.training.train import train

log = logging.getLogger(__name__)


def _demo_inputs(out: Path, seed: int, train_clips_per_class: int, eval_clips_per_class: int,
                 seconds: float = 10.0):
    """The tiny CLAP, the train and eval parquet folders and the class list under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    log.info("demo: writing everything under %s", out)
    clap_dir = build_tiny_clap(out / "tiny_clap", seed=seed)
    write_demo_dataset(out / "data" / "train", clips_per_class=train_clips_per_class, seed=seed, seconds=seconds)
    write_demo_dataset(out / "data" / "eval", clips_per_class=eval_clips_per_class, seed=seed + 1, seconds=seconds)
    # The demo's vocabulary is its own classes: the random text tower cannot tell 527 prompts
    # apart, and classes absent from the data would only measure that.
    labels = atomic_write_json(out / "data" / "class_labels.json", dict(enumerate(DEMO_CLASSES)))
    return clap_dir, labels


def run_demo(output_dir: str | Path | None = None, *, seed: int = 42, epochs: int = 60,
             train_clips_per_class: int = 32, eval_clips_per_class: int = 8, seconds: float = 10.0) -> dict:
    """Build, train, evaluate; print the comparison and the equivalent commands; return the results.

    The recipe is the training defaults (learning rate 1e-2, learned temperature from 0.1, inward
    clip, initial radius 0.5; docs/geometry.md) with 60 epochs: the projector has to bridge two
    unrelated random towers, which takes more steps than aligning a trained CLAP.
    """
    out = Path(output_dir or Path("demo_runs") / datetime.now().strftime("%Y%m%d_%H%M%S"))
    clap_dir, labels = _demo_inputs(out, seed, train_clips_per_class, eval_clips_per_class, seconds)
    cfg = TrainConfig(parquet_dir=str(out / "data" / "train"), checkpoint=str(clap_dir), device="cpu",
                      output_dir=str(out / "checkpoints"), epochs=epochs, batch_size=16, class_labels=str(labels),
                      learning_rate=1e-2, temperature=0.1, seed=seed, overwrite=True)
    summary = train(cfg)
    eval_cfg = EvalConfig(parquet_dir=str(out / "data" / "eval"), checkpoint=str(clap_dir), device="cpu",
                          num_samples=None, output_json=str(out / "results_demo.json"), class_labels=str(labels))
    models = [ScoringModel(name="clap_cosine", prompt_template=cfg.prompt_template),
              load_projection(summary["best_checkpoint"])]
    results, path = evaluate(eval_cfg, models)
    chance = 1.0 / len(DEMO_CLASSES)
    print(format_metrics_table(results))
    acc = {name: block["metrics"]["acc@1"] for name, block in results["models"].items()}
    print(f"\nacc@1 on {results['test_info']['clips_with_known_label']} held-out clips over the "
          f"{results['test_info']['num_classes']} demo classes: "
          + ", ".join(f"{name} {value:.3f}" for name, value in acc.items())
          + f"  (chance: {chance:.3f})")
    print(f"Results saved to: {path}")
    print("\nThe same two steps as plain commands (change one flag and run again):\n"
          + demo_commands(cfg, eval_cfg))
    return results


RERUN_DIR = "checkpoints_rerun"       # beside the demo's checkpoints: the printed commands write here
RERUN_JSON = "results_rerun.json"


def demo_commands(cfg: TrainConfig, eval_cfg: EvalConfig) -> str:
    """The training and evaluation command lines equivalent to the demo's two library calls,
    written from the configurations it used (so they follow any change to its recipe).

    They write to a new folder (``RERUN_DIR`` beside the demo's checkpoints, ``RERUN_JSON``)
    without ``--overwrite``, so running them never deletes the demo's own run; run twice, the
    second training stops at once with the error that names ``--output-dir``."""
    rerun = str(Path(cfg.output_dir).parent / RERUN_DIR)
    train = command_line("train_hyperbolic_clap.py", replace(cfg, overwrite=False, output_dir=rerun), train_parser(),
                         always=("epochs", "learning_rate", "temperature"))  # the recipe, to change one flag
    rows = "all" if eval_cfg.num_samples is None else str(eval_cfg.num_samples)
    json_out = str(Path(eval_cfg.output_json).with_name(RERUN_JSON)) if eval_cfg.output_json else None
    evaluate_ = command_line("test_clap_modelscope.py", replace(eval_cfg, num_samples=100, output_json=json_out),
                             eval_parser(), extra=["--num-samples", rows, "--projection-checkpoint", rerun])
    return f"  {train}\n  {evaluate_}"


def run_hierarchy_demo(output_dir: str | Path | None = None, *, seed: int = 42, epochs: int = 60,
                       train_clips_per_class: int = 32, eval_clips_per_class: int = 8,
                       entailment_weights: tuple[float, ...] = (1.0,), entailment_k: float = DEFAULT_K,
                       expand_ancestors: bool = False) -> dict:
    """Cosine CLAP vs euclidean, hyperbolic and hyperbolic + entailment projectors on the demo.

    The three projectors share ``run_demo``'s recipe (seed, split, epochs, learning rate 1e-2,
    temperature 0.1, batch 16) and each is scored with its best checkpoint on validation mAP, as
    ``run_demo`` does. Only the entailment runs train with the ontology's cone term, one run per
    weight in ``entailment_weights`` (named ``hyperbolic_entailment``, or
    ``hyperbolic_entailment_w<weight>`` when there are several), all at ``entailment_k``; every
    checkpoint stores that K, so every hyperbolic model's cones are measured at it.
    ``expand_ancestors`` applies to every projector's training (with the ontology, no cone term
    for the others) and to the evaluation's ground truth alike. One ``evaluate`` call scores all
    models on the same held-out clips with the demo ontology; the results JSON is
    ``<output_dir>/results_hierarchy.json``. ``output_dir`` must not hold an earlier demo's data.
    """
    out = Path(output_dir or Path("demo_runs") / f"hierarchy_{datetime.now().strftime('%Y%m%d_%H%M%S')}")
    clap_dir, labels = _demo_inputs(out, seed, train_clips_per_class, eval_clips_per_class)
    ontology = str(write_demo_ontology(out / "data" / "demo_ontology.json"))
    base = TrainConfig(parquet_dir=str(out / "data" / "train"), checkpoint=str(clap_dir), device="cpu",
                       epochs=epochs, batch_size=16, class_labels=str(labels), learning_rate=1e-2,
                       temperature=0.1, seed=seed, overwrite=True, entailment_k=entailment_k,
                       ontology=ontology if expand_ancestors else None, expand_ancestors=expand_ancestors)
    runs = {
        "euclidean": replace(base, geometry="euclidean"),
        "hyperbolic": base,
    }
    for w in entailment_weights:
        name = "hyperbolic_entailment" if len(entailment_weights) == 1 else f"hyperbolic_entailment_w{w:g}"
        runs[name] = replace(base, ontology=ontology, entailment_weight=w)
    models = [ScoringModel(name="clap_cosine", prompt_template=base.prompt_template)]
    for name, cfg in runs.items():
        log.info("hierarchy demo: training %s", name)
        summary = train(replace(cfg, output_dir=str(out / "checkpoints" / name)))
        models.append(load_projection(summary["best_checkpoint"], name=name))
    eval_cfg = EvalConfig(parquet_dir=str(out / "data" / "eval"), checkpoint=str(clap_dir), device="cpu",
                          num_samples=None, output_json=str(out / "results_hierarchy.json"),
                          class_labels=str(labels), ontology=ontology, expand_ancestors=expand_ancestors)
    results, path = evaluate(eval_cfg, models)
    info = results["test_info"]
    print(format_hierarchy_table(results))
    print(f"\n{info['clips_with_known_label']} held-out clips, {info['num_classes']} classes, ground truth "
          f"{info['ground_truth']}; seed {seed}, {train_clips_per_class} training clips per class, "
          f"{epochs} epochs; entailment weight {', '.join(f'{w:g}' for w in entailment_weights)}, "
          f"K {entailment_k:g}")
    print(f"Results saved to: {path}")
    return results
