"""The ``hierarchy`` block of the results (``--ontology``): the ontology matched to the class
list, the ground truth closed under ancestry (``--expand-ancestors``), norm-versus-depth rank
correlations, mistake severity and entailment-cone consistency of one model.

With an ontology, each hyperbolic model's ``hierarchy.cones`` measures entailment cones
(``entailment.cone_report``) on the pairs training uses (see ``CONE_PAIRS_TEXT``), at the K of
the checkpoint's ``config.entailment_k`` (``entailment.DEFAULT_K`` if it has none). Cosine and
euclidean models have no cones (``CONE_SKIPPED``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hyperbolic.evaluation.ball_usage import radius_resolved, relative_radius
from hyperbolic.evaluation.scoring import ScoringModel
from hyperbolic.geometry import poincare
from hyperbolic.hierarchy.cones import Hierarchy, cone_consistency, cone_report
from hyperbolic.hierarchy.ontology import Ontology, OntologyError
from hyperbolic.metrics.hierarchy import (
    backoff_curve,
    closure_matrix,
    hierarchical_prf,
    map_with_depths,
    mistake_severity,
    spearman_norm_depth,
    traversal_summary,
)

log = logging.getLogger("hyperbolic.evaluation.evaluate")

HIER_K = 5  # hier_dist@k reported with --ontology


def _spearman(norms: np.ndarray, depths: np.ndarray, what: str, unresolved: str | None = None) -> dict:
    if unresolved:
        return {"rho": None, "p_value": None, "n": int(len(norms)), "norm": what, "skipped": unresolved}
    if len(norms) < 2:
        return {"rho": None, "p_value": None, "n": int(len(norms)), "norm": what,
                "skipped": "fewer than 2 classes"}
    return {**spearman_norm_depth(norms, depths), "norm": what}


@dataclass
class HierarchyContext:
    """What every model's hierarchy block shares: the ontology matched to the class list.

    ``hierarchy`` is the one training builds (``entailment.Hierarchy``): prompt nodes are the
    classes, then every ontology node above a matched class that is not a class (abstract
    parents), and its direct parent -> child edges among them are the cone pairs. The class-level
    views below are read from it.
    """

    ontology: Ontology
    hierarchy: Hierarchy

    @classmethod
    def build(cls, ontology: Ontology, class_names: list[str], *, expand_ancestors: bool = False,
              available=None) -> HierarchyContext:
        """``available``: as ``Hierarchy.build`` takes it (``--embeddings``: which abstract parents
        have a stored prompt)."""
        try:
            hierarchy = Hierarchy.build(ontology, class_names, expand_ancestors=expand_ancestors, available=available)
        except ValueError as err:  # two class names on one node: cones and ancestors are ambiguous
            raise OntologyError(f"--ontology {ontology.source}: {err}; give each class a distinct name") from err
        if hierarchy.unmatched:
            log.warning("%d of %d classes match no ontology node (first: %s)", len(hierarchy.unmatched),
                        len(class_names), "; ".join(hierarchy.unmatched[:5]))
        return cls(ontology, hierarchy)

    @property
    def node_ids(self) -> list[str | None]:
        """Each class's ontology node id; None for an unmatched class."""
        return list(self.hierarchy.node_ids[:self.hierarchy.num_classes])

    @property
    def unmatched(self) -> list[str]:
        return list(self.hierarchy.unmatched)

    @property
    def depths(self) -> list[int | None]:
        return list(self.hierarchy.depth[:self.hierarchy.num_classes])

    @property
    def parents(self) -> dict[int, set[int]]:
        """Direct parents over prompt indices (classes, then the nodes above them), as
        ``metrics.mistake_severity`` takes them; nodes without a parent have no entry."""
        return {k: set(ps) for k, ps in enumerate(self.hierarchy.parents) if ps}

    def summary(self, path: str) -> dict:
        h = self.hierarchy
        return {"path": path, "nodes": len(self.ontology), "classes_matched": len(self.node_ids) - len(self.unmatched),
                "unmatched": self.unmatched,
                "depth": "fewest edges from a top-level category (depth 0) down to the class's node",
                "distance": "LCA height (metrics.class_distance_matrix) over the classes and their "
                            "ontology ancestors; unmatched classes meet the rest only at a virtual root",
                "extra_prompts": list(h.extra_names), "cone_prompt_pairs": int(h.parent_child.shape[0]),
                "abstract_parents_linked_past": len(h.linked_past), "linked_past": list(h.linked_past),
                "cone_class_pairs": int(h.edges(range(h.num_classes)).shape[0]),
                "cone_pairs": CONE_PAIRS_TEXT}


CONE_PAIRS_TEXT = (
    "prompt pairs: every direct ontology edge parent -> child among the prompt nodes (the classes and every "
    "ontology node above a matched class; abstract parents get a prompt with the model's template), the "
    "pairs training uses; class pairs: each class to its nearest class ancestors (abstract nodes passed "
    "through); clip pairs: each labelled clip with each label of the run's ground truth (with "
    "--expand-ancestors also every ontology ancestor, abstract ones included, as training does)")
CONE_SKIPPED = ("entailment cones live on the Poincare ball (the aperture depends on the distance from the "
                "origin); cosine and euclidean models have none")


def expand_to_ancestors(targets: np.ndarray, hierarchy: Hierarchy) -> np.ndarray:
    """Ground truth closed under ancestry: ``(N, C)`` bool -> ``(N, C)`` bool, each clip also
    positive for every class above one of its labels in the ontology (classes only: abstract
    nodes have no score column). Rows without a label stay empty."""
    out = targets.copy()
    num_classes = targets.shape[1]
    for k, above in enumerate(hierarchy.ancestors):
        classes = [a for a in above if a < num_classes]  # ancestors is already transitive
        rows = np.flatnonzero(targets[:, k])
        if classes and len(rows):
            out[np.ix_(rows, classes)] = True
    return out


@torch.no_grad()
def cone_block(model: ScoringModel, prompt_pts, audio_pts, clip_labels: list[list[int]],
           hier: HierarchyContext) -> dict:
    """Entailment-cone consistency of one model; see ``CONE_PAIRS_TEXT`` for the pairs.

    ``prompt_pts`` (P, D): the projected prompts of ``hier.hierarchy.prompt_names``;
    ``audio_pts`` (N, D) the labelled clips' points; ``clip_labels`` their prompt indices.
    ``entailment.cone_report`` plus ``class_pairs_in_cone``. K is the checkpoint's.
    """
    h = hier.hierarchy
    class_pairs = h.edges(range(h.num_classes))
    counts = {"prompt_pairs": int(h.parent_child.shape[0]), "class_pairs": int(class_pairs.shape[0]),
              "clip_label_pairs": sum(len(row) for row in clip_labels), "clips": len(clip_labels)}
    if model.projector is None or model.geometry != "hyperbolic":
        return {"K": None, **counts, "prompt_pairs_in_cone": None, "class_pairs_in_cone": None,
                "clip_label_pairs_in_cone": None, "clips_in_all_label_cones": None, "norm_depth": None,
                "skipped": CONE_SKIPPED}
    c, K = model.c, model.entailment_k
    out = cone_report(prompt_pts, h.parent_child, h.depth, c=c, K=K, clip_pts=audio_pts, labels=clip_labels)
    out.update(counts, K_source=model.info.get("entailment_k_source", "default (hyperbolic.hierarchy.cones.DEFAULT_K)"))
    out["class_pairs_in_cone"] = (cone_consistency(prompt_pts[class_pairs[:, 0]], prompt_pts[class_pairs[:, 1]],
                                                   c=c, K=K) if len(class_pairs) else None)
    out["clips_in_all_label_cones"] = out.pop("clips_in_all_label_cones")  # the JSON's key order
    out["norm_depth"] = _norm_depth64(prompt_pts, h.depth, c)
    out["norm_depth_over"] = ("dist0 (float64) of every prompt node (classes and abstract parents) against its "
                              "ontology depth")
    return out


def _norm_depth64(prompt_pts, depth, c: float) -> dict | None:
    """Spearman of ``dist0`` against depth over the nodes with a depth, in float64; rho null with the
    reason when their radii do not differ beyond the stored dtype's resolution."""
    known = [k for k, d in enumerate(depth) if d is not None]
    if len(known) < 2:
        return None
    pts = prompt_pts[known]
    reason = radius_resolved(relative_radius(pts, c=c), pts.dtype)
    if reason:
        return {"rho": None, "p_value": None, "n": len(known), "skipped": reason}
    return spearman_norm_depth(poincare.dist0(pts.double(), c=c).numpy(), [depth[k] for k in known])


TRAVERSAL_STEPS = 10
TRAVERSAL_SKIPPED = ("cosine and euclidean scores depend only on direction: moving a point towards the origin "
                     "changes no ranking")


@torch.no_grad()
def traversal_nearest(model: ScoringModel, audio_pts, prompt_pts, *, steps: int = TRAVERSAL_STEPS) -> np.ndarray:
    """``(N, steps)`` index of the nearest prompt node (geodesic distance, float64) to each clip's
    point moved towards the origin along its geodesic: ``expmap0((1 - s/steps) logmap0(x))``,
    s = 1..steps (the last step is the origin).

    The moved point is ``r u`` with u the clip's direction and ``sqrt(c) r = tanh((1 - s/steps)
    artanh(sqrt(c)|x|))``; since ``cosh(sqrt(c) d) = 1 + 2c|x - t|^2 / ((1 - c r^2)(1 - c|t|^2))`` is
    increasing in d and ``1 - c r^2`` is common to every prompt, the nearest prompt minimises
    ``(r^2 + |t|^2 - 2 r <u, t>) / (1 - c|t|^2)``: one ``(N, P)`` product ``<u, t>`` serves every step."""
    c = float(model.c)
    x, t = audio_pts.double(), prompt_pts.double()
    norm = x.norm(dim=-1, keepdim=True)
    u = x / norm.clamp_min(poincare.MIN_NORM)
    ut = u @ t.T                                                     # (N, P)
    t2 = t.square().sum(-1)                                          # (P,)
    room = (1 - c * t2).clamp_min(poincare.BALL_EPS[torch.float64])  # 1 - c|t|^2 > 0 inside the ball
    depth0 = torch.atanh((c ** 0.5 * norm).clamp_max(1 - poincare.BALL_EPS[torch.float32]))  # (N, 1)
    out = np.empty((len(x), steps), dtype=np.int64)
    for s in range(1, steps + 1):
        r = torch.tanh((1 - s / steps) * depth0) / c ** 0.5             # (N, 1)
        out[:, s - 1] = ((r * r + t2 - 2 * r * ut) / room).argmin(dim=1).numpy()
    return out


def hierarchy_metrics(model: ScoringModel, scores, targets, raw_targets, hier: HierarchyContext,
                      audio_pts=None, prompt_pts=None) -> dict:
    """The hierarchy-aware metrics of one model (docs/hierarchy.md): hierarchical P/R/F1 of the
    top 1, mAP by ground truth (the clips' own labels and parent-propagated ones) and per depth,
    back-off decoding, and (hyperbolic, with ``audio_pts`` and ``prompt_pts``) the traversal test."""
    h = hier.hierarchy
    num_nodes = len(h.prompt_names)
    closure = closure_matrix(h.ancestors, num_nodes)
    class_depth = list(h.depth[:h.num_classes])
    propagated = expand_to_ancestors(raw_targets, h)
    out = {**hierarchical_prf(scores, targets, h.ancestors, num_nodes),
           "map_by_ground_truth": {name: map_with_depths(scores, gt, class_depth)
                                   for name, gt in (("labels", raw_targets), ("labels+ancestors", propagated))},
           "backoff": backoff_curve(scores, targets, h.ancestors, h.parents, h.depth)}
    if model.projector is not None and model.geometry == "hyperbolic" and audio_pts is not None:
        truth = (targets.astype(np.float64) @ closure) > 0
        out["traversal"] = traversal_summary(traversal_nearest(model, audio_pts, prompt_pts), truth, h.depth)
    else:
        out["traversal"] = {"on_path": None, "depth_never_increases": None, "skipped": TRAVERSAL_SKIPPED}
    return out


@torch.no_grad()
def hierarchy_block(model: ScoringModel, audio_pts, text_pts, scores, targets, hier: HierarchyContext,
               class_names: list[str], cones: dict) -> dict:
    """Norm-vs-depth rank correlations, mistake severity and (``cones``, from ``cone_block``)
    entailment-cone consistency of one model. ``targets`` is the run's ground truth.

    Hyperbolic: a prompt's norm is ``dist0`` of its projected point; a class's audio norm is
    ``dist0(expmap0(m))`` with m the mean of ``logmap0`` of its labelled clips' points (the
    mean taken in the tangent space at the origin; in this convention that equals 2|m|, the
    same unit as the prompt norm). Cosine and euclidean models put every embedding on the unit
    sphere, so the prompt norm is constant and skipped; their audio norm is the Euclidean
    norm of the mean unit vector, a measure of how spread the class's clips are, not a depth.
    euclidean-distance: the Euclidean norms of the unnormalised prompt and of the class's mean point.
    """
    hyperbolic = model.projector is not None and model.geometry == "hyperbolic"
    depth = np.array([np.nan if d is None else d for d in hier.depths])
    y = torch.from_numpy(targets).float()  # (N, C), labelled clips only
    clips_per_class = y.sum(0)
    if hyperbolic:
        # float64 from the stored points; null where their radii are all one value within resolution
        prompt_reason = radius_resolved(relative_radius(text_pts[torch.from_numpy(~np.isnan(depth))], c=model.c),
                                        text_pts.dtype)
        audio_reason = radius_resolved(relative_radius(audio_pts, c=model.c), audio_pts.dtype)
        prompt_norm = poincare.dist0(text_pts.double(), c=model.c).numpy()
        tangent = poincare.logmap0(audio_pts.double(), c=model.c)
        y = y.double()
        mean = (y.T @ tangent) / clips_per_class.clamp_min(1)[:, None]
        audio_norm = poincare.dist0(poincare.expmap0(mean, c=model.c), c=model.c).numpy()
        prompt_what = "dist0 of the projected prompt (hyperbolic distance from the origin)"
        audio_what = ("dist0(expmap0(mean of logmap0 of the class's clip points)) = 2 |tangent mean|, "
                      "over the labelled clips of the class")
    elif model.projector is not None and model.geometry == "euclidean-distance":
        # Unnormalised points: the prompt's norm sets its per-class bias -|t|^2 / tau, the
        # euclidean counterpart of a prompt's radius in the ball.
        prompt_reason = audio_reason = None
        prompt_norm = text_pts.norm(dim=-1).numpy()
        mean = (y.T @ audio_pts) / clips_per_class.clamp_min(1)[:, None]
        audio_norm = mean.norm(dim=-1).numpy()
        prompt_what = "Euclidean norm |t| of the projected prompt (its score bias is -|t|^2 / tau)"
        audio_what = "Euclidean norm of the mean projected point of the class's labelled clips"
    else:
        prompt_norm = prompt_reason = audio_reason = None
        mean = (y.T @ audio_pts) / clips_per_class.clamp_min(1)[:, None]
        audio_norm = mean.norm(dim=-1).numpy()
        audio_what = ("Euclidean norm of the mean unit embedding of the class's labelled clips "
                      "(spread of the clips, not a depth: this model has no hyperbolic norm)")
    matched = ~np.isnan(depth)
    has_audio = matched & (clips_per_class.numpy() > 0)
    out = {
        "prompt_norm_vs_depth": (_spearman(prompt_norm[matched], depth[matched], prompt_what, prompt_reason)
                                 if prompt_norm is not None else
                                 {"rho": None, "p_value": None, "n": 0,
                                  "skipped": "cosine/euclidean prompts are unit vectors; their norm is constant"}),
        "audio_mean_norm_vs_depth": _spearman(audio_norm[has_audio], depth[has_audio], audio_what, audio_reason),
        **mistake_severity(scores, targets, hier.parents, k=HIER_K),
        "cones": cones,
        "classes": [{"index": i, "name": class_names[i], "node_id": hier.node_ids[i], "depth": hier.depths[i],
                     "prompt_norm": None if prompt_norm is None else float(prompt_norm[i]),
                     "audio_mean_norm": float(audio_norm[i]) if clips_per_class[i] > 0 else None,
                     "audio_clips": int(clips_per_class[i])}
                    for i in range(len(class_names))],
    }
    return out
