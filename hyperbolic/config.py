"""The effective configuration of a run: written to the output folder and into every checkpoint."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLASS_LABELS = REPO_ROOT / "CLAP" / "class_labels" / "audioset_class_labels_indices.json"
DEFAULT_PROMPT_TEMPLATE = "This is a sound of {label}."
DEFAULT_CHECKPOINT = "laion/larger_clap_general"
TEXT_PAIRINGS = ("all-labels", "first-label")
NEGATIVES = ("in-batch", "all-classes")
LR_SCHEDULES = ("cosine", "constant")
SELECT_METRICS = ("val_mAP", "val_loss", "val_t2a_R@10", "val_t2a_mAP@10")  # the last two: --text-column
PRECISIONS = ("fp32", "bf16", "fp16")  # of the CLAP forward; see hyperbolic.embedding.clap


def default_num_workers() -> int:
    """Decoding workers: one per spare core (the main process runs the model), at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass(kw_only=True)
class EmbeddingConfig:
    """How clips and prompts reach the frozen CLAP: the settings training and evaluation share."""

    parquet_dir: str
    device: str = "cuda:0"
    checkpoint: str = DEFAULT_CHECKPOINT
    class_labels: str = str(DEFAULT_CLASS_LABELS)
    label_column: str = "human_labels"
    embed_batch_size: int = 32
    num_workers: int = field(default_factory=default_num_workers)
    cache_dir: str | None = None
    no_cache: bool = False
    precision: str = "fp32"          # of the CLAP forward: fp32, bf16, fp16 (hyperbolic.embedding.clap)
    segment: float | None = None     # seconds per window over whole recordings (data.audio.Segmenting)
    hop: float | None = None         # seconds between windows (default: segment)
    text_column: list[str] | None = None  # caption column(s): retrieval / caption training (data.captions)
    clip_id_column: str = "video_id"      # rows sharing it are one clip (with --text-column)

    def to_dict(self) -> dict:
        return asdict(self)


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
    clip_mode: str = "inward"        # gradient rule of the clip (hyperbolic.model.projector.clip_tangent)
    init_radius: float | None = 0.5   # median relative radius of the training audio at init (None: Xavier as is)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    text_pairing: str = "all-labels"
    negatives: str = "in-batch"      # classes a clip is contrasted with: NEGATIVES
    geometry: str = "hyperbolic"
    learn_c: bool = False
    learn_temperature: bool = True   # refused together with learn_c (hyperbolic.training.train)
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0
    patience: int = 0
    select_metric: str = "val_mAP"
    holdout_classes: str | None = None
    holdout_seed: int = 0            # seed of a --holdout-classes fraction, fixed so --seed varies the model only
    ontology: str | None = None
    entailment_weight: float = 0.0
    entailment_k: float = 0.1
    expand_ancestors: bool = False
    caption_labels: bool = False     # with text_column: class labels (--label-column given) mixed in
    resume: str | None = None
    overwrite: bool = False
    keep_epochs: int = 3             # per-epoch checkpoints kept (the newest); 0 keeps all
    use_swanlab: bool = False
    swanlab_project: str = "Hyperbolic_CLAP"
    swanlab_workspace: str | None = None
    swanlab_mode: str | None = None


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
    # models run is hyperbolic.evaluation.evaluate.plan_models.
    projection_checkpoints: list[str] = field(default_factory=list)
    bootstrap: int = 0
    bootstrap_seed: int = 0
    save_scores: str | None = None
    ontology: str | None = None
    # Ground truth closed under the ontology's ancestry for every metric (see hyperbolic.evaluation.evaluate).
    expand_ancestors: bool = False
    plots: bool = False
    entailment_k: float | None = None  # cone aperture K for every model's cones (None: each checkpoint's own)
