"""Entailment cones: the ontology as a partial order on the Poincaré ball.

Geometry: the Poincaré-ball cones of Ganea, Bécigneul and Hofmann, "Hyperbolic Entailment Cones
for Learning Hierarchical Embeddings" (ICML 2018), aperture formula and K included. MERU and
HyCoCLIP train cones of the same idea in the Lorentz model, with their own aperture formula. In ``hyperbolic.geometry.poincare``'s
convention (ball of curvature ``-c``, radius ``1/sqrt(c)``), for a general point ``u`` (a parent
prompt, a label prompt) and a specific point ``v`` (a child prompt, a clip):

    psi(u)   = arcsin(K (1 - c|u|^2) / (sqrt(c)|u|))   half-aperture of u's cone
                                                       (poincare.half_aperture)
    Xi(u, v) = angle at u between the ray origin -> u, continued outward, and the
               geodesic u -> v                         (poincare.oxy_angle)
    v lies in the cone of u  <=>  Xi(u, v) <= psi(u)
    E(u, v)  = max(0, Xi(u, v) - psi(u))               (poincare.cone_violation), radians

Cones narrow towards the boundary (psi -> 0) and widen towards the origin, so a concept that
must contain many others is pushed inward: ontology depth becomes distance from the origin.
``|u|`` is floored at ``poincare.half_aperture``'s default minimum radius, where the arcsin
argument is ``1 - CONE_ARG_MARGIN`` (``0.0991/sqrt(c)`` for K = 0.1; psi is at most
``pi/2 - 0.045`` there, and asin' stays finite).

Pairs (``Hierarchy``): every direct ontology edge ``parent -> child`` among the prompt nodes,
which are the classes and every ontology node above a matched class (abstract parents such as
"Source-ambiguous sounds" get a prompt too); and every ``label prompt -> clip``. Only direct
edges are trained: Ganea et al. chose psi so that cones nest (v in the cone of u implies v's
cone lies inside u's), so ``grandparent -> child`` follows. That holds for u beyond the minimum
radius (tests/test_entailment.py checks it); the floor breaks it inside, so a root pulled onto
the origin contains its children but not necessarily their children.

Training term (``entailment_batch_term``): mean of E over the batch's (label, clip) pairs plus
mean of E over all parent -> child prompt pairs, the two means weighted 1 each: the clip part is
a fresh sample every batch while the prompt part is the whole ontology every batch, and taking
means keeps the term's size independent of batch size and ontology size. The run adds
``entailment_weight * term`` to the contrastive loss.

K = 0.1 (``DEFAULT_K``), the value Ganea et al. (2018) use with this Poincaré formula. (MERU's
0.1, named ``min_radius`` there, is the constant of its Lorentz-model half-aperture
``arcsin(2 * 0.1 / (sqrt(c) |x_space|))``: another formula on another model, so the two constants
are not the same quantity and do not give the same cones.) At that K the aperture is 1.53 rad at the minimum radius,
0.31 rad at 0.3 of the radius, 0.15 at 0.5, 0.021 at 0.9 (the projector's default ``clip_r``):
wide near the origin, where roots must hold whole sub-trees; narrow at the clips' radius,
so a clip entailed by a leaf prompt lies close to that prompt's ray. Larger K widens every cone and moves
the minimum radius out (0.62/sqrt(c) at K = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hyperbolic.geometry import poincare
from hyperbolic.geometry.constants import DEFAULT_K
from hyperbolic.hierarchy.ontology import Ontology, nearest_kept_ancestors
from hyperbolic.metrics.hierarchy import spearman_norm_depth

__all__ = [
    "DEFAULT_K",
    "EntailmentObjective",
    "Hierarchy",
    "cone_consistency",
    "cone_report",
    "entailment_batch_term",
    "entailment_loss",
]



@dataclass(frozen=True, eq=False)
class Hierarchy:
    """An ontology matched to a class list, over prompt indices.

    Prompt indices ``0..C-1`` are the classes, in class order; ``C..P-1`` are the ontology nodes
    above a matched class that are not classes themselves (``extra_names``), in file order.
    """

    class_names: tuple[str, ...]
    prompt_names: tuple[str, ...]             # (P,): class names, then the extra nodes' names
    node_ids: tuple[str | None, ...]          # (P,): ontology id; None for an unmatched class
    parents: tuple[tuple[int, ...], ...]      # (P,): prompt indices of each node's direct parents
    parent_child: Tensor                      # (E, 2) long: direct edges (parent, child), sorted
    ancestors: tuple[tuple[int, ...], ...]    # (C,): prompt indices of every node above a class
    depth: tuple[int | None, ...]             # (P,): ontology depth (roots 0); None if unmatched
    unmatched: tuple[str, ...]                # class names that match no node, in class order
    expand_ancestors: bool = False
    linked_past: tuple[str, ...] = ()         # abstract parents with no prompt (``available``), walked through

    @classmethod
    def build(cls, ontology: Ontology, class_names: Sequence[str], *, expand_ancestors: bool = False,
              available: Callable[[str], bool] | None = None) -> Hierarchy:
        """Match ``class_names`` to ``ontology`` (``Ontology.match``: by ``label_key``) and add a
        prompt node for every ancestor of a matched class that is not a class.

        Every ancestor of a matched class is a prompt node, so every ontology edge into a prompt
        node starts at a prompt node: ``parent_child`` holds them all. ``available``: whether an
        abstract parent (by name) has a prompt (``--embeddings``: a row of classes.parquet); one
        that has not is no prompt node, its edges are linked past it (a child's parents are its
        nearest ancestors that are prompt nodes) and its name is in ``linked_past``. None: every
        abstract parent has one. Raises ValueError if two class names match the same node.
        """
        class_names = tuple(class_names)
        ids, unmatched = ontology.match(class_names)
        index: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v is None:
                continue
            if v in index:
                raise ValueError(f"classes {index[v]} ({class_names[index[v]]!r}) and {i} ({class_names[i]!r}) "
                                 f"both match ontology node {v!r}")
            index[v] = i
        above: set[str] = set()
        for v in index:
            above |= ontology.ancestors(v)
        extra = [v for v in ontology.nodes if v in above and v not in index]  # file order: reproducible
        missing = [v for v in extra if available is not None and not available(ontology.name(v))]
        extra = [v for v in extra if v not in set(missing)]
        for j, v in enumerate(extra, start=len(class_names)):
            index[v] = j
        node_ids = (*ids, *extra)
        # Without missing parents every parent of a prompt node is one, and this is the direct parents.
        parents = tuple(() if v is None else tuple(sorted(index[p] for p in
                                                          nearest_kept_ancestors(ontology.parents, v, index)))
                        for v in node_ids)
        edges = sorted((p, k) for k, ps in enumerate(parents) for p in ps)
        return cls(
            class_names=class_names,
            prompt_names=class_names + tuple(ontology.name(v) for v in extra),
            node_ids=node_ids,
            parents=parents,
            parent_child=torch.tensor(edges, dtype=torch.long).reshape(-1, 2),
            ancestors=tuple(() if v is None else tuple(sorted(index[a] for a in ontology.ancestors(v) if a in index))
                            for v in ids),
            depth=tuple(None if v is None else ontology.depth(v) for v in node_ids),
            unmatched=tuple(unmatched),
            expand_ancestors=expand_ancestors,
            linked_past=tuple(ontology.name(v) for v in missing),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def extra_names(self) -> tuple[str, ...]:
        """Names of the prompt nodes that are not classes (abstract parents), in prompt order."""
        return self.prompt_names[self.num_classes:]

    def edges(self, keep: Iterable[int] | None = None) -> Tensor:
        """``(E', 2)`` long (parent, child) pairs over the prompt indices in ``keep``, sorted.

        ``keep=None``: ``parent_child``. Otherwise each kept node is linked to its nearest kept
        ancestors, passing through nodes that are not kept: with "Sine wave" held out,
        "Other sourceless" -> "Chirp tone" is a pair. ``keep=range(C)`` gives the class-to-class
        pairs (each class to its nearest class ancestors).
        """
        if keep is None:
            return self.parent_child.clone()
        keep = set(keep)
        pairs = sorted((p, k) for k in keep for p in nearest_kept_ancestors(self.parents, k, keep))
        return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    def training_labels(self, labels: Sequence[Sequence[int]], *, exclude: Iterable[int] = ()) -> list[list[int]]:
        """The prompt indices each clip is trained against, sorted: its labels, plus (with
        ``expand_ancestors``) every ancestor of them, without the indices in ``exclude``."""
        exclude = set(exclude)
        out = []
        for row in labels:
            found = set(row)
            if self.expand_ancestors:
                for k in row:
                    found.update(self.ancestors[k])
            out.append(sorted(found - exclude))
        return out


def entailment_loss(general: Tensor, specific: Tensor, *, c: float | Tensor, K: float = DEFAULT_K) -> Tensor:
    """Mean cone violation ``mean_i max(0, Xi(u_i, v_i) - psi(u_i))``; ``(N, D), (N, D) -> ()``.

    0 for N = 0 (an empty sum over 1, not NaN), with the graph kept.
    """
    violation = poincare.cone_violation(general, specific, c=c, K=K)
    return violation.sum() / max(1, violation.numel())


def _clip_label_pairs(labels: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    clip = [i for i, row in enumerate(labels) for _ in row]
    label = [k for row in labels for k in row]
    return (torch.tensor(clip, dtype=torch.long, device=device),
            torch.tensor(label, dtype=torch.long, device=device))


def entailment_batch_term(clip_pts: Tensor, labels: Sequence[Sequence[int]], prompt_pts: Tensor,
                          parent_child: Tensor, *, c: float | Tensor, K: float = DEFAULT_K) -> Tensor:
    """The training term of one batch, a scalar:

    ``mean_{i, k in labels[i]} E(prompt_pts[k], clip_pts[i]) + mean_{(p, q)} E(prompt_pts[p], prompt_pts[q])``

    ``clip_pts`` (B, D) projected clips; ``labels`` per clip, rows of ``prompt_pts`` (P, D);
    ``parent_child`` (E, 2) long, rows of ``prompt_pts``. A part without pairs adds 0.
    """
    clip, label = _clip_label_pairs(labels, clip_pts.device)
    pairs = parent_child.to(prompt_pts.device)
    return (entailment_loss(prompt_pts[label], clip_pts[clip], c=c, K=K)
            + entailment_loss(prompt_pts[pairs[:, 0]], prompt_pts[pairs[:, 1]], c=c, K=K))


class EntailmentObjective:
    """What a trainer needs from a ``Hierarchy``: which prompts to project and the term.

    ``exclude``: class indices training must not see (held-out classes). Their prompts are never
    among ``rows``; pairs pass through them (``Hierarchy.edges``), and ``expand`` drops them.
    ``rows``: sorted prompt indices to project each step: every class not excluded and every
    node in a pair. ``pairs``: (E, 2) parent/child pairs as positions in ``rows``.
    """

    def __init__(self, hierarchy: Hierarchy, *, K: float = DEFAULT_K, exclude: Iterable[int] = ()):
        if not K > 0:
            raise ValueError(f"K must be > 0 (got {K})")
        self.hierarchy, self.K = hierarchy, float(K)
        self.exclude = frozenset(int(k) for k in exclude)
        num_classes, num_prompts = hierarchy.num_classes, len(hierarchy.prompt_names)
        bad = sorted(k for k in self.exclude if not 0 <= k < num_classes)
        if bad:
            raise ValueError(f"exclude holds class indices in [0, {num_classes}) only (got {bad[:5]})")
        pairs = hierarchy.edges(k for k in range(num_prompts) if k not in self.exclude)
        used = set(pairs.flatten().tolist()) | {k for k in range(num_classes) if k not in self.exclude}
        self.rows = torch.tensor(sorted(used), dtype=torch.long)
        self._position = torch.full((num_prompts,), -1, dtype=torch.long)
        self._position[self.rows] = torch.arange(len(self.rows))
        self.pairs = self._position[pairs].reshape(-1, 2)

    def positions(self, indices: Sequence[int]) -> Tensor:
        """Positions in ``rows`` of the prompt indices ``indices``; ValueError for one not among them."""
        pos = self._position[torch.tensor(list(indices), dtype=torch.long)]
        if (pos < 0).any():
            bad = sorted({k for k, p in zip(indices, pos.tolist()) if p < 0})
            raise ValueError(f"prompts {bad[:5]} are excluded classes or not among the rows")
        return pos

    def expand(self, labels: Sequence[Sequence[int]]) -> list[list[int]]:
        """``Hierarchy.training_labels`` without the excluded classes (a no-op on held-out-free
        labels unless the hierarchy was built with ``expand_ancestors``)."""
        return self.hierarchy.training_labels(labels, exclude=self.exclude)

    def term(self, clip_pts: Tensor, labels: Sequence[Sequence[int]], row_pts: Tensor, *,
             c: float | Tensor) -> Tensor:
        """``entailment_batch_term`` with ``row_pts`` (len(rows), D) the projected prompts of
        ``rows`` and ``labels`` prompt indices (pass them through ``expand`` first)."""
        flat = [k for row in labels for k in row]
        pos = self._position[torch.tensor(flat, dtype=torch.long)]
        if (pos < 0).any():
            bad = sorted({k for k, p in zip(flat, pos.tolist()) if p < 0})
            raise ValueError(f"labels {bad[:5]} are excluded classes or not among the rows")
        it = iter(pos.tolist())
        local = [[next(it) for _ in row] for row in labels]
        return entailment_batch_term(clip_pts, local, row_pts, self.pairs, c=c, K=self.K)


@torch.no_grad()
def cone_consistency(points_general: Tensor, points_specific: Tensor, *, c: float | Tensor,
                     K: float = DEFAULT_K) -> float:
    """Fraction of pairs ``i`` with ``Xi(u_i, v_i) <= psi(u_i)``: ``(N, D), (N, D) -> float``.

    Raises ValueError for N = 0 (a fraction of nothing).
    """
    if points_general.shape[0] == 0:
        raise ValueError("cone_consistency needs at least one pair")
    return float(_in_cone(points_general, points_specific, c=c, K=K).double().mean())


def _in_cone(u: Tensor, v: Tensor, *, c: float | Tensor, K: float) -> Tensor:
    """``Xi(u_i, v_i) <= psi(u_i)``: ``(N, D), (N, D) -> (N,)`` bool."""
    return poincare.oxy_angle(u, v, c=c) <= poincare.half_aperture(u, c=c, K=K)


@torch.no_grad()
def cone_report(prompt_pts: Tensor, parent_child: Tensor, depth: Sequence[int | None], *,
                c: float | Tensor, K: float = DEFAULT_K, clip_pts: Tensor | None = None,
                labels: Sequence[Sequence[int]] | None = None) -> dict:
    """The ``hierarchy`` numbers of one hyperbolic model, JSON-ready.

    ``prompt_pts`` (P, D) projected prompts; ``parent_child`` (E, 2) and ``labels`` index them;
    ``depth`` (P,) ontology depth or None. Keys:

    - ``prompt_pairs_in_cone``: fraction of (parent, child) pairs whose child lies in the
      parent's cone (None without pairs); ``prompt_pairs``: E.
    - ``clip_label_pairs_in_cone``: fraction of (clip, label) pairs whose clip lies in the
      label prompt's cone (None without clips); ``clip_label_pairs``: their count.
    - ``clips_in_all_label_cones``: fraction of the clips with a label that lie in the cone of
      every one of their labels (None without clips).
    - ``norm_depth``: ``metrics.spearman_norm_depth`` of ``dist0`` of each prompt with a depth
      against that depth (rho > 0: deeper nodes farther out), or None for fewer than 2.
    - ``K``.
    """
    pairs = parent_child.to(prompt_pts.device)
    out: dict = {"K": float(K), "prompt_pairs": int(pairs.shape[0]), "prompt_pairs_in_cone": None,
                 "clip_label_pairs": 0, "clip_label_pairs_in_cone": None, "norm_depth": None,
                 "clips_in_all_label_cones": None}
    if pairs.shape[0]:
        out["prompt_pairs_in_cone"] = cone_consistency(prompt_pts[pairs[:, 0]], prompt_pts[pairs[:, 1]], c=c, K=K)
    if clip_pts is not None and labels is not None:
        clip, label = _clip_label_pairs(labels, clip_pts.device)
        out["clip_label_pairs"] = int(clip.numel())
        if clip.numel():
            inside = _in_cone(prompt_pts[label], clip_pts[clip], c=c, K=K)
            out["clip_label_pairs_in_cone"] = float(inside.double().mean())
            outside_per_clip = torch.zeros(len(labels), dtype=torch.long, device=clip.device).index_add_(
                0, clip, (~inside).long())
            has_label = torch.tensor([len(row) > 0 for row in labels], device=clip.device)
            out["clips_in_all_label_cones"] = float((outside_per_clip[has_label] == 0).double().mean())
    known = [k for k, d in enumerate(depth) if d is not None]
    if len(known) >= 2:
        norms = poincare.dist0(prompt_pts[known], c=c).double().cpu().numpy()
        out["norm_depth"] = spearman_norm_depth(norms, [depth[k] for k in known])
    return out
