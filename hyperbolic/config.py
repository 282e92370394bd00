"""The effective configuration of a run: written to the output folder and into every checkpoint.

The one home of every setting's default, its allowed values (``choices`` in a field's metadata)
and its checks (``problems``/``validate``). ``hyperbolic.cli`` builds each flag's default from the
field of the same name (``default_of``), so a default is written once; the scripts and the
library's entry points (``hyperbolic.training.train.train``, ``hyperbolic.evaluation.evaluate.evaluate``)
run the same checks, with the same messages, each naming the flag and the fix. A few defaults
depend on other settings; ``__post_init__`` decides them, for a configuration built from flags and
one built in code alike."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hyperbolic.errors import ConfigError
from hyperbolic.geometry.constants import DEFAULT_K, clip_radius_resolvable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLASS_LABELS = REPO_ROOT / "CLAP" / "class_labels" / "audioset_class_labels_indices.json"
DEFAULT_PROMPT_TEMPLATE = "This is a sound of {label}."
DEFAULT_CHECKPOINT = "laion/larger_clap_general"
TEXT_PAIRINGS = ("all-labels", "first-label")
NEGATIVES = ("in-batch", "all-classes")
LR_SCHEDULES = ("cosine", "constant")
SELECT_METRICS = ("val_mAP", "val_loss", "val_t2a_R@10", "val_t2a_mAP@10")  # the last two: --text-column
PRECISIONS = ("fp32", "bf16", "fp16")  # of the CLAP forward; see hyperbolic.embedding.clap
GEOMETRIES = ("hyperbolic", "euclidean", "euclidean-distance")  # of the projector: hyperbolic.model.projector
CLIP_MODES = ("inward", "straight-through", "hard")  # gradient rule of the clip: hyperbolic.model.projector
SWANLAB_MODES = ("cloud", "online", "local", "offline", "disabled")


def choice(default, choices: tuple, *, optional: bool = False):
    """A field whose value must be one of ``choices`` (or None when ``optional``)."""
    return field(default=default, metadata={"choices": choices, "optional": optional})


def flag(name: str) -> str:
    """The command-line flag of a configuration field: ``entailment_k`` -> ``--entailment-k``."""
    return "--" + name.replace("_", "-")


def default_of(cls, name: str):
    """The default of field ``name`` of dataclass ``cls`` (its factory's value for a list or a
    count decided at run time): what the flag of that name defaults to."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _finite_non_negative(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


@dataclass(kw_only=True)
class EmbeddingConfig:
    """How clips and prompts reach the frozen CLAP: the settings training and evaluation share."""

    parquet_dir: str | None = None  # (or embeddings) the data: required, one of the two
    device: str = "cuda:0"
    checkpoint: str = DEFAULT_CHECKPOINT
    class_labels: str = str(DEFAULT_CLASS_LABELS)
    label_column: str = "human_labels"
    embed_batch_size: int = 32
    num_workers: int | None = None   # decoding workers; None: chosen per run (hyperbolic.embedding.split.choose_split)
    full_batches: bool = True        # forward batches of embed_batch_size clips across units (embedding.batches)
    cache_dir: str | None = None
    no_cache: bool = False
    precision: str = choice("fp32", PRECISIONS)  # of the CLAP forward (hyperbolic.embedding.clap)
    segment: float | None = None     # seconds per window over whole recordings (data.audio.Segmenting)
    hop: float | None = None         # seconds between windows (default: segment)
    text_column: list[str] | None = None  # caption column(s): retrieval / caption training (data.captions)
    clip_id_column: str = "video_id"      # rows sharing it are one clip (with --text-column)
    embeddings: str | None = None         # --embeddings DIR: stored embeddings instead of parquet + CLAP (embedding.stored)

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """Every invalid setting, as the message the scripts print: the flag and the fix. The
        task's own settings first, then the embedding stage's."""
        return _choice_problems(self) + self._task_problems() + self._embedding_problems()

    def _task_problems(self) -> list[str]:
        return []

    def _embedding_problems(self) -> list[str]:
        from data.audio import segmenting_from
        sources = [name for name, given in (("--parquet-dir", self.parquet_dir), ("--embeddings", self.embeddings))
                   if given]
        out = [message for failed, message in [
            (len(sources) > 1, "--parquet-dir and --embeddings both name the data; give one of them"),
            (bool(self.embeddings) and bool(self.text_column),
             "--embeddings holds class-labelled clips; caption runs (--text-column) need --parquet-dir"),
            (bool(self.embeddings) and self.class_labels != str(DEFAULT_CLASS_LABELS),
             "--class-labels is not used with --embeddings: the class list is the classes of DIR/classes.parquet; "
             "leave --class-labels out"),
            (self.embed_batch_size < 1, f"--embed-batch-size must be >= 1 (got {self.embed_batch_size})"),
            (self.num_workers is not None and self.num_workers < 0,
             f"--num-workers must be >= 0 (got {self.num_workers})"),
            (self.precision == "fp16" and self.device == "cpu",
             "--precision fp16 needs a CUDA --device; on the CPU use --precision bf16 or fp32"),
        ] if failed]
        try:
            segmenting_from(self.segment, self.hop)
        except ValueError as err:
            out.append(str(err))
        return out

    def validate(self) -> None:
        """Raise ``ConfigError`` with every problem (``problems``), one per line."""
        messages = self.problems()
        if messages:
            raise ConfigError("\n".join(messages))


def _choice_problems(cfg) -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        allowed = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if allowed is None or (value is None and f.metadata.get("optional")):
            continue
        if value not in allowed:
            out.append(f"{flag(f.name)} must be one of {', '.join(allowed)} (got {value!r})")
    return out


@dataclass(kw_only=True)
class TrainConfig(EmbeddingConfig):
    num_samples: int | None = None
    output_dir: str = "./checkpoints_hyperbolic"
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-2     # default recipe: docs/geometry.md "Choosing the recipe"
    c: float = 1.0
    temperature: float = 0.1
    train_ratio: float = 0.8
    seed: int = 42
    clip_r: float = 0.9
    clip_mode: str = choice("inward", CLIP_MODES)  # gradient rule of the clip (hyperbolic.model.projector)
    # Median relative radius of the training audio at init; None: Xavier as is (0 on the command
    # line means None).
    init_radius: float | None = 0.5
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    text_pairing: str = choice("all-labels", TEXT_PAIRINGS)
    negatives: str = choice("in-batch", NEGATIVES)  # classes a clip is contrasted with
    geometry: str = choice("hyperbolic", GEOMETRIES)
    proj_dim: int | None = None      # D of the projector Linear(d, D) (None: d, the CLAP embedding size)
    learn_c: bool = False
    learn_temperature: bool | None = None  # None: learned unless learn_c (the pair is refused)
    weight_decay: float = 0.0
    lr_schedule: str = choice("cosine", LR_SCHEDULES)
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0
    patience: int = 0
    # None: val_t2a_R@10 with text_column (caption training), else val_mAP.
    select_metric: str | None = choice(None, SELECT_METRICS, optional=True)
    holdout_classes: str | None = None
    # Seed of a --holdout-classes fraction, fixed so --seed varies the model only; 42, the default
    # --seed, so a command that gives neither holds out the classes it held out before the flag.
    holdout_seed: int = 42
    ontology: str | None = None
    entailment_weight: float = 0.0
    entailment_k: float = DEFAULT_K
    expand_ancestors: bool = False
    caption_labels: bool = False     # with text_column: class labels (--label-column given) mixed in
    resume: str | None = None
    overwrite: bool = False
    keep_epochs: int = 3             # per-epoch checkpoints kept (the newest); 0 keeps all
    use_swanlab: bool = False
    swanlab_project: str = "Hyperbolic_CLAP"
    swanlab_workspace: str | None = None
    swanlab_mode: str | None = choice(None, SWANLAB_MODES, optional=True)

    def __post_init__(self) -> None:
        # The defaults that depend on other settings, decided once here.
        if self.learn_temperature is None:
            self.learn_temperature = not self.learn_c
        if self.init_radius == 0:
            self.init_radius = None
        if self.select_metric is None:
            self.select_metric = "val_t2a_R@10" if self.text_column else "val_mAP"

    def _task_problems(self) -> list[str]:
        return [message for failed, message in [
            (self.epochs < 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size < 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (not _finite_positive(self.learning_rate),
             f"--learning-rate must be a finite number > 0 (got {self.learning_rate})"),
            (not _finite_positive(self.c), f"--c must be > 0 and finite (got {self.c:g})"),
            (not _finite_positive(self.temperature), f"--temperature must be > 0 and finite (got {self.temperature:g})"),
            (not 0 < self.train_ratio < 1, f"--train-ratio must be in (0, 1) (got {self.train_ratio})"),
            (not 0 < self.clip_r <= 1, f"--clip-r must be in (0, 1] (got {self.clip_r})"),
            (0 < self.clip_r <= 1 and self.geometry == "hyperbolic" and not clip_radius_resolvable(self.clip_r),
             f"--clip-r {self.clip_r:g} lets points reach relative radius {min(self.clip_r, 1 - 1e-6):.7f}, where "
             "1 - c|x|^2 is within float32's resolution of 0 (hyperbolic.geometry.poincare.BOUNDARY_RESOLUTION): "
             "distances there are rounding noise, not geometry; use --clip-r 0.999 or less"),
            (self.init_radius is not None and not 0 < self.init_radius < min(1.0, self.clip_r),
             f"--init-radius must be in [0, --clip-r) (0: no rescaling; got {self.init_radius})"),
            (self.learn_c and self.learn_temperature,
             "--learn-c with --learn-temperature: (W, b, c, tau) and (sqrt(c) W, sqrt(c) b, 1, tau sqrt(c)) give the "
             "same logits, so with a learned layer c only moves the effective temperature tau*sqrt(c), which "
             "--learn-temperature already learns; the pair has a direction the loss cannot see. Use one of them"),
            (self.negatives == "in-batch" and self.batch_size == 1 and self.text_pairing == "all-labels",
             "--batch-size 1 with --negatives in-batch: a clip's only candidates are its own labels, so the loss is 0 "
             "and nothing trains; use --negatives all-classes or a larger --batch-size"),
            (self.text_pairing == "first-label" and self.batch_size == 1,
             "--batch-size 1 with --text-pairing first-label: the one clip has no other text to be contrasted with, "
             "so the loss is 0; use a larger --batch-size"),
            ("{label}" not in self.prompt_template,
             f"--prompt-template must contain {{label}} (got {self.prompt_template!r})"),
            (not _finite_non_negative(self.weight_decay),
             f"--weight-decay must be a finite number >= 0 (got {self.weight_decay})"),
            (not _finite_non_negative(self.warmup_epochs),
             f"--warmup-epochs must be a finite number >= 0 (got {self.warmup_epochs})"),
            (not _finite_positive(self.grad_clip), f"--grad-clip must be a finite number > 0 (got {self.grad_clip})"),
            (self.proj_dim is not None and self.proj_dim < 1,
             f"--proj-dim must be >= 1 (or left out: the CLAP embedding size) (got {self.proj_dim})"),
            (self.learn_c and self.geometry != "hyperbolic",
             f"--learn-c needs --geometry hyperbolic: --geometry {self.geometry} has no curvature to learn"),
            (self.patience < 0, f"--patience must be >= 0 (got {self.patience})"),
            (self.keep_epochs < 0, f"--keep-epochs must be >= 0 (0 keeps every epoch) (got {self.keep_epochs})"),
            (self.entailment_weight < 0, f"--entailment-weight must be >= 0 (got {self.entailment_weight})"),
            (not self.entailment_k > 0, f"--entailment-k must be > 0 (got {self.entailment_k})"),
            ((self.entailment_weight > 0 and not self.text_column or self.expand_ancestors) and not self.ontology,
             "--entailment-weight > 0 and --expand-ancestors need --ontology PATH (AudioSet's ontology.json); "
             "with --text-column the cone pairs are caption -> clip and need no ontology"),
            (self.select_metric.startswith("val_t2a") and not self.text_column,
             f"--select-metric {self.select_metric} is a caption retrieval metric; it needs --text-column COL"),
            *[(self.text_column and value, f"{name} works on class labels and is not available with --text-column")
              for name, value in (("--ontology", self.ontology), ("--holdout-classes", self.holdout_classes),
                                  ("--expand-ancestors", self.expand_ancestors))],
            (self.entailment_weight > 0 and self.geometry != "hyperbolic",
             "--entailment-weight > 0 needs --geometry hyperbolic: entailment cones live on the Poincare ball"),
            (self.expand_ancestors and self.text_pairing == "first-label",
             "--expand-ancestors adds positives, which --text-pairing first-label (one text per clip) cannot use; "
             "use --text-pairing all-labels"),
        ] if failed]


@dataclass(kw_only=True)
class EvalConfig(EmbeddingConfig):
    num_samples: int | None = 100
    output_json: str | None = None
    top_k: int = 10
    c: float | None = None
    temperature: float | None = None
    use_hyperbolic: bool = False
    legacy_distance: bool = False
    prompt_template: str | None = None
    set_k: int = 5
    threshold: float | None = None
    result_dir: str = str(REPO_ROOT / "result")
    # --projection-checkpoint: none, one, or several (a comparison run with plain CLAP); which
    # models run is hyperbolic.evaluation.scoring.plan_models.
    projection_checkpoints: list[str] = field(default_factory=list)
    bootstrap: int = 0
    bootstrap_seed: int = 0
    save_scores: str | None = None
    ontology: str | None = None
    # Ground truth closed under the ontology's ancestry for every metric (see hyperbolic.evaluation.evaluate).
    expand_ancestors: bool = False
    plots: bool = False
    entailment_k: float | None = None  # cone aperture K for every model's cones (None: each checkpoint's own)
    export_embeddings: str | None = None  # write the clips and prompts read in the --embeddings layout

    def _task_problems(self) -> list[str]:
        paths = self.projection_checkpoints
        return [message for failed, message in [
            (self.top_k < 1, f"--top-k must be >= 1 (got {self.top_k})"),
            (self.set_k < 1, f"--set-k must be >= 1 (got {self.set_k})"),
            (self.c is not None and not _finite_positive(self.c), f"--c must be > 0 and finite (got {self.c})"),
            (self.temperature is not None and not _finite_positive(self.temperature),
             f"--temperature must be > 0 and finite (got {self.temperature})"),
            (self.use_hyperbolic and not paths, "--use-hyperbolic needs --projection-checkpoint PATH"),
            (self.expand_ancestors and not self.ontology,
             "--expand-ancestors needs --ontology PATH (the ontology whose ancestors are added)"),
            (self.legacy_distance and not paths, "--legacy-distance needs --projection-checkpoint PATH"),
            (self.prompt_template is not None and "{label}" not in self.prompt_template,
             f"--prompt-template must contain {{label}} (got {self.prompt_template!r})"),
            (self.bootstrap < 0, f"--bootstrap must be >= 0 (got {self.bootstrap})"),
            (self.threshold is not None and not math.isfinite(self.threshold),
             f"--threshold must be a finite number (got {self.threshold})"),
            (self.save_scores is not None and not self.save_scores.endswith(".npz"),
             f"--save-scores must name a .npz file (got {self.save_scores!r})"),
            (self.parquet_dir is None and self.embeddings is None,
             "--parquet-dir is required (or --embeddings DIR: stored embeddings, docs/data.md)"),
            (self.export_embeddings is not None and self.parquet_dir is None,
             "--export-embeddings writes the CLAP embeddings of --parquet-dir; give --parquet-dir"),
            (self.export_embeddings is not None and self.text_column,
             "--export-embeddings writes class-labelled clips; caption retrieval (--text-column) cannot export"),
            (len(set(paths)) != len(paths), "--projection-checkpoint lists a path twice; give each checkpoint once"),
            (self.entailment_k is not None and not _finite_positive(self.entailment_k),
             f"--entailment-k must be > 0 and finite (got {self.entailment_k})"),
            (self.entailment_k is not None and not self.ontology,
             "--entailment-k needs --ontology PATH (the cones it measures)"),
            *[(self.text_column and value, f"{name} is for class labels; caption retrieval (--text-column) "
                                           "does not use it") for name, value in (
                ("--ontology", self.ontology), ("--expand-ancestors", self.expand_ancestors), ("--plots", self.plots),
                ("--threshold", self.threshold is not None))],
        ] if failed]


@dataclass(kw_only=True)
class StudyConfig:
    """The grid of ``python -m hyperbolic.study`` (``hyperbolic.study``): every cell trains with
    ``recipe`` (the training flags), its geometry, projection size, data fraction and seed set."""

    recipe: TrainConfig
    eval_parquet_dir: str | None = None  # the eval clips; None: --eval-fraction of the clips
    eval_embeddings: str | None = None   # the eval clips as stored embeddings (hyperbolic.embedding.stored)
    eval_fraction: float = 0.2           # of the clips, kept out of training for evaluation (no eval folder)
    geometries: list[str] = field(default_factory=lambda: list(GEOMETRIES))
    proj_dims: list[int | None] = field(default_factory=lambda: [None])  # None: the CLAP embedding size
    fractions: list[float] = field(default_factory=lambda: [1.0])        # of the training part, per cell
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    probe: bool = True                   # the linear-probe ceiling row
    shard: str = "0/1"                   # I/N: this worker's share of the cells
    bootstrap: int = 1000                # paired clip resamples of the summary (hyperbolic.metrics.bootstrap)
    bootstrap_seed: int = 0
    summary_only: bool = False           # rebuild study.json from the finished cells, train nothing

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """The grid's invalid settings, then the recipe's (``TrainConfig.problems``), each naming
        the flag and the fix. ``--shard`` is checked by ``hyperbolic.study.grid.parse_shard``."""
        return [message for failed, message in [
            *[(g not in GEOMETRIES, f"--geometries: unknown geometry {g!r}; choose from {', '.join(GEOMETRIES)}")
              for g in self.geometries],
            *[(d is not None and d < 1, f"--proj-dims must be >= 1 or clap (got {d})") for d in self.proj_dims],
            *[(not 0 < f <= 1, f"--fractions must be in (0, 1] (got {f:g})") for f in self.fractions],
            (not self.seeds, "--seeds needs at least one seed"),
            (not 0 < self.eval_fraction < 1, f"--eval-fraction must be in (0, 1) (got {self.eval_fraction:g})"),
            (self.bootstrap < 1, f"--bootstrap must be >= 1: the summary's intervals need resamples (got {self.bootstrap})"),
            (self.recipe.text_column, "--text-column: a study scores classes; caption runs are not a study axis"),
            (self.recipe.entailment_weight > 0 and any(g != "hyperbolic" for g in self.geometries),
             "--entailment-weight > 0 trains entailment cones, which live on the Poincare ball: use "
             "--geometries hyperbolic (and run the controls in a study without cones)"),
            (bool(self.eval_parquet_dir) and bool(self.eval_embeddings),
             "--eval-parquet-dir and --eval-embeddings both name the eval clips; give one of them"),
        ] if failed] + self.recipe.problems()
