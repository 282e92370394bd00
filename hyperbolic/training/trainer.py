"""One training step's machinery over precomputed CLAP embeddings: the projector, its geometry,
the optimizer and its groups, the learning-rate schedule, the objective of a batch and the
validation of an epoch. ``hyperbolic.training.train`` runs the epochs; ``hyperbolic.training.captions``
subclasses ``Trainer`` for captions.
"""

from __future__ import annotations

import logging
import math

import torch

from hyperbolic.config import TrainConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.errors import TrainingError  # noqa: F401 (re-exported)
from hyperbolic.evaluation.ball_usage import epoch_usage
from hyperbolic.hierarchy.cones import EntailmentObjective
from hyperbolic.metrics.classification import classification_metrics
from hyperbolic.model.projector import SCALED_GEOMETRIES, Geometry, Projector, similarity
from hyperbolic.training import objective
from hyperbolic.training.objective import multi_positive_contrastive

log = logging.getLogger(__name__)

def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: ``decay`` holds the weight matrices (ndim >= 2) with ``weight_decay``;
    ``no_decay`` holds everything else (biases, log c, log tau, any other scalar) with 0, as
    CLIP and MERU do: decaying log c or log tau would pull c and tau towards 1 whatever their
    start. Empty groups are left out. The names show in the checkpoint's optimizer state."""
    groups = [{"name": "decay", "params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"name": "no_decay", "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def upgrade_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer, params: list) -> dict:
    """A checkpoint's optimizer state in ``optimizer``'s groups.

    Checkpoints written before ``param_groups`` hold one group over ``params`` in that order
    (weight decay on every parameter); their per-parameter state (Adam moments, step) is moved
    to the parameters' new groups, and the hyperparameters other than weight_decay kept."""
    if len(saved["param_groups"]) == len(optimizer.param_groups):
        return saved
    (old_group,) = saved["param_groups"]
    if len(old_group["params"]) != len(params):
        raise TrainingError(f"the checkpoint's optimizer holds {len(old_group['params'])} parameters, this run "
                            f"trains {len(params)}; resume with the run's settings")
    old_id = {id(p): i for p, i in zip(params, old_group["params"])}
    groups, state, new_id = [], {}, 0
    for group in optimizer.param_groups:
        ids = []
        for p in group["params"]:
            if old_id[id(p)] in saved["state"]:
                state[new_id] = saved["state"][old_id[id(p)]]
            ids.append(new_id)
            new_id += 1
        groups.append({**{k: v for k, v in old_group.items() if k != "params"},
                       "name": group["name"], "weight_decay": group["weight_decay"], "params": ids})
    if old_group.get("weight_decay"):
        log.warning("resuming a checkpoint whose optimizer decayed every parameter (weight_decay %g); from now "
                    "on only the weight matrix decays, so the run differs from its uninterrupted self",
                    old_group["weight_decay"])
    return {"state": state, "param_groups": groups}


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Projector + geometry + objective over precomputed embeddings.

    ``prompts`` holds the embeddings of all classes (then, with an ontology, of its abstract
    parents: ``Hierarchy.prompt_names``); ``seen`` the class indices training may use (all but the
    held-out ones), so held-out prompts are never projected during training. ``entailment``: the
    ontology's pairs; its label expansion applies whenever it is given (a no-op without
    ``--expand-ancestors``), its cone term when ``cfg.entailment_weight > 0``.
    """

    def __init__(self, cfg: TrainConfig, embed_dim: int, prompts: torch.Tensor, seen: list[int],
                 entailment: EntailmentObjective | None = None, init_audio: torch.Tensor | None = None):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.projector = Projector(embed_dim, geometry=cfg.geometry, clip_r=cfg.clip_r, clip_mode=cfg.clip_mode,
                                   proj_dim=cfg.proj_dim)
        if cfg.init_radius is not None and cfg.geometry in SCALED_GEOMETRIES and init_audio is not None:
            # --init-radius: the training audio starts at this fraction of the ball radius (for
            # euclidean-distance: at the tangent norm that radius has), whatever --proj-dim.
            self.projector.scale_to_radius_(init_audio, c=cfg.c, radius=cfg.init_radius)
        self.geometry = Geometry(cfg.c, cfg.temperature, learn_c=cfg.learn_c and cfg.geometry == "hyperbolic",
                                 learn_temperature=cfg.learn_temperature)
        self.prompts = prompts
        self.seen = seen
        self.entailment = entailment
        self.params = [p for p in [*self.projector.parameters(), *self.geometry.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(self.params, cfg.weight_decay), lr=cfg.learning_rate)
        # Validation scores the prompts training contrasts with: the seen classes and, when
        # ancestors are positives, the abstract parents' prompts (prompt rows C..P-1).
        expands = entailment is not None and entailment.hierarchy.expand_ancestors
        self.val_columns = list(seen) + (list(range(entailment.hierarchy.num_classes, prompts.shape[0]))
                                         if expands else [])

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.point_logits(*self.points(audio, text))

    def points(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.geometry.c
        return self.projector(audio, c=c), self.projector(text, c=c)

    def point_logits(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return similarity(a, t, geometry=self.cfg.geometry, c=self.geometry.c, temperature=self.geometry.temperature)

    def batch_loss(self, audio: torch.Tensor, labels: list[list[int]], first: list[int]) -> torch.Tensor:
        """The objective (``hyperbolic.training.objective.batch_loss``) of one batch of CLAP audio embeddings."""
        c = self.geometry.c
        return objective.batch_loss(self.projector(audio, c=c), labels, first, prompts=self.prompts,
                                    project=lambda x: self.projector(x, c=c), logits=self.point_logits,
                                    text_pairing=self.cfg.text_pairing, negatives=self.cfg.negatives, seen=self.seen,
                                    entailment=self.entailment, entailment_weight=self.cfg.entailment_weight, c=c)

    def batches(self, clips: ClipEmbeddings, order: list[int]):
        size = self.cfg.batch_size
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            yield (clips.audio[rows], [clips.label_indices[i] for i in rows],
                   [clips.first_label[i] for i in rows])

    @torch.no_grad()
    def validate(self, clips: ClipEmbeddings) -> dict:
        """Validation loss and mAP on the whole validation set against every seen class prompt.

        The loss is the all-labels objective over that full (N_val, C_seen) matrix, whatever
        --text-pairing trains with: it does not depend on batching, and a set of one clip (or of
        clips sharing one label set) still has negatives, so it is never a placeholder 0.
        The ground truth is the one training uses (``batch_loss``): with --expand-ancestors every
        ancestor of a clip's labels is a positive, and the abstract parents' prompts are columns
        (``val_columns``), so an epoch that learns the hierarchy is not scored as wrong."""
        labels = clips.label_indices if self.entailment is None else self.entailment.expand(clips.label_indices)
        full = torch.zeros(len(labels), self.prompts.shape[0], dtype=torch.bool)
        for i, row in enumerate(labels):
            full[i, row] = True
        a, t = self.points(clips.audio, self.prompts[self.val_columns])
        scores = self.point_logits(a, t)
        targets = full[:, self.val_columns]
        loss = multi_positive_contrastive(scores, targets)
        scores, targets = scores.numpy(), targets.numpy()
        return {
            "val_loss": loss.item(),
            "val_mAP": classification_metrics(scores, targets)["mAP"],
            "val_mean_pos_sim": float(scores[targets].mean()),
            "val_mean_neg_sim": float(scores[~targets].mean()),
            **self.usage(a, t),
        }

    def usage(self, a: torch.Tensor, t: torch.Tensor) -> dict:
        """Median relative radius and fraction on the clip sphere of validation audio ``a`` and
        texts ``t`` (hyperbolic only; ``ball_usage.epoch_usage``)."""
        if self.cfg.geometry != "hyperbolic":
            return {}
        return epoch_usage(a, t, c=self.geometry.c.item(), clip_radius=self.projector.clip_r)

    def state(self) -> dict:
        return {"c": self.geometry.c.item(), "temperature": self.geometry.temperature.item(),
                "effective_temperature": self.geometry.effective_temperature.item()}
