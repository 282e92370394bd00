"""The evaluation's hierarchy block through ``test_clap_modelscope.main``: entailment-cone
consistency, ``--expand-ancestors`` ground truth and mistake severity, on the tiny offline CLAP
and the demo clips (2 per class). Expected values come from hand-written trees and from
``poincare`` directly, never from ``hyperbolic.hierarchy.cones.Hierarchy``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

import test_clap_modelscope as test_script
from data.audioset import SkipLog
from data.labels import LabelMatcher
from data.synthetic import DEMO_CLASSES, write_demo_ontology
from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, prompts_for
from hyperbolic.geometry import poincare
from hyperbolic.hierarchy.cones import DEFAULT_K
from hyperbolic.metrics.classification import classification_metrics
from hyperbolic.model.projector import Projector
from tests.test_evaluate import DIM, _checkpoint, _load_npz

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs

# The demo ontology (data.synthetic.demo_ontology) written out by hand: its 15 direct edges.
DEMO_EDGES = [
    ("Synthetic tone", "Sine wave"), ("Synthetic tone", "Brief tone"), ("Synthetic tone", "Telephone signal"),
    ("Sine wave", "Chirp tone"), ("Brief tone", "Beep, bleep"), ("Telephone signal", "Dial tone"),
    ("Noise", "Colored noise"), ("Noise", "Background noise"),
    ("Colored noise", "White noise"), ("Colored noise", "Pink noise"),
    ("Background noise", "Mains hum"), ("Background noise", "Silence"),
    ("Pulse", "Pulse train"), ("Pulse train", "Clicking"), ("Pulse train", "Buzz"),
]
# Non-class nodes in the ontology file's order (the order they are embedded in).
DEMO_ABSTRACT = ["Synthetic tone", "Noise", "Pulse", "Brief tone", "Telephone signal", "Colored noise",
                 "Background noise", "Pulse train"]
DEMO_DEPTH = {**{n: 0 for n in ("Synthetic tone", "Noise", "Pulse")},
              **{n: 1 for n in ("Sine wave", "Brief tone", "Telephone signal", "Colored noise",
                                "Background noise", "Pulse train")}}
CONE_K = 0.5  # stored in the "cone" checkpoint's config; the evaluation must use it, not DEFAULT_K
CONE_C = 2.0


def _run(argv):
    assert test_script.main([str(a) for a in argv]) == 0


def _with_config(path, **config):
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"].update(config)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_clap_dir, demo_eval_dir):
    root = tmp_path_factory.mktemp("hierarchy_eval")
    classes = root / "demo_classes.json"
    classes.write_text(json.dumps(list(DEMO_CLASSES)))
    onto = write_demo_ontology(root / "demo_ontology.json")
    # Small weights keep the points near the origin, where cones are wide: some pairs fall inside.
    cone = _with_config(_checkpoint(root / "cone.pth", c=CONE_C, seed=1, scale=0.05), entailment_k=CONE_K)
    plain = _checkpoint(root / "plain.pth", c=1.0, seed=4, scale=0.05)
    euc = _checkpoint(root / "euc.pth", geometry="euclidean", c=1.0, temperature=0.1, seed=2)
    base = ["--parquet-dir", demo_eval_dir, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--num-workers", "0"]
    return {"root": root, "classes": classes, "onto": onto, "cone": cone, "plain": plain, "euc": euc, "base": base}


@pytest.fixture(scope="module")
def comparison(env):
    out = env["root"] / "comparison.json"
    _run([*env["base"], "--class-labels", env["classes"], "--ontology", env["onto"],
          "--projection-checkpoint", env["cone"], env["plain"], env["euc"], "--output-json", out])
    return json.loads(out.read_text())


def _inside(u, v, *, c, K):
    """(E,) bool: v in the cone of u, straight from the geometry, and the margin psi - Xi."""
    margin = poincare.half_aperture(u, c=c, K=K) - poincare.oxy_angle(u, v, c=c)
    return margin >= 0, margin


def test_cone_consistency_matches_an_independent_recomputation(comparison, env, tiny_clap, demo_eval_dir):
    block = comparison["models"]["cone-hyperbolic"]["hierarchy"]["cones"]
    assert block["K"] == CONE_K and block["K_source"] == "checkpoint config entailment_k"
    assert comparison["models"]["cone-hyperbolic"]["model_info"]["entailment_k"] == CONE_K

    projector = Projector(DIM, clip_r=0.9)
    projector.load_state_dict(torch.load(env["cone"], weights_only=False)["projection_state_dict"])
    # Classes and abstract parents are embedded in two calls, as the evaluation does: a text
    # embedding changes in its last bits with the batch it sits in.
    text = torch.cat([embed_prompts(tiny_clap, prompts_for(list(DEMO_CLASSES), DEFAULT_PROMPT_TEMPLATE)),
                      embed_prompts(tiny_clap, prompts_for(DEMO_ABSTRACT, DEFAULT_PROMPT_TEMPLATE))])
    names = [*DEMO_CLASSES, *DEMO_ABSTRACT]
    clips = embed_clips(tiny_clap, demo_eval_dir, matcher=LabelMatcher(DEMO_CLASSES), skips=SkipLog(),
                        require_labels=False)
    with torch.no_grad():
        pts = projector(text, c=CONE_C)
        audio = projector(clips.audio, c=CONE_C)
    at = {n: i for i, n in enumerate(names)}

    parent = pts[[at[p] for p, _ in DEMO_EDGES]]
    child = pts[[at[k] for _, k in DEMO_EDGES]]
    inside, margin = _inside(parent, child, c=CONE_C, K=CONE_K)
    assert margin.abs().min() > 1e-4  # no pair so close to its cone's edge that rounding could flip it
    assert block["prompt_pairs"] == 15 and block["prompt_pairs_in_cone"] == pytest.approx(inside.double().mean().item())
    assert 0 < block["prompt_pairs_in_cone"] < 1  # a fraction that could have been wrong either way
    # The one class -> class edge of the demo classes: Sine wave -> Chirp tone.
    one, _ = _inside(pts[[at["Sine wave"]]], pts[[at["Chirp tone"]]], c=CONE_C, K=CONE_K)
    assert block["class_pairs"] == 1 and block["class_pairs_in_cone"] == float(one.item())
    # K really comes from the checkpoint: the default K gives another fraction here.
    at_default, _ = _inside(parent, child, c=CONE_C, K=DEFAULT_K)
    assert at_default.double().mean().item() != pytest.approx(block["prompt_pairs_in_cone"])

    # Every demo clip has one label: the clip fraction equals the (clip, label) pair fraction.
    labels = [row[0] for row in clips.label_indices]
    in_label, margin = _inside(pts[labels], audio, c=CONE_C, K=CONE_K)
    assert margin.abs().min() > 1e-4
    assert block["clip_label_pairs"] == 20 and block["clips"] == 20
    assert block["clip_label_pairs_in_cone"] == pytest.approx(in_label.double().mean().item())
    assert block["clips_in_all_label_cones"] == pytest.approx(in_label.double().mean().item())

    depth = [DEMO_DEPTH.get(n, 2) for n in names]
    rho = stats.spearmanr(poincare.dist0(pts, c=CONE_C).numpy(), depth).statistic
    assert block["norm_depth"]["n"] == 18 and block["norm_depth"]["rho"] == pytest.approx(rho)


def test_cones_default_k_and_undefined_for_cosine_and_euclidean(comparison):
    plain = comparison["models"]["plain-hyperbolic"]["hierarchy"]["cones"]
    assert plain["K"] == DEFAULT_K and plain["K_source"].startswith("default")
    for name in ("clap_cosine", "euc-euclidean"):
        cones = comparison["models"][name]["hierarchy"]["cones"]
        assert cones["prompt_pairs_in_cone"] is None and cones["clip_label_pairs_in_cone"] is None
        assert cones["K"] is None and "Poincare ball" in cones["skipped"]
    assert comparison["test_info"]["ground_truth"] == "labels"
    onto = comparison["ontology"]
    assert onto["cone_prompt_pairs"] == 15 and onto["cone_class_pairs"] == 1 and onto["extra_prompts"] == DEMO_ABSTRACT


# Two abstract nodes of the demo ontology joined as classes, so ancestry reaches several classes:
# by hand, the classes above each label.
EXPANDED_CLASSES = [*DEMO_CLASSES, "Noise", "Colored noise"]
ABOVE = {"Chirp tone": {"Sine wave"}, "White noise": {"Colored noise", "Noise"},
         "Pink noise": {"Colored noise", "Noise"}, "Mains hum": {"Noise"}, "Silence": {"Noise"}}


def test_expand_ancestors_closes_the_ground_truth_over_the_ontology(env):
    classes = env["root"] / "expanded_classes.json"
    classes.write_text(json.dumps(EXPANDED_CLASSES))
    runs = {}
    for flag in ([], ["--expand-ancestors"]):
        out = env["root"] / f"expand{len(flag)}"
        _run([*env["base"], "--class-labels", classes, "--ontology", env["onto"], *flag,
              "--projection-checkpoint", env["plain"], "--output-json", out / "r.json",
              "--save-scores", out / "s.npz"])
        runs[bool(flag)] = (json.loads((out / "r.json").read_text()), _load_npz(out / "s.npz"))

    (plain, npz0), (expanded, npz1) = runs[False], runs[True]
    assert plain["test_info"]["ground_truth"] == "labels"
    assert expanded["test_info"]["ground_truth"] == "labels+ancestors"
    preds = expanded["models"]["clap_cosine"]["predictions"]
    for i, p in enumerate(preds):
        (label,) = p["ground_truth_human_labels"]
        want = {label} | ABOVE.get(label, set())
        assert {EXPANDED_CLASSES[k] for k in np.flatnonzero(npz1["targets"][i])} == want
        assert {EXPANDED_CLASSES[k] for k in np.flatnonzero(npz0["targets"][i])} == {label}
        assert [EXPANDED_CLASSES[k] for k in p["ground_truth_indices_with_ancestors"]] == \
            [c for c in EXPANDED_CLASSES if c in want]
    # 2 clips per class: Chirp +1, White +2, Pink +2, Mains +1, Silence +1 ancestor each.
    assert expanded["test_info"]["ground_truth_positives"] == {"annotated": 20, "added_ancestors": 14}
    positives = {r["name"]: r["positives"] for r in expanded["models"]["clap_cosine"]["per_class"]}
    assert (positives["Noise"], positives["Colored noise"], positives["Sine wave"]) == (8, 4, 4)
    assert "Noise" not in {r["name"] for r in plain["models"]["clap_cosine"]["per_class"]}

    # The standard metrics use the expanded ground truth too (documented), and the labelled set is the same.
    for results, npz in runs.values():
        for name, block in results["models"].items():
            expected = classification_metrics(npz[f"scores_{name}"], npz["targets"], set_k=5)
            assert {k: block["metrics"][k] for k in expected} == expected
    assert expanded["test_info"]["clips_with_known_label"] == plain["test_info"]["clips_with_known_label"] == 20
    assert expanded["models"]["clap_cosine"]["metrics"]["mAP"] != plain["models"]["clap_cosine"]["metrics"]["mAP"]

    # Cone clip pairs follow training's expansion: every ancestor prompt, abstract ones included.
    # Two ancestors for each leaf (9 classes x 2 clips x 2), one for Sine wave (2 clips).
    assert plain["models"]["plain-hyperbolic"]["hierarchy"]["cones"]["clip_label_pairs"] == 20
    assert expanded["models"]["plain-hyperbolic"]["hierarchy"]["cones"]["clip_label_pairs"] == 20 + 36 + 2


# A tiny tree over five demo classes; the others' clips carry no known label and are not scored.
TINY = [
    {"id": "t", "name": "Tone", "child_ids": ["s", "b"]},
    {"id": "s", "name": "Sine wave", "child_ids": ["ch"]},
    {"id": "ch", "name": "Chirp tone", "child_ids": []},
    {"id": "b", "name": "Beep, bleep", "child_ids": []},
    {"id": "n", "name": "Noise", "child_ids": ["w", "p"]},
    {"id": "w", "name": "White noise", "child_ids": []},
    {"id": "p", "name": "Pink noise", "child_ids": []},
]
TINY_CLASSES = ["Sine wave", "Chirp tone", "Beep, bleep", "White noise", "Pink noise"]
# LCA heights by hand: heights Chirp/Beep/White/Pink 0, Sine wave 1, Noise 1, Tone 2; classes in
# different trees meet at a virtual root of height 1 + 2 = 3.
_D = {("Sine wave", "Chirp tone"): 1, ("Sine wave", "Beep, bleep"): 2, ("Chirp tone", "Beep, bleep"): 2,
      ("White noise", "Pink noise"): 1}


def _d(a, b):
    if a == b:
        return 0
    return _D.get((a, b), _D.get((b, a), 3))


def test_mistake_severity_through_the_script_matches_a_hand_computed_tree(env):
    onto = env["root"] / "tiny.json"
    onto.write_text(json.dumps(TINY))
    classes = env["root"] / "tiny_classes.json"
    classes.write_text(json.dumps(TINY_CLASSES))
    for flag in ([], ["--expand-ancestors"]):
        out = env["root"] / f"tiny{len(flag)}.json"
        _run([*env["base"], "--class-labels", classes, "--ontology", onto, *flag, "--top-k", "5",
              "--output-json", out])
        results = json.loads(out.read_text())
        scored = [p for p in results["predictions"] if p["ground_truth_indices"]]
        assert len(scored) == 10
        severities, spread = [], []
        for p in scored:
            (label,) = p["ground_truth_human_labels"]
            truth = {label} | ({"Sine wave"} if flag and label == "Chirp tone" else set())
            top1 = p["predicted_top1"]
            if top1 not in truth:
                severities.append(min(_d(top1, t) for t in truth))
            # hier_dist@5 over 5 classes: every class is in the top 5.
            spread.append(np.mean([min(_d(k, t) for t in truth) for k in TINY_CLASSES]))
        hier = results["hierarchy"]
        assert hier["num_mistakes"] == len(severities) > 0
        assert hier["mistake_severity"] == pytest.approx(np.mean(severities))
        assert hier["hier_dist@5"] == pytest.approx(np.mean(spread))


def test_hierarchy_demo_compares_the_four_models_in_one_evaluation(tmp_path, capsys):
    from hyperbolic.demo import run_hierarchy_demo
    results = run_hierarchy_demo(tmp_path, seed=3, epochs=2, train_clips_per_class=2, eval_clips_per_class=1,
                                 entailment_weights=(1.0, 0.3), entailment_k=0.2)
    names = ["clap_cosine", "euclidean", "hyperbolic", "hyperbolic_entailment_w1", "hyperbolic_entailment_w0.3"]
    assert results["test_info"]["models"] == names and results["test_info"]["clips_with_known_label"] == 10
    info = {n: results["models"][n]["model_info"] for n in names[1:]}
    assert [info[n]["geometry"] for n in names[1:]] == ["euclidean"] + ["hyperbolic"] * 3
    assert [info[n]["training_hierarchy"]["entailment_weight"] for n in names[1:]] == [0.0, 0.0, 1.0, 0.3]
    assert all(info[n]["entailment_k"] == 0.2 for n in names[1:])
    printed = capsys.readouterr().out
    for name in names:  # the printed row is the JSON's numbers
        block = results["models"][name]
        row = next(line for line in printed.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[1] == f"{block['metrics']['mAP']:.3f}"
        cones = block["hierarchy"]["cones"]["prompt_pairs_in_cone"]
        assert row.split(" | ")[5] == ("-" if cones is None else f"{cones:.3f}")
