"""The entry scripts' flags: those both share (the data, the frozen CLAP, the embedding stage),
``train_parser`` (``train_hyperbolic_clap.py``) and ``eval_parser`` (``test_clap_modelscope.py``).
The scripts validate what they parse; ``hyperbolic.demo`` writes its commands from these parsers."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex

from hyperbolic.config import (
    CLIP_MODES,
    GEOMETRIES,
    LR_SCHEDULES,
    NEGATIVES,
    PRECISIONS,
    SELECT_METRICS,
    SWANLAB_MODES,
    TEXT_PAIRINGS,
    EmbeddingConfig,
    EvalConfig,
    StudyConfig,
    TrainConfig,
    default_of,
)

# Every flag's default is its configuration field's (hyperbolic.config), written there once.
# tests/test_cli.py holds each parser against the dataclasses, defaults and choices alike.
_E = functools.partial(default_of, EmbeddingConfig)
_T = functools.partial(default_of, TrainConfig)
_V = functools.partial(default_of, EvalConfig)
_S = functools.partial(default_of, StudyConfig)


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
        p.add_argument("--device", default=_E("device"), help="torch device; falls back to cpu without CUDA")
    p.add_argument("--checkpoint", default=_E("checkpoint"),
                   help="CLAP model folder, or a model id looked up in the ModelScope cache")
    files = ("class list: .json (index -> name), .csv (index, mid, display_name) or one name per line")
    p.add_argument("--class-labels", default=_E("class_labels"), metavar="PATH" if per_rank else "PATH|from-data",
                   help=files + ("" if per_rank else "; or from-data: the sorted distinct labels of --label-column "
                                 "in the rows read (ESC-50: --label-column category)")
                        + " (default: the 527 AudioSet classes, CLAP/class_labels/audioset_class_labels_indices.json)")
    p.add_argument("--label-column", default=_E("label_column"),
                   help="parquet column holding each clip's labels: class names (human_labels) or AudioSet "
                        "machine ids such as /m/09x0r (labels) (default: human_labels)")
    p.add_argument("--embed-batch-size", type=int, default=_E("embed_batch_size"), help="clips per CLAP forward")
    p.add_argument("--full-batches", action=argparse.BooleanOptionalAction, default=_E("full_batches"),
                   help="forward --embed-batch-size clips at a time across units and files, all full but the run's "
                        "last (default); --no-full-batches: one unit's rows per forward, as before 0.18, so that a run "
                        "reusing part of the cache matches a cold one bit for bit (docs/performance.md)")
    if per_rank:
        p.add_argument("--num-workers", type=int, default=None,
                       help="decoding worker processes per rank (default: spare cores / ranks on this machine)")
    else:
        p.add_argument("--num-workers", type=int, default=_E("num_workers"),
                       help="decoding worker processes, 0: decode in the main process (default: chosen per run "
                            "from the measured decoding and forward cost of the first batch, docs/performance.md)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default: $HYPERBOLIC_CLAP_CACHE, else ~/.cache/hyperbolic_clap)"
                        + ("; the same for every rank" if per_rank else ""))
    if not per_rank:
        p.add_argument("--no-cache", action="store_true", help="compute every embedding, read and write no cache")
    p.add_argument("--precision", choices=PRECISIONS, default=_E("precision"),
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
    p.add_argument("--embeddings", default=_E("embeddings"), metavar="DIR",
                   help="read stored embeddings instead of --parquet-dir and CLAP: DIR/clips.parquet and "
                        "DIR/classes.parquet (docs/data.md); the class list is the classes in classes.parquet "
                        "(default: none, embed --parquet-dir with CLAP)")
    p.add_argument("--clip-id-column", default=_E("clip_id_column"),
                   help="with --text-column: rows sharing this value are one clip with all their captions, "
                        "its audio embedded once (a file without the column: each row is a clip)")
    p.add_argument("--verbose", action="store_true", help="debug-level log")


def embedding_arg_errors(args: argparse.Namespace) -> list[str]:
    """Messages for invalid embedding-stage flags (``EmbeddingConfig``'s checks), each naming the
    flag and the fix; for a command (``hyperbolic.distributed``) that has no configuration of its own."""
    fields = EmbeddingConfig.__dataclass_fields__
    cfg = EmbeddingConfig(**{k: v for k, v in vars(args).items() if k in fields and k != "parquet_dir"},
                          parquet_dir=getattr(args, "parquet_dir", None))
    return cfg._embedding_problems()


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Training's recipe: the optimisation, the geometry, the objective, model selection."""
    p.add_argument("--epochs", type=int, default=_T("epochs"), help="passes over the training clips")
    p.add_argument("--batch-size", type=int, default=_T("batch_size"), help="clips per training step")
    p.add_argument("--learning-rate", type=float, default=_T("learning_rate"),
                   help="AdamW learning rate, peak of --lr-schedule (the earlier scripts' default was 1e-4; "
                        "docs/geometry.md)")
    p.add_argument("--c", type=float, nargs="+", default=[_T("c")],
                   help="curvature: the ball has curvature -c; several values run a sweep")
    p.add_argument("--temperature", type=float, nargs="+", default=[_T("temperature")],
                   help="logits are -d_c / temperature (its initial value when learned); several values run a "
                        "sweep (the earlier scripts' default was 1.0)")
    p.add_argument("--train-ratio", type=float, default=_T("train_ratio"), help="fraction of the clips that train; the rest validate")
    p.add_argument("--seed", type=int, default=_T("seed"), help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--clip-r", type=float, default=_T("clip_r"),
                   help="clip embeddings to this fraction of the ball radius 1/sqrt(c) (1 = no clip)")
    p.add_argument("--clip-mode", choices=CLIP_MODES, default=_T("clip_mode"),
                   help="gradient of a clipped point: inward (never pushed further out, can come back), "
                        "straight-through (earlier rule: the pre-clip norm can run away), hard")
    p.add_argument("--init-radius", type=float, default=_T("init_radius"), metavar="R",
                   help="scale the initial layer so the training audio's median point sits at this fraction "
                        "of the ball radius, at any --proj-dim; hyperbolic, and euclidean-distance (the same "
                        "tangent norm, artanh(R)/sqrt(c)); cosine ignores the scale (0: Xavier init as is)")
    p.add_argument("--prompt-template", default=_T("prompt_template"),
                   help="text of each class prompt; {label} is the class name")
    p.add_argument("--text-pairing", choices=TEXT_PAIRINGS, default=_T("text_pairing"),
                   help="all-labels: multi-positive loss over class prompts; first-label: earlier scripts")
    p.add_argument("--negatives", choices=NEGATIVES, default=_T("negatives"),
                   help="classes each clip is contrasted with: those in its batch, or every seen class")
    p.add_argument("--geometry", choices=GEOMETRIES, default=_T("geometry"),
                   help="hyperbolic: Poincare ball, score -d_c / tau; euclidean: cosine / tau (a baseline); "
                        "euclidean-distance: -|a - t|^2 / tau on the unnormalised projections (the EuCLIP "
                        "control: no expmap, no clip; docs/geometry.md)")
    p.add_argument("--proj-dim", type=int, default=_T("proj_dim"), metavar="D",
                   help="output size D of the projector Linear(d, D), in every geometry (default: d, the CLAP "
                        "embedding size)")
    p.add_argument("--learn-c", action="store_true",
                   help="learn the curvature; with a learned linear layer this only learns the effective "
                        "temperature tau*sqrt(c), so it cannot be combined with --learn-temperature")
    p.add_argument("--learn-temperature", action=argparse.BooleanOptionalAction, default=_T("learn_temperature"),
                   help="learn the temperature (default: learned, unless --learn-c)")
    p.add_argument("--weight-decay", type=float, default=_T("weight_decay"), help="AdamW weight decay")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_T("lr_schedule"),
                   help="learning rate after warmup: cosine decay to 0, or constant")
    p.add_argument("--warmup-epochs", type=float, default=_T("warmup_epochs"), help="linear warmup, in epochs (fractions allowed)")
    p.add_argument("--grad-clip", type=float, default=_T("grad_clip"), help="max gradient norm")
    p.add_argument("--patience", type=int, default=_T("patience"), help="early stop after N epochs without improvement (0: off)")
    p.add_argument("--select-metric", choices=SELECT_METRICS, default=_T("select_metric"),
                   help="the best epoch is the one with the best value of this (default: val_mAP; with "
                        "--text-column: val_t2a_R@10)")


def _add_class_args(p: argparse.ArgumentParser) -> None:
    """Which classes train (held-out classes) and the ontology's part in training (cones, ancestors)."""
    p.add_argument("--holdout-classes", default=_T("holdout_classes"), metavar="FRACTION|FILE",
                   help="keep these classes out of training entirely: a seeded fraction of the classes "
                        "present, or a file with one class name per line (default: none)")
    p.add_argument("--holdout-seed", type=int, default=_T("holdout_seed"),
                   help="seed of a --holdout-classes fraction; fixed and independent of --seed, so runs with "
                        "different --seed hold out the same classes and differ only in the model")
    p.add_argument("--ontology", default=_T("ontology"), metavar="PATH",
                   help="AudioSet ontology.json (CLAP/class_labels/audioset_ontology.json): its abstract parents "
                        "get prompts too (needed by the two below) (default: none)")
    p.add_argument("--entailment-weight", type=float, default=_T("entailment_weight"),
                   help="weight of the entailment-cone term (clip in its labels' cones, child prompt in its "
                        "parent's); 0: off")
    p.add_argument("--entailment-k", type=float, default=_T("entailment_k"),
                   help="cone aperture constant K: psi(x) = arcsin(K (1 - c|x|^2) / (sqrt(c)|x|))")
    p.add_argument("--expand-ancestors", action="store_true",
                   help="every ontology ancestor of a clip's labels is a positive in training")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The run folder: continuing a run, keeping checkpoints, experiment tracking."""
    p.add_argument("--resume", default=_T("resume"), metavar="RUN_DIR",
                   help="continue a run from its output dir (latest epoch) or a projection_epoch_*.pth; the "
                        "run's settings (data, CLAP, every training flag) come from it, flags given here "
                        "must match them except where and how it runs (--device, --num-workers, "
                        "--cache-dir, --no-cache, --keep-epochs, swanlab) (default: start a new run)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output-dir")
    p.add_argument("--keep-epochs", type=int, default=_T("keep_epochs"), metavar="N",
                   help="keep the newest N projection_epoch_*.pth (enough to --resume); 0 keeps every epoch. "
                        "One best_projection_epoch_*.pth is always kept")
    p.add_argument("--use-swanlab", action="store_true",
                   help="log the epochs to SwanLab; its local files go under --output-dir/swanlog")
    p.add_argument("--swanlab-project", default=_T("swanlab_project"), help="SwanLab project")
    p.add_argument("--swanlab-workspace", default=_T("swanlab_workspace"), help="SwanLab workspace (default: your own)")
    p.add_argument("--swanlab-mode", default=_T("swanlab_mode"), choices=SWANLAB_MODES,
                   help="SwanLab mode (default: SwanLab's own, cloud when logged in)")


def train_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``train_hyperbolic_clap.py`` (which validates them after parsing)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--parquet-dir", help="folder of AudioSet-style .parquet files (required unless --demo or "
                                         "--resume; no default)")
    p.add_argument("--num-samples", type=num_samples_arg, default=_T("num_samples"), metavar="N|all",
                   help="use the first N rows; 'all' or 0: every row (default: all)")
    p.add_argument("--output-dir", default=_T("output_dir"),
                   help="run folder: checkpoints, setup.json, training_curves.png")
    _add_recipe_args(p)
    p.add_argument("--export-onnx", default=None, metavar="PATH.onnx",
                   help="after training, export the best checkpoint's projector and similarity head to ONNX "
                        "(default: no export)")
    _add_class_args(p)
    _add_run_args(p)
    p.add_argument("--demo", action="store_true",
                   help="train and evaluate on generated sounds with a tiny random CLAP (no download); "
                        "uses its own recipe, only --seed and --output-dir apply")
    add_embedding_args(p)
    # None tells "not given" apart: with --text-column, a --label-column given mixes class labels in.
    p.set_defaults(label_column=None)
    return p


def eval_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``test_clap_modelscope.py`` (which validates them after parsing)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--parquet-dir", default=None,
                   help="folder of AudioSet-style .parquet files (required unless --embeddings; no default)")
    p.add_argument("--projection-checkpoint", nargs="+", default=None, metavar="PATH",
                   help="projector checkpoint(s): a .pth from training or from the earlier scripts, or a "
                        "training run's --output-dir (its best checkpoint; a sweep's: the winner's). One path "
                        "with --use-hyperbolic: that projector alone. Otherwise (one path without "
                        "--use-hyperbolic, or several paths): plain CLAP and every checkpoint compared on "
                        "the same clips, one block per model under 'models' (default: plain CLAP only)")
    p.add_argument("--num-samples", type=num_samples_arg, default=_V("num_samples"), metavar="N|all",
                   help="evaluate the first N rows of the folder; 'all' or 0: every row (the log and "
                        "test_info say how many rows the folder holds and how many were used)")
    p.add_argument("--output-json", default=_V("output_json"),
                   help="results file (default: result/clap_modelscope_results_<time>.json); never overwritten")
    p.add_argument("--top-k", type=int, default=_V("top_k"), help="predictions listed per clip")
    p.add_argument("--c", type=float, default=_V("c"),
                   help="curvature; taken from the checkpoint, a differing value is reported (default: the "
                        "checkpoint's; 1.0 for a checkpoint without one)")
    p.add_argument("--temperature", type=float, default=_V("temperature"),
                   help="temperature; taken from the checkpoint, a differing value is reported (default: the "
                        "checkpoint's; 1.0 for a checkpoint without one)")
    p.add_argument("--use-hyperbolic", action="store_true",
                   help="with one --projection-checkpoint, score with that projector only (single-model "
                        "layout); with several it changes nothing (they are always compared)")
    p.add_argument("--legacy-distance", action="store_true",
                   help="hyperbolic checkpoints: the earlier scripts' projection (|y| rescaled to <= 0.9) "
                        "and distance (c outside the fraction), to reproduce their numbers")
    p.add_argument("--prompt-template", default=_V("prompt_template"),
                   help="prompt for plain CLAP (default: 'This is a sound of {label}.'); checkpoints use their own")
    p.add_argument("--set-k", type=int, default=_V("set_k"), help="predicted set = top-k classes, for precision/recall/F1")
    p.add_argument("--threshold", type=float, default=_V("threshold"),
                   help="predicted set = classes scoring >= threshold (default: none, the --set-k rule)")
    p.add_argument("--bootstrap", type=int, default=_V("bootstrap"), metavar="N",
                   help="95%% bootstrap intervals of mAP and acc@1 from N resamples of the clips (0: none)")
    p.add_argument("--bootstrap-seed", type=int, default=_V("bootstrap_seed"), help="seed of the bootstrap resamples")
    p.add_argument("--save-scores", default=_V("save_scores"), metavar="PATH.npz",
                   help="also write the (N, C) score matrix of every model, the ground truth, class names "
                        "and clip ids; never overwritten (default: not written)")
    p.add_argument("--ontology", default=_V("ontology"), metavar="PATH",
                   help="AudioSet ontology.json: adds a 'hierarchy' block per model (norm vs depth, "
                        "mistake severity, entailment-cone consistency) and colours the --plots disk by "
                        "top-level category (default: none)")
    p.add_argument("--entailment-k", type=float, default=_V("entailment_k"), metavar="K",
                   help="with --ontology: measure every model's entailment cones at this aperture K, so models "
                        "compare at one K (default: each checkpoint's own K, the default K for one without)")
    p.add_argument("--expand-ancestors", action="store_true",
                   help="ground truth closed under the ontology: a clip is also positive for every class "
                        "above one of its labels, for every metric (recorded as test_info.ground_truth)")
    p.add_argument("--plots", action="store_true",
                   help="write PNGs next to the results JSON: prompts on the Poincare disk (hyperbolic "
                        "models) and best/worst per-class AP")
    p.add_argument("--export-embeddings", default=None, metavar="DIR",
                   help="also write the clips read (their CLAP embeddings and known labels) and the class prompts' "
                        "embeddings (with --ontology, the abstract parents' too) in the --embeddings layout; "
                        "never overwrites (default: not written)")
    add_embedding_args(p)
    return p


def proj_dim_arg(text: str) -> int | None:
    """``--proj-dims``: a projection size >= 1, or ``clap`` for the CLAP embedding size (None)."""
    if text.strip().lower() == "clap":
        return None
    try:
        d = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a size >= 1 or 'clap' (got {text!r})") from None
    if d < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {d})")
    return d


def study_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``python -m hyperbolic.study``: every flag of ``train_parser`` (the recipe each
    cell trains with; ``--seed`` seeds the train/validation/eval split) and the grid's own."""
    p = train_parser(description)
    p.set_defaults(output_dir="./study")
    g = p.add_argument_group("study", "the grid; every flag above sets the recipe each cell trains with "
                                      "(--output-dir: the study folder, --seed: the split of the clips)")
    g.add_argument("--eval-parquet-dir", default=_S("eval_parquet_dir"),
                   help="folder of the eval clips, embedded once (default: none, --eval-fraction of the clips)")
    g.add_argument("--eval-embeddings", default=_S("eval_embeddings"), metavar="DIR",
                   help="the eval clips as stored embeddings (the --embeddings layout, same classes.parquet) "
                        "(default: none)")
    g.add_argument("--eval-fraction", type=float, default=_S("eval_fraction"),
                   help="without --eval-parquet-dir: this seeded fraction of the clips is kept out of training "
                        "and scores every cell")
    g.add_argument("--geometries", nargs="+", default=_S("geometries"), metavar="G",
                   help="geometries of the grid (choices as --geometry)")
    g.add_argument("--proj-dims", nargs="+", type=proj_dim_arg, default=_S("proj_dims"), metavar="D|clap",
                   help="projection sizes of the grid (default: clap, the CLAP embedding size)")
    g.add_argument("--fractions", nargs="+", type=float, default=_S("fractions"), metavar="F",
                   help="fractions of the training part each cell trains on (seeded per cell)")
    g.add_argument("--seeds", nargs="+", type=int, default=_S("seeds"), help="training seeds of every configuration")
    g.add_argument("--probe", action=argparse.BooleanOptionalAction, default=_S("probe"),
                   help="the linear-probe ceiling: a supervised linear classifier per fraction and seed")
    g.add_argument("--shard", default=_S("shard"), metavar="I/N",
                   help="worker I of N sharing --output-dir: it runs the cells k with k mod N == I, each claimed "
                        "atomically, then rebuilds the summary from every finished cell")
    g.add_argument("--bootstrap", type=int, default=_S("bootstrap"), metavar="N",
                   help="paired clip resamples of the summary's intervals (seeds averaged inside each)")
    g.add_argument("--bootstrap-seed", type=int, default=_S("bootstrap_seed"), help="seed of the bootstrap resamples")
    g.add_argument("--summary-only", action="store_true",
                   help="rebuild study.json, the table and the plots from the finished cells; train nothing")
    return p
