"""``python -m hyperbolic.testbed``: the planted testbed's counts, determinism, its planted
properties (children near their parents, plain cosine in the target band) and the flat control
without them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hyperbolic import testbed
from hyperbolic.embedding.stored import read_embeddings
from hyperbolic.testbed import TestbedConfig, generate
from tests.helpers import run_main

SMALL = TestbedConfig(num_train=40, num_eval=30, dim=64)


@pytest.fixture(scope="module")
def world():
    return generate(replace(SMALL, dim=512, num_eval=2000))


@pytest.fixture(scope="module")
def flat_world():
    return generate(replace(SMALL, dim=512, num_eval=2000, flat=True))


def test_counts_are_audioset_s(tmp_path):
    out = tmp_path / "tb"
    code, err = run_main(testbed, [out, "--num-train", "40", "--num-eval", "30", "--dim", "16", "--seed", "3"])
    assert code == 0, err
    facts = json.loads((out / "testbed.json").read_text())
    assert (facts["classes"], facts["abstract_parents"], facts["parent_child_edges"]) == (527, 30, 593)
    assert facts["config"]["seed"] == 3 and facts["command"].endswith("--seed 3")
    train, evaluation = read_embeddings(out / "train"), read_embeddings(out / "eval")
    assert len(train.class_names) == 527 and len(train.parent_names) == 30 and train.dim == 16
    assert "Human sounds" in train.parent_names and "Speech" in train.class_names
    assert (len(train.clips), len(evaluation.clips)) == (40, 30)
    assert train.skips.total == 0 and not train.skips.unknown_labels
    assert all(row for row in train.clips.label_indices)
    # Never overwritten.
    assert run_main(testbed, [out, "--num-train", "40", "--num-eval", "30", "--dim", "16"])[0] == 2


def test_deterministic_for_a_seed_and_splits_independent():
    a, b = generate(SMALL), generate(SMALL)
    for part in ("train", "eval"):
        assert np.array_equal(a.splits[part][0], b.splits[part][0]) and a.splits[part][1] == b.splits[part][1]
    assert np.array_equal(a.text, b.text)
    other = generate(replace(SMALL, seed=1))
    assert not np.allclose(other.text, a.text)
    # More training clips leave the eval clips and the prompts as they were.
    more = generate(replace(SMALL, num_train=80))
    assert np.array_equal(more.splits["eval"][0], a.splits["eval"][0]) and np.array_equal(more.text, a.text)


def test_bad_settings_exit_2():
    code, err = run_main(testbed, ["/tmp/never-written", "--num-train", "1"])
    assert code == 2 and "--num-train must be >= 2" in err


def _unrelated(h):
    """(C, C) bool: neither class is an ancestor of the other, nor the same."""
    C = h.num_classes
    related = np.eye(C, dtype=bool)
    for k in range(C):
        for a in h.ancestors[k]:
            if a < C:
                related[k, a] = related[a, k] = True
    return ~related


def _edge_margins(tb):
    """For every class -> class edge: cos(child, parent) minus the child's mean cosine to unrelated classes."""
    h, C = tb.hierarchy, tb.hierarchy.num_classes
    t = tb.text[:C]
    cos, unrelated = t @ t.T, _unrelated(h)
    edges = [(p, c) for p, c in h.parent_child.tolist() if p < C and c < C]
    return np.array([cos[c, p] - cos[c][unrelated[c]].mean() for p, c in edges])


def test_children_sit_closer_to_their_parent_than_to_unrelated_classes(world, flat_world):
    planted, flat = _edge_margins(world), _edge_margins(flat_world)
    assert len(planted) == len(flat) > 350  # the class -> class edges
    # Seen through the text distortion and noise, nearly every child still leans on its parent ...
    assert (planted > 0).mean() > 0.95 and planted.mean() > 0.1
    # ... and in the flat control a "parent" is as far as any other class.
    assert abs(flat.mean()) < 0.02 and (flat > 0).mean() < 0.65


def test_labels_are_audioset_like(world, flat_world):
    h, C = world.hierarchy, world.hierarchy.num_classes
    labels = world.splits["train"][1]
    assert all(k < C for row in labels for k in row)  # abstract parents are never labels
    # Parents are often, not always, labelled with their child.
    edges = [(p, c) for p, c in h.parent_child.tolist() if p < C and c < C]
    y = np.zeros((len(world.splits["eval"][1]), C), bool)
    for i, row in enumerate(world.splits["eval"][1]):
        y[i, row] = True
    with_child = [y[y[:, c], p].mean() for p, c in edges if y[:, c].sum() >= 5]
    assert 0.3 < np.mean(with_child) < 0.9
    yf = np.zeros_like(y)
    for i, row in enumerate(flat_world.splits["eval"][1]):
        yf[i, row] = True
    # The flat control's class sizes are the planted ones, renamed (same multiset) ...
    assert sorted(y.sum(0)) == sorted(yf.sum(0)) and (y.sum(1) == yf.sum(1)).all()
    # ... but the ontology's parents no longer come with their children.
    flat_with_child = [yf[yf[:, c], p].mean() for p, c in edges if yf[:, c].sum() >= 5]
    assert np.mean(flat_with_child) < 0.1


def test_plain_cosine_scores_in_the_target_band(world):
    """The difficulty is tuned so plain cosine scores as a real CLAP zero-shot does on AudioSet
    (docs/study.md): mAP in [0.12, 0.25], computed here with scikit-learn."""
    audio, labels = world.splits["eval"]
    C = world.hierarchy.num_classes
    y = np.zeros((len(labels), C), bool)
    for i, row in enumerate(labels):
        y[i, row] = True
    scores = audio @ world.text[:C].T
    present = y.any(axis=0)
    mAP = np.mean([average_precision_score(y[:, k], scores[:, k]) for k in np.flatnonzero(present)])
    top1 = y[np.arange(len(y)), scores.argmax(axis=1)].mean()
    assert 0.12 <= mAP <= 0.25 and 0.25 <= top1 <= 0.5
    # Without the text distortion and noise the same clips are far easier: the gap is what a
    # projector can learn back.
    clean = generate(replace(SMALL, dim=512, num_eval=2000, distortion=0.0, text_noise=0.0))
    clean_scores = audio @ clean.text[:C].T
    clean_map = np.mean([average_precision_score(y[:, k], clean_scores[:, k]) for k in np.flatnonzero(present)])
    assert clean_map > mAP + 0.1


@pytest.mark.slow
def test_the_scripts_run_on_it_end_to_end(tmp_path):
    """Held-out classes, cones, bootstrap, hierarchy metrics and the report on a small testbed."""
    import test_clap_modelscope as eval_script
    import train_hyperbolic_clap as train_script
    from hyperbolic import report
    from hyperbolic.config import REPO_ROOT

    ontology = str(REPO_ROOT / "CLAP" / "class_labels" / "audioset_ontology.json")
    assert run_main(testbed, [tmp_path / "tb", "--num-train", "300", "--num-eval", "200", "--dim", "16"])[0] == 0
    code, err = run_main(train_script, ["--embeddings", tmp_path / "tb" / "train", "--ontology", ontology,
                                        "--entailment-weight", "1", "--holdout-classes", "0.2", "--epochs", "1",
                                        "--device", "cpu", "--output-dir", tmp_path / "run"])
    assert code == 0, err
    setup = json.loads((tmp_path / "run" / "setup.json").read_text())
    assert setup["holdout_classes"] and setup["hierarchy"]["parent_child_pairs"] == 593
    assert setup["hierarchy"]["abstract_parents_linked_past"] == 0
    out = tmp_path / "results.json"
    code, err = run_main(eval_script, ["--embeddings", tmp_path / "tb" / "eval", "--num-samples", "all",
                                       "--ontology", ontology, "--projection-checkpoint", tmp_path / "run",
                                       "--bootstrap", "10", "--device", "cpu", "--output-json", out])
    assert code == 0, err
    results = json.loads(out.read_text())
    trained = next(m for m in results["models"] if m != "clap_cosine")
    block = results["models"][trained]
    assert block["metrics_by_split"]["unseen"] is not None and block["hierarchy"]["cones"]
    assert "vs_clap_cosine" in block["bootstrap"] and results["test_info"]["clips_embedded"] == 200
    code, err = run_main(report, [out, "--output", tmp_path / "table.md"])
    assert code == 0, err
    assert "embeddings:" in (tmp_path / "table.md").read_text()
