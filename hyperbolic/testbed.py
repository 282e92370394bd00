"""``python -m hyperbolic.testbed OUT``: a known-answer testbed at AudioSet scale.

Simulated CLAP embeddings planted on the real AudioSet ontology (``CLAP/class_labels/
audioset_ontology.json``, the 527 classes of ``audioset_class_labels_indices.json``, their 30
abstract parents, 593 parent -> child edges), written as two ``--embeddings`` folders, ``OUT/train``
and ``OUT/eval`` (``hyperbolic.embedding.stored``), and ``OUT/testbed.json`` (every parameter,
the counts, the command). Deterministic for a seed; numpy only, seconds.

The generative story, all vectors in R^D, ``n(x) = x / |x|``, ``g`` a fresh N(0, I_D / D) draw
(norm about 1):

- **Concepts** (a branching random walk down the tree): a root is ``n(g)``; a node below is
  ``n(mean of its parents' vectors + sigma_d g)`` with ``sigma_d = branch_noise *
  branch_decay^(d - 1)`` at depth d, so a child leans on its parent and siblings differ less
  the deeper they sit.
- **Clips** (AudioSet-style labels): 1 + Poisson(``extra_events``) sound events (at most
  ``max_events``), each a class drawn with probability proportional to ``rank^-skew`` (a fixed
  random ranking of the classes: a few very common classes and a long tail, as in AudioSet's
  training set; the eval set uses the milder ``eval_skew``, as AudioSet's eval set is nearly
  balanced). The clip's audio embedding is ``n(sum_e w_e v_e + audio_noise g)`` with Dirichlet(2)
  weights over its events. Its labels are the events' classes and each class above them in
  the ontology with probability ``parent_label_prob`` (so parents are often missing; abstract
  parents are never labels, as in AudioSet).
- **Text** (what the text tower sees): a prompt's embedding is ``n(R v + gap + text_noise g)``
  with ``R`` a fixed random near-orthogonal map (the polar factor of ``I + distortion G``, G
  Gaussian / sqrt(D)) and ``gap`` a fixed offset of norm ``modality_gap`` shared by every
  prompt, in another direction than ``audio_gap`` (CLAP's modality gap: each modality sits in
  its own narrow cone). Abstract parents get prompts too (``abstract`` rows).

``--flat``: the control without hierarchy. The same classes, the same clip label sets up to a
fixed random renaming of the classes (so the class sizes and the labels per clip are the same
as a multiset, but the co-occurrences no longer follow the ontology), independent random
concept vectors (no walk), and every label of a clip is one of its events.

The difficulty is set so that plain cosine (``test_clap_modelscope.py --embeddings OUT/eval
--num-samples all``) scores in the range of a real CLAP zero-shot on AudioSet; the figure and
the target are in docs/study.md ("The planted testbed").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data.labels import load_class_labels
from hyperbolic.cli import HelpFormatter
from hyperbolic.config import DEFAULT_CLASS_LABELS, REPO_ROOT
from hyperbolic.embedding.stored import check_writable, write_embeddings
from hyperbolic.errors import ConfigError, UserError
from hyperbolic.hierarchy.cones import Hierarchy
from hyperbolic.hierarchy.ontology import Ontology
from hyperbolic.outputs import atomic_write_json, setup_logging

log = logging.getLogger(__name__)

DEFAULT_ONTOLOGY = REPO_ROOT / "CLAP" / "class_labels" / "audioset_ontology.json"


@dataclass(frozen=True)
class TestbedConfig:
    """Every setting of the generator (written to ``testbed.json``)."""

    __test__ = False  # a name pytest would otherwise take for a test class

    seed: int = 0
    flat: bool = False
    num_train: int = 18000
    num_eval: int = 6000
    dim: int = 512
    branch_noise: float = 1.0     # sigma at depth 1 (a child's offset from its parent, relative to a unit vector)
    branch_decay: float = 0.75    # sigma_d = branch_noise * branch_decay^(d - 1)
    extra_events: float = 0.5     # events per clip: 1 + Poisson(extra_events), at most max_events
    max_events: int = 4
    skew: float = 0.8             # training clips: class drawn with probability ~ rank^-skew
    eval_skew: float = 0.3        # eval clips: nearly balanced, as AudioSet's eval set
    parent_label_prob: float = 0.5  # each class above an event's class is a label with this probability
    audio_noise: float = 2.0
    text_noise: float = 1.2
    distortion: float = 1.0
    modality_gap: float = 1.5
    ontology: str = str(DEFAULT_ONTOLOGY)
    class_labels: str = str(DEFAULT_CLASS_LABELS)

    def check(self) -> None:
        problems = [m for bad, m in [
            (self.num_train < 2, f"--num-train must be >= 2 (got {self.num_train})"),
            (self.num_eval < 1, f"--num-eval must be >= 1 (got {self.num_eval})"),
            (self.dim < 2, f"--dim must be >= 2 (got {self.dim})"),
            (self.max_events < 1, f"--max-events must be >= 1 (got {self.max_events})"),
            (not 0 <= self.parent_label_prob <= 1,
             f"--parent-label-prob must be in [0, 1] (got {self.parent_label_prob})"),
            *[(not np.isfinite(v) or v < 0, f"--{k.replace('_', '-')} must be a finite number >= 0 (got {v})")
              for k, v in asdict(self).items() if isinstance(v, float)],
        ] if bad]
        if problems:
            raise ConfigError("; ".join(problems))


class _Noise:
    """Gaussian draws scaled so their expected squared norm is 1 in R^D."""

    def __init__(self, rng: np.random.Generator, dim: int):
        self.rng, self.dim = rng, dim

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal((*shape, self.dim)) / np.sqrt(self.dim)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _walk_order(parents: tuple[tuple[int, ...], ...]) -> list[int]:
    """Prompt indices with every node after all of its parents."""
    order, placed = [], set()

    def place(k: int) -> None:
        if k in placed:
            return
        for p in parents[k]:
            place(p)
        placed.add(k)
        order.append(k)

    for k in range(len(parents)):
        place(k)
    return order


def concept_vectors(h: Hierarchy, cfg: TestbedConfig, rng: np.random.Generator) -> np.ndarray:
    """(P, D) unit vectors, one per prompt node: the branching random walk (module docstring),
    or independent directions with ``flat``."""
    noise = _Noise(rng, cfg.dim)
    if cfg.flat:
        return _unit(noise(len(h.prompt_names)))
    v = np.zeros((len(h.prompt_names), cfg.dim))
    for k in _walk_order(h.parents):
        if not h.parents[k]:
            v[k] = _unit(noise())
            continue
        sigma = cfg.branch_noise * cfg.branch_decay ** max(0, (h.depth[k] or 1) - 1)
        v[k] = _unit(v[list(h.parents[k])].mean(axis=0) + sigma * noise())
    return v


def _class_probs(num_classes: int, skew: float, ranking: np.ndarray) -> np.ndarray:
    weights = np.empty(num_classes)
    weights[ranking] = np.arange(1, num_classes + 1, dtype=float) ** -skew
    return weights / weights.sum()


def _label_sets(h: Hierarchy, cfg: TestbedConfig, rng: np.random.Generator, n: int,
                probs: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Per clip: its events (class indices, distinct) and its labels (events + some classes above)."""
    C = h.num_classes
    counts = np.minimum(1 + rng.poisson(cfg.extra_events, size=n), cfg.max_events)
    events, labels = [], []
    for m in counts:
        ev = [int(k) for k in rng.choice(C, size=min(int(m), C), replace=False, p=probs)]
        found = list(ev)
        for k in ev:
            for a in h.ancestors[k]:
                if a < C and a not in found and rng.random() < cfg.parent_label_prob:
                    found.append(a)
        events.append(ev)
        labels.append(found)
    return events, labels


def clip_embeddings(vectors: np.ndarray, events: list[list[int]], gap: np.ndarray, cfg: TestbedConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """(N, D) unit audio embeddings: a Dirichlet(2) mix of the events' concepts, the audio gap
    and noise."""
    out = np.empty((len(events), cfg.dim))
    for i, ev in enumerate(events):
        w = rng.dirichlet(np.full(len(ev), 2.0)) if len(ev) > 1 else np.ones(1)
        out[i] = w @ vectors[ev]
    return _unit(out + gap + cfg.audio_noise * _Noise(rng, cfg.dim)(len(events)))


def text_embeddings(vectors: np.ndarray, cfg: TestbedConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(P, D) unit prompt embeddings (concepts through the fixed distortion, the text gap and
    noise) and the (D,) audio gap."""
    noise = _Noise(rng, cfg.dim)
    u, _, vt = np.linalg.svd(np.eye(cfg.dim) + cfg.distortion * noise(cfg.dim))
    rotation = u @ vt  # the orthogonal (polar) factor: near the identity for small distortion
    text_gap, audio_gap = cfg.modality_gap * _unit(noise(2))
    return _unit(vectors @ rotation.T + text_gap + cfg.text_noise * noise(len(vectors))), audio_gap


@dataclass
class Testbed:
    """One generated world: names, the text embeddings and both splits."""

    __test__ = False

    hierarchy: Hierarchy
    text: np.ndarray                      # (P, D): classes then abstract parents
    splits: dict[str, tuple[np.ndarray, list[list[int]]]]  # name -> (audio (N, D), labels)


def generate(cfg: TestbedConfig) -> Testbed:
    """The testbed of ``cfg`` (deterministic for ``cfg.seed``; the eval clips do not depend on
    ``num_train`` nor the training clips on ``num_eval``)."""
    cfg.check()
    class_names = load_class_labels(cfg.class_labels)
    h = Hierarchy.build(Ontology.load(cfg.ontology), class_names)
    concepts_seed, text_seed, rank_seed, train_seed, eval_seed = np.random.SeedSequence(cfg.seed).spawn(5)
    # The hierarchical world and its flat control share every draw but the concept vectors.
    vectors = concept_vectors(h, cfg, np.random.default_rng(concepts_seed))
    text, audio_gap = text_embeddings(vectors, cfg, np.random.default_rng(text_seed))
    rank_rng = np.random.default_rng(rank_seed)
    ranking = rank_rng.permutation(h.num_classes)
    renaming = rank_rng.permutation(h.num_classes)  # --flat: labels renamed, away from the ontology
    splits = {}
    for name, seed, n, skew in (("train", train_seed, cfg.num_train, cfg.skew),
                                ("eval", eval_seed, cfg.num_eval, cfg.eval_skew)):
        rng = np.random.default_rng(seed)
        events, labels = _label_sets(h, cfg, rng, n, _class_probs(h.num_classes, skew, ranking))
        if cfg.flat:
            labels = [[int(renaming[k]) for k in row] for row in labels]
            events = labels
        splits[name] = (clip_embeddings(vectors, events, audio_gap, cfg, rng), labels)
    return Testbed(h, text, splits)


def write_testbed(out: str | Path, cfg: TestbedConfig, command: str | None = None) -> dict:
    """Generate and write ``out/train``, ``out/eval`` (``--embeddings`` layout) and
    ``out/testbed.json``; returns the json's content."""
    out = Path(out)
    for part in ("train", "eval"):
        check_writable(out / part)
    tb = generate(cfg)
    h = tb.hierarchy
    names = list(h.class_names)
    facts = {"command": command, "config": asdict(cfg),
             "classes": h.num_classes, "abstract_parents": len(h.extra_names),
             "parent_child_edges": int(h.parent_child.shape[0]), "dim": cfg.dim,
             "generator": "hyperbolic.testbed (module docstring: the generative story)", "splits": {}}
    for part, (audio, labels) in tb.splits.items():
        sizes = np.bincount([k for row in labels for k in row], minlength=h.num_classes)
        write_embeddings(out / part, clip_ids=[f"{part}_{i:06d}" for i in range(len(labels))], audio=audio,
                         labels=[[names[k] for k in row] for row in labels], class_names=names,
                         class_embeddings=tb.text[:h.num_classes], parent_names=list(h.extra_names),
                         parent_embeddings=tb.text[h.num_classes:],
                         source={"generator": "hyperbolic.testbed", "split": part, "config": asdict(cfg)})
        facts["splits"][part] = {"clips": len(labels), "labels_per_clip": round(float(np.mean([len(r) for r in labels])), 3),
                                 "classes_without_clip": int((sizes == 0).sum()),
                                 "largest_class_clips": int(sizes.max()), "median_class_clips": float(np.median(sizes))}
    atomic_write_json(out / "testbed.json", facts)
    return facts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperbolic.testbed", formatter_class=HelpFormatter,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder: OUT/train, OUT/eval (--embeddings layout) and OUT/testbed.json")
    defaults = TestbedConfig()
    p.add_argument("--flat", action="store_true", help="the control: same classes and sizes, no hierarchy")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of every draw")
    p.add_argument("--num-train", type=int, default=defaults.num_train, help="training clips")
    p.add_argument("--num-eval", type=int, default=defaults.num_eval, help="evaluation clips")
    p.add_argument("--dim", type=int, default=defaults.dim, help="embedding size D (CLAP's: 512)")
    for name in ("branch_noise", "branch_decay", "extra_events", "skew", "eval_skew", "parent_label_prob",
                 "audio_noise", "text_noise", "distortion", "modality_gap"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                       help="see the module docstring")
    p.add_argument("--max-events", type=int, default=defaults.max_events, help="most sound events per clip")
    p.add_argument("--ontology", default=defaults.ontology, help="AudioSet ontology.json")
    p.add_argument("--class-labels", default=defaults.class_labels, help="the class list (527 AudioSet classes)")
    p.add_argument("--verbose", action="store_true", help="debug-level log")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    values = {k: v for k, v in vars(args).items() if k in TestbedConfig.__dataclass_fields__}
    command = " ".join(["python -m hyperbolic.testbed", *(sys.argv[1:] if argv is None else map(str, argv))])
    try:
        facts = write_testbed(args.out, TestbedConfig(**values), command=command)
    except UserError as err:
        log.error("%s", err)
        return 2
    print(json.dumps({k: facts[k] for k in ("classes", "abstract_parents", "parent_child_edges", "splits")}, indent=1))
    print(f"written: {args.out}/train, {args.out}/eval, {args.out}/testbed.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
