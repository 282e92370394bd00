"""Evaluation end to end (``test_clap_modelscope.main``) on the tiny offline CLAP, plus the
ontology and plotting modules it uses.

Most runs use the 10 demo classes rather than the 527 AudioSet names: embedding 527 prompts
with the tiny CLAP costs seconds per run and adds nothing to what is checked here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, precision_score, recall_score

import test_clap_modelscope as eval_script
import test_clap_modelscope as test_script
import train_hyperbolic_clap as train_script
from data.audioset import SkipLog
from data.labels import LabelMatcher
from data.synthetic import (
    DEMO_CLASSES,
    demo_ontology,
    encode_audio,
    synthesize,
    write_demo_ontology,
    write_parquet_shard,
)
from hyperbolic.config import DEFAULT_CLASS_LABELS, DEFAULT_PROMPT_TEMPLATE, EvalConfig
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, prompts_for
from hyperbolic.evaluation.hierarchy import HierarchyContext
from hyperbolic.evaluation.scoring import model_names, plan_models
from hyperbolic.evaluation.tables import format_metrics_table
from hyperbolic.geometry import poincare
from hyperbolic.hierarchy.ontology import Ontology, OntologyError
from hyperbolic.metrics.bootstrap import bootstrap_ci, bootstrap_samples
from hyperbolic.metrics.classification import classification_metrics, retrieval_metrics
from hyperbolic.metrics.hierarchy import class_distance_matrix, mistake_severity
from hyperbolic.model.projector import Projector
from tests.helpers import _eval_argv, _train_argv, random_ontology, run_main

DIM = 32  # the tiny CLAP's embedding size


def _checkpoint(path, *, geometry="hyperbolic", c=0.5, temperature=0.2, template=DEFAULT_PROMPT_TEMPLATE,
                seed=0, legacy=False, dim=DIM, scale=1.0):
    """A projector checkpoint as train_hyperbolic_clap.py writes it, or (legacy=True) as the
    earlier public scripts did: no config, geometry, clip_r or prompt template."""
    torch.manual_seed(seed)
    projector = Projector(dim, geometry=geometry)
    with torch.no_grad():
        projector.linear.weight.mul_(scale)
        projector.linear.bias.normal_(0.0, 0.05)
    ckpt = {"epoch": 3, "projection_state_dict": projector.state_dict(),
            "optimizer_state_dict": {"state": {}, "param_groups": []}, "train_loss": 1.0, "val_loss": 1.1,
            "c": c, "temperature": temperature, "embed_dim": dim}
    if not legacy:
        ckpt.update(format_version=2, geometry=geometry, clip_r=0.9, prompt_template=template, config={"c": c})
    torch.save(ckpt, path)
    return path


def _run(argv):
    assert test_script.main([str(a) for a in argv]) == 0


def _load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clap_dir, demo_eval_dir):
    root = tmp_path_factory.mktemp("evaluate")
    classes = root / "demo_classes.json"
    classes.write_text(json.dumps(list(DEMO_CLASSES)))
    ontology = write_demo_ontology(root / "ontology.json")
    ckpts = {
        "hyp": _checkpoint(root / "hyp.pth", c=0.5, temperature=0.2, seed=1),
        "euc": _checkpoint(root / "euc.pth", geometry="euclidean", c=1.0, temperature=0.1,
                           template="the sound of {label}", seed=2),
        # With c = 0.5 about 80% of the projected points land past |y| = 0.9: the legacy rescale matters.
        "legacy": _checkpoint(root / "legacy.pth", c=0.5, temperature=0.07, seed=3, legacy=True, scale=1.0),
    }
    base = ["--parquet-dir", demo_eval_dir, "--checkpoint", tiny_clap_dir, "--device", "cpu",
            "--class-labels", classes, "--num-samples", "100"]
    return {"root": root, "classes": classes, "ckpts": ckpts, "base": base, "ontology": ontology}


def _comparison_argv(setup, out):
    return [*setup["base"], "--projection-checkpoint", *setup["ckpts"].values(),
            "--output-json", out / "results.json", "--save-scores", out / "scores.npz",
            "--bootstrap", "30", "--bootstrap-seed", "5", "--plots",
            "--ontology", setup["ontology"]]


@pytest.fixture(scope="module")
def comparison(setup):
    """Plain CLAP + hyperbolic + euclidean + legacy checkpoints, run twice with the same argv."""
    out = setup["root"] / "comparison"
    argv = _comparison_argv(setup, out)
    _run(argv)
    _run(argv)  # never overwrites: the second run writes results_1.json and scores_1.npz
    runs = []
    for suffix in ("", "_1"):
        results = json.loads((out / f"results{suffix}.json").read_text())
        assert results["test_info"]["scores_file"] == str(out / f"scores{suffix}.npz")
        runs.append((results, _load_npz(out / f"scores{suffix}.npz")))
    return runs


@pytest.mark.slow
def test_comparison_has_one_block_per_model_on_the_same_clips(comparison):
    results, npz = comparison[0]
    names = ["clap_cosine", "hyp-hyperbolic", "euc-euclidean", "legacy-hyperbolic"]  # <file>-<geometry>
    assert results["test_info"]["layout"] == "comparison" and results["test_info"]["models"] == names
    assert list(results["models"]) == names and list(results["summary"]) == names
    assert "model_info" not in results  # the single-model layout is not mixed in
    ids = {name: [(p["file"], p["row"], p["video_id"]) for p in b["predictions"]]
           for name, b in results["models"].items()}
    assert len(ids["clap_cosine"]) == 20 and all(v == ids["clap_cosine"] for v in ids.values())
    info = {name: b["model_info"] for name, b in results["models"].items()}
    assert info["clap_cosine"]["projection_checkpoint"] is None and info["clap_cosine"]["use_hyperbolic"] is False
    assert (info["hyp-hyperbolic"]["c"], info["hyp-hyperbolic"]["temperature"]) == (pytest.approx(0.5), pytest.approx(0.2))
    assert info["euc-euclidean"]["geometry"] == "euclidean" and info["euc-euclidean"]["prompt_template"] == "the sound of {label}"
    assert info["legacy-hyperbolic"]["checkpoint_format"] == "legacy (no config)"
    assert info["legacy-hyperbolic"]["legacy_distance"] is False and "--legacy-distance" in info["legacy-hyperbolic"]["note"]
    # Each model's own geometry shows in its scores: cosine in [-1, 1], -d/tau <= 0.
    assert results["models"]["hyp-hyperbolic"]["similarity_stats"]["max"] <= 0.0
    assert -1.0 - 1e-6 <= results["models"]["clap_cosine"]["similarity_stats"]["min"]
    for name, block in results["models"].items():
        assert results["summary"][name]["mAP"] == block["metrics"]["mAP"]
    table = format_metrics_table(results)
    header, *rows = table.splitlines()
    assert header.split()[1:] == names
    map_row = next(r for r in rows if r.startswith("mAP "))
    assert map_row.split()[1:] == [f"{results['models'][n]['metrics']['mAP']:.4f}" for n in names]


@pytest.mark.slow
def test_metrics_recomputed_from_saved_scores_equal_the_json(comparison):
    results, npz = comparison[0]
    assert list(npz["model_names"]) == list(results["models"])
    assert list(npz["class_names"]) == list(DEMO_CLASSES)
    preds = results["models"]["clap_cosine"]["predictions"]
    assert list(npz["clip_file"]) == [p["file"] for p in preds]
    assert list(npz["clip_row"]) == [p["row"] for p in preds]
    assert list(npz["clip_video_id"]) == [p["video_id"] for p in preds]
    lab = npz["labelled"]
    targets = npz["targets"][lab]
    assert npz["targets"].shape == (20, len(DEMO_CLASSES)) and lab.all()
    for name, block in results["models"].items():
        scores = npz[f"scores_{name}"]
        assert scores.shape == (20, len(DEMO_CLASSES)) and scores.dtype == np.float32
        expected = {**classification_metrics(scores[lab], targets, set_k=5),
                    **retrieval_metrics(scores[lab], targets)}
        got = block["metrics"]
        assert {k: got[k] for k in expected} == expected
        assert got["predicted_set_rule"] == "top-5" and got["valid_samples"] == 20
        # The per-class table against scikit-learn, and its mean against mAP.
        for row in block["per_class"]:
            assert row["ap"] == pytest.approx(average_precision_score(targets[:, row["index"]],
                                                                      scores[lab][:, row["index"]]))
        assert np.mean([r["ap"] for r in block["per_class"]]) == pytest.approx(got["mAP"])
        top1 = [DEMO_CLASSES[k] for k in np.argmax(scores, axis=1)]
        assert top1 == [p["predicted_top1"] for p in block["predictions"]]
        # Bootstrap: the same seed reproduces the interval from the saved scores.
        ci = bootstrap_ci(scores[lab], targets, n=30, seed=5)
        assert block["bootstrap"]["mAP"]["low"] == ci["mAP"]["low"]
        assert block["bootstrap"]["acc@1"]["high"] == ci["acc@1"]["high"]
        assert block["bootstrap"]["mAP"]["point"] == got["mAP"]
        assert "do not rank against each other" in block["bootstrap"]["note"]
        # Paired with plain CLAP on the same resamples (those of bootstrap_ci's seed).
        plain = results["models"]["clap_cosine"]
        paired = block["bootstrap"].get("vs_clap_cosine")
        assert (paired is None) == (name == "clap_cosine")
        if paired is not None:
            own = bootstrap_samples(scores[lab], targets, n=30, seed=5)
            base = bootstrap_samples(npz["scores_clap_cosine"][lab], targets, n=30, seed=5)
            for key in ("mAP", "acc@1"):
                assert paired[key]["diff"] == pytest.approx(got[key] - plain["metrics"][key])
                assert paired[key]["low"] == pytest.approx(np.percentile(own[key] - base[key], 2.5))
                assert paired[key]["high"] == pytest.approx(np.percentile(own[key] - base[key], 97.5))
    table = format_metrics_table(results)
    row = next(r for r in table.splitlines() if r.startswith("mAP - cosine"))
    d = results["models"]["hyp-hyperbolic"]["bootstrap"]["vs_clap_cosine"]["mAP"]
    assert f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" in row


@pytest.mark.slow
def test_same_command_twice_gives_identical_results(comparison):
    (first, npz1), (second, npz2) = comparison
    for name in first["models"]:
        a, b = first["models"][name], second["models"][name]
        for key in ("metrics", "bootstrap", "hierarchy", "per_class", "similarity_stats", "predictions"):
            assert a[key] == b[key], (name, key)
        assert np.array_equal(npz1[f"scores_{name}"], npz2[f"scores_{name}"])


@pytest.mark.slow
def test_hierarchy_block(comparison, setup, tiny_clap):
    results, npz = comparison[0]
    records = demo_ontology()
    parents, node = _parents(records), {r["name"]: r["id"] for r in records}

    def shortest(v):
        return 0 if not parents[v] else 1 + min(shortest(p) for p in parents[v])

    depths = np.array([shortest(node[name]) for name in DEMO_CLASSES], dtype=float)
    assert len(set(depths)) > 1
    assert results["ontology"]["classes_matched"] == len(DEMO_CLASSES) and results["ontology"]["unmatched"] == []

    hyp = results["models"]["hyp-hyperbolic"]["hierarchy"]
    # Prompt norms recomputed independently: checkpoint -> projector -> dist0.
    ckpt = torch.load(setup["ckpts"]["hyp"], weights_only=False)
    projector = Projector(DIM, clip_r=0.9)
    projector.load_state_dict(ckpt["projection_state_dict"])
    text = embed_prompts(tiny_clap, prompts_for(list(DEMO_CLASSES), DEFAULT_PROMPT_TEMPLATE))
    with torch.no_grad():
        norms = poincare.dist0(projector(text, c=0.5), c=0.5).numpy()
    assert [r["prompt_norm"] for r in hyp["classes"]] == pytest.approx(norms.tolist(), rel=1e-5)
    assert [r["depth"] for r in hyp["classes"]] == depths.tolist()
    rho = stats.spearmanr(norms, depths).statistic
    assert hyp["prompt_norm_vs_depth"]["rho"] == pytest.approx(rho)
    assert hyp["prompt_norm_vs_depth"]["n"] == len(DEMO_CLASSES)
    # Audio means: every class has 2 clips here (demo_eval_dir), all labelled.
    assert [r["audio_clips"] for r in hyp["classes"]] == [2] * len(DEMO_CLASSES)
    assert hyp["audio_mean_norm_vs_depth"]["n"] == len(DEMO_CLASSES)

    cos = results["models"]["clap_cosine"]["hierarchy"]
    assert cos["prompt_norm_vs_depth"]["rho"] is None and "unit vectors" in cos["prompt_norm_vs_depth"]["skipped"]
    assert "Euclidean" in cos["audio_mean_norm_vs_depth"]["norm"]
    # Mistake severity from the saved scores and the ontology's class hierarchy.
    # parents over prompt indices: classes 0..9, then the groups above them in file order
    groups = [r["id"] for r in records if r["name"] not in DEMO_CLASSES]
    index = {**{node[n]: i for i, n in enumerate(DEMO_CLASSES)}, **{g: 10 + j for j, g in enumerate(groups)}}
    class_parents = {index[v]: {index[p] for p in ps} for v, ps in parents.items() if ps}
    for name, block in results["models"].items():
        expected = mistake_severity(npz[f"scores_{name}"], npz["targets"], class_parents, k=5)
        assert {k: block["hierarchy"][k] for k in expected} == expected


@pytest.mark.slow
def test_plots_are_written_next_to_the_json(comparison, setup):
    image = pytest.importorskip("matplotlib.image")
    results, _ = comparison[0]
    out = setup["root"] / "comparison"
    hyp = results["models"]["hyp-hyperbolic"]["plots"]
    assert hyp["poincare_disk"] == str(out / "results_hyp-hyperbolic_poincare.png")
    disk = image.imread(hyp["poincare_disk"])
    assert disk.shape[:2] == (800, 800) and disk[..., :3].std() > 0.01
    for name in results["models"]:
        ap = image.imread(results["models"][name]["plots"]["per_class_ap"])
        assert ap.shape[:2] == (800, 1000) and ap[..., :3].std() > 0.01
    assert results["models"]["clap_cosine"]["plots"]["poincare_disk"] is None
    assert results["models"]["euc-euclidean"]["plots"]["poincare_disk"] is None


def _old_scripts_scores(audio, text, weight, bias, c, tau):
    """The earlier public scripts' scores, restated in numpy float64: projection
    y = expmap0(Wx + b), rescaled to |y| <= 0.9; distance with c outside the fraction."""
    def project(x):
        u = x @ weight.T + bias
        n = np.linalg.norm(u, axis=1, keepdims=True)
        y = np.tanh(math.sqrt(c) * n) * u / (math.sqrt(c) * n)
        return y * np.minimum(1.0, 0.9 / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-10)), np.linalg.norm(y, axis=1)
    (a, a_norm), (t, t_norm) = project(audio), project(text)
    sq = ((a[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    den = (1 - (a ** 2).sum(1))[:, None] * (1 - (t ** 2).sum(1))[None, :]
    return -np.arccosh(1 + 2 * sq / den) / math.sqrt(c) / tau, np.concatenate([a_norm, t_norm])


@pytest.mark.slow
def test_legacy_checkpoint_reproduces_the_earlier_scripts(comparison, setup, tiny_clap, demo_eval_dir):
    out = setup["root"] / "legacy"
    _run([*setup["base"], "--use-hyperbolic", "--legacy-distance", "--projection-checkpoint",
          setup["ckpts"]["legacy"], "--output-json", out / "r.json", "--save-scores", out / "s.npz"])
    results = json.loads((out / "r.json").read_text())
    assert {"test_info", "model_info", "similarity_stats", "metrics", "predictions", "skipped"} <= set(results)
    assert "models" not in results and results["test_info"]["layout"] == "single"
    info = results["model_info"]
    assert info["legacy_distance"] is True and "0.9" in info["projection"] and "c missing" in info["distance"]
    assert info["c"] == pytest.approx(0.5) and info["temperature"] == pytest.approx(0.07)

    clips = embed_clips(tiny_clap, demo_eval_dir, matcher=LabelMatcher(DEMO_CLASSES), skips=SkipLog(),
                        limit=100, require_labels=False)
    text = embed_prompts(tiny_clap, prompts_for(list(DEMO_CLASSES), DEFAULT_PROMPT_TEMPLATE))
    state = torch.load(setup["ckpts"]["legacy"], weights_only=False)["projection_state_dict"]
    expected, raw_norms = _old_scripts_scores(clips.audio.double().numpy(), text.double().numpy(),
                                              state["linear.weight"].double().numpy(),
                                              state["linear.bias"].double().numpy(), 0.5, 0.07)
    assert (raw_norms > 0.9).any() and (raw_norms < 0.9).any()  # the rescale acts on some points only
    scores = _load_npz(out / "s.npz")["scores_legacy-hyperbolic"]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # Without --legacy-distance the same checkpoint is scored with the correct geometry: different numbers.
    corrected = comparison[0][1]["scores_legacy-hyperbolic"]
    assert np.abs(corrected - expected).max() > 0.1
    # Their macro P/R: per-class scores averaged over every class of the list; F1 of the two means.
    targets = _load_npz(out / "s.npz")["targets"]
    top5 = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(top5, np.argsort(-scores, axis=1)[:, :5], True, axis=1)
    p = precision_score(targets, top5, average=None, labels=range(len(DEMO_CLASSES)), zero_division=0).mean()
    r = recall_score(targets, top5, average=None, labels=range(len(DEMO_CLASSES)), zero_division=0).mean()
    legacy = results["legacy_metrics"]
    assert legacy["precision_macro"] == pytest.approx(p) and legacy["recall_macro"] == pytest.approx(r)
    assert legacy["f1_macro"] == pytest.approx(2 * p * r / (p + r))
    assert "legacy_metrics" not in comparison[0][0]["models"]["hyp-hyperbolic"]  # only with --legacy-distance


def _custom_dataset(folder):
    """Three classes under a 'tags' column, plus rows that must be reported, not scored."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    plan = [["Sine wave"], ["White noise"], ["Buzz"], ["Sine wave"], ["White noise"], ["Buzz"],
            ["Kazoo"], ["Kazoo", "Sine wave"], ["Theremin"], ["Kazoo"]]
    rows = []
    for i, labels in enumerate(plan):
        known = [x for x in labels if x in DEMO_CLASSES] or ["Pink noise"]
        wave = synthesize(known[0], rng, 48000, 1.0)
        rows.append({"video_id": f"v{i}", "audio": {"bytes": encode_audio(wave, 48000, "flac"), "path": f"{i}.flac"},
                     "tags": labels})
    rows.append({"video_id": "broken", "audio": {"bytes": b"not audio at all", "path": "x.flac"}, "tags": ["Buzz"]})
    write_parquet_shard(folder / "part-0.parquet", rows)
    classes = folder.parent / "three.txt"
    classes.write_text("Sine wave\nWhite noise\nBuzz\n")
    return classes


@pytest.mark.slow
def test_custom_class_list_and_label_column(setup, tiny_clap_dir):
    data = setup["root"] / "custom"
    classes = _custom_dataset(data)
    out = setup["root"] / "custom_out"
    common = ["--parquet-dir", data, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--class-labels", classes]
    _run([*common, "--label-column", "tags", "--top-k", "3", "--threshold", "0.0", "--output-json", out / "r.json"])
    r = json.loads((out / "r.json").read_text())
    info = r["test_info"]
    assert info["num_classes"] == 3 and info["label_column"] == "tags"
    assert (info["clips_read"], info["clips_embedded"], info["clips_with_known_label"]) == (11, 10, 7)
    assert r["metrics"]["valid_samples"] == 7 and r["metrics"]["total_samples"] == 11
    assert r["metrics"]["predicted_set_rule"] == "score>=0" and info["threshold"] == 0.0
    assert [row["name"] for row in r["per_class"]] == ["Sine wave", "White noise", "Buzz"]
    assert [row["positives"] for row in r["per_class"]] == [3, 2, 2]
    assert all(len(p["top_k_predictions"]) == 3 for p in r["predictions"])
    # Skipped rows: reason -> count with examples; unknown labels most frequent first.
    assert r["skipped"]["total"] == 1
    decode = r["skipped"]["reasons"]["decode_error"]
    assert decode["count"] == 1 and decode["examples"][0]["video_id"] == "broken"
    assert r["unknown_labels"] == [{"label": "Kazoo", "count": 3}, {"label": "Theremin", "count": 1}]
    assert r["excluded_from_metrics"]["count"] == 3
    assert [e["video_id"] for e in r["excluded_from_metrics"]["examples"]] == ["v6", "v8", "v9"]
    # The default column does not exist in this parquet: one clear error, exit 2.
    assert test_script.main([str(a) for a in [*common, "--top-k", "3", "--output-json", out / "r2.json"]]) == 2
    assert not (out / "r2.json").exists()


def test_top_k_above_the_number_of_classes_exits_2(setup, capsys):
    classes = setup["root"] / "three_only.txt"
    classes.write_text("Sine wave\nWhite noise\nBuzz\n")
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--parquet-dir", "x", "--class-labels", str(classes), "--top-k", "4"])
    assert exit_info.value.code == 2
    assert "--top-k must be <= the number of classes in --class-labels (3) (got 4)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--bootstrap", "-1"], "--bootstrap must be >= 0"),
    (["--save-scores", "scores.json"], "--save-scores must name a .npz file"),
    (["--threshold", "nan"], "--threshold must be a finite number"),
    (["--projection-checkpoint", "a.pth", "a.pth"], "lists a path twice"),
    (["--legacy-distance"], "--legacy-distance needs --projection-checkpoint"),
])
def test_eval_flag_errors_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--parquet-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_missing_ontology_exits_2(setup, capsys, tmp_path):
    code = test_script.main([str(a) for a in [*setup["base"], "--ontology", tmp_path / "nope.json",
                                              "--output-json", tmp_path / "r.json"]])
    assert code == 2 and "nope.json does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------- which models run

@pytest.mark.parametrize("paths, use_hyperbolic, expected", [
    ([], False, ("single", True)),
    (["a.pth"], True, ("single", False)),
    (["a.pth"], False, ("comparison", True)),
    (["a.pth", "b.pth"], True, ("comparison", True)),
    (["a.pth", "b.pth"], False, ("comparison", True)),
])
def test_plan_models(paths, use_hyperbolic, expected):
    argv = ["--parquet-dir", "x", *(["--projection-checkpoint", *paths] if paths else []),
            *(["--use-hyperbolic"] if use_hyperbolic else [])]
    cfg = test_script.config_from_args(test_script.parse_args(argv))
    # one field holds the flag's paths, however many: no second field for the one-path case
    assert cfg.projection_checkpoints == paths and "projection_checkpoint" not in EvalConfig.__dataclass_fields__
    assert plan_models(cfg) == expected


def test_model_names_are_unique():
    # <run>-<geometry> always: the folder for training's file names, else the file's stem
    hyp = "hyperbolic"
    assert model_names(["r1/best_projection_epoch_3.pth", "r2/best_projection_epoch_4.pth", "r3/last.pth"],
                       [hyp, "euclidean", hyp]) == ["r1-hyperbolic", "r2-euclidean", "last-hyperbolic"]
    assert model_names(["x/r/best_projection_epoch_1.pth", "y/r/best_projection_epoch_1.pth"],
                       [hyp, hyp]) == ["x-r-hyperbolic", "y-r-hyperbolic"]
    assert model_names(["r/projection_epoch_3.pth", "r/projection_epoch_4.pth"], [hyp, hyp]) == [
        "r-hyperbolic-projection_epoch_3", "r-hyperbolic-projection_epoch_4"]
    assert model_names(["r/best_projection_epoch_2.pth"] * 2, [hyp, hyp], [7, 8]) == [
        "r-hyperbolic-seed7", "r-hyperbolic-seed8"]
    assert model_names(["r/b.pth"] * 2, [hyp, hyp]) == ["b-hyperbolic", "b-hyperbolic_2"]
    assert model_names(["a/ep 1 (copy).pth"], [hyp]) == ["ep_1_copy-hyperbolic"]


# ------------------------------------------------------------------------- ontology

SMALL = [  # a DAG: "Dog" has two parents; "Bark" is 2 deep through "Dog", 3 through "Pets"
    {"id": "a", "name": "Animal", "child_ids": ["d", "p"]},
    {"id": "p", "name": "Pets", "child_ids": ["q"], "restrictions": ["abstract"]},
    {"id": "q", "name": "House pets", "child_ids": ["d"]},
    {"id": "d", "name": "Dog", "child_ids": ["b"]},
    {"id": "b", "name": "Bark", "child_ids": []},
    {"id": "m", "name": "Music", "child_ids": ["g"]},
    {"id": "g", "name": "Guitar, electric", "child_ids": []},
]


def test_ontology_maps_depth_and_ancestors():
    o = Ontology(SMALL)
    assert o.roots == ("a", "m")
    assert o.parents["d"] == ("a", "q") and o.children["a"] == ("d", "p")
    assert {v: o.depth(v) for v in "apqdbmg"} == {"a": 0, "p": 1, "q": 2, "d": 1, "b": 2, "m": 0, "g": 1}
    assert o.ancestors("b") == {"d", "a", "q", "p"} and o.ancestors("a") == frozenset()
    assert o.top_level("b") == ("a",) and o.nodes["p"].restrictions == ("abstract",)
    ids, unmatched = o.match(["bark", "GUITAR,electric", "Kazoo"])
    assert ids == ["b", "g", None] and unmatched == ["Kazoo"]


def test_hierarchy_feeds_the_hierarchy_metrics():
    classes = ["Bark", "Animal", "Guitar, electric", "Kazoo"]
    hier = HierarchyContext.build(Ontology(SMALL), classes)
    h = hier.hierarchy
    # Non-class nodes above a class get numbers from 4 up in file order: Pets 4, House pets 5, Dog 6, Music 7.
    assert h.prompt_names[4:] == ("Pets", "House pets", "Dog", "Music")
    assert hier.parents == {0: {6}, 2: {7}, 4: {1}, 5: {4}, 6: {1, 5}}
    assert h.ancestors == ((1, 4, 5, 6), (), (7,), ())
    assert h.edges(range(4)).tolist() == [[1, 0]]  # Animal -> Bark through the non-class Dog
    assert hier.depths == [2, 0, 1, None] and hier.node_ids == ["b", "a", "g", None]
    assert hier.unmatched == ["Kazoo"]
    d = class_distance_matrix(hier.parents, len(classes))
    # Bark and Animal meet at Animal (height 4: Animal-Pets-House pets-Dog-Bark); Bark and Guitar
    # only at the virtual root (1 + max height); the unmatched class too.
    assert d[0, 1] == 4 and d[0, 2] == 5 and d[3, 0] == 5 and d[2, 2] == 0


@pytest.mark.parametrize("records, message", [
    ([{"id": "a", "name": "A", "child_ids": ["b"]}, {"id": "b", "name": "B", "child_ids": ["a"]}], "cycle"),
    ([{"id": "a", "name": "A", "child_ids": ["zzz"]}], "'zzz', which is not a node"),
    ([{"id": "a", "name": "A"}, {"id": "a", "name": "B"}], "appears twice"),
    ([{"name": "A"}], "needs string 'id' and 'name'"),
])
def test_ontology_rejects_bad_files(records, message):
    with pytest.raises(OntologyError, match=message):
        Ontology(records)


def _parents(records) -> dict[str, set[str]]:
    parents = {r["id"]: set() for r in records}
    for r in records:
        for k in r["child_ids"]:
            parents[k].add(r["id"])
    return parents


def test_ontology_over_every_audioset_class():
    """Matching, roots, depth and ancestors on a generated ontology over the 527 classes (shaped
    like AudioSet's: several roots, nodes with two parents, groups that are not classes), against
    brute force over the records."""
    names = list(json.loads(DEFAULT_CLASS_LABELS.read_text()).values())
    records = random_ontology(names, abstract=30, roots=7, seed=3)
    o = Ontology(records)
    ids, unmatched = o.match([n.upper() for n in names])  # case-insensitive
    assert unmatched == [] and ids == [f"/gen/{i}" for i in range(527)]
    parents = _parents(records)
    assert set(o.roots) == {v for v, ps in parents.items() if not ps} and len(o.roots) == 7

    def shortest(v):  # depth is the shortest path: every upward path tried
        return 0 if not parents[v] else 1 + min(shortest(p) for p in parents[v])

    def above(v):
        return set().union(*({p} | above(p) for p in parents[v]))

    assert any(len({shortest(p) for p in parents[v]}) > 1 for v in ids)  # a shorter and a longer path
    assert [o.depth(v) for v in ids] == [shortest(v) for v in ids]
    assert all(set(o.ancestors(v)) == above(v) for v in ids)


# --------------------------------------------------------------------------- plots

def test_disk_layout_keeps_the_distance_from_the_origin():
    from hyperbolic.evaluation.plots import disk_layout
    gen = torch.Generator().manual_seed(0)
    for c in (0.5, 2.0):
        x = poincare.expmap0(torch.randn(30, 8, generator=gen, dtype=torch.float64), c=c)
        xy = disk_layout(x, c=c)
        assert xy.shape == (30, 2)
        np.testing.assert_allclose(poincare.dist0(torch.from_numpy(xy), c=c).numpy(),
                                   poincare.dist0(x, c=c).numpy(), rtol=1e-9)


def test_plot_training_curves(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    from hyperbolic.evaluation.plots import plot_training_curves
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_mAP": 0.1 * e, "c": 1.0 + 0.1 * e,
                "temperature": 0.1} for e in range(1, 6)]
    (tmp_path / "setup.json").write_text(json.dumps({"history": history}))
    out = plot_training_curves(tmp_path / "setup.json", tmp_path / "curves.png")
    png = image.imread(out)
    assert png.shape[:2] == (800, 1000) and png[..., :3].std() > 0.01
    (tmp_path / "empty.json").write_text(json.dumps({"history": []}))
    with pytest.raises(ValueError, match="no 'history'"):
        plot_training_curves(tmp_path / "empty.json", tmp_path / "none.png")


# Published AudioSet ids of the demo classes (class_labels_indices.csv of AudioSet).
DEMO_MIDS = {"Sine wave": "/m/01v_m0", "White noise": "/m/0chx_", "Pink noise": "/m/0cj0r", "Silence": "/m/028v0c",
             "Mains hum": "/m/06xkwv", "Chirp tone": "/m/0hdsk", "Clicking": "/m/07qc9xj", "Beep, bleep": "/m/02fs_r",
             "Dial tone": "/m/015jpf", "Buzz": "/m/07pjwq1"}


@pytest.fixture(scope="module")
def with_mids(tmp_path_factory, demo_eval_dir):
    """The demo eval shards plus a ``labels`` column of machine ids, as AudioSet's shards have;
    the first row's ids also hold one id that is no class."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path_factory.mktemp("mids")
    for i, path in enumerate(sorted(Path(demo_eval_dir).glob("*.parquet"))):
        table = pq.read_table(path)
        ids = [[DEMO_MIDS[name] for name in row] + (["/m/0not_a_class"] if (i, r) == (0, 0) else [])
               for r, row in enumerate(table.column("human_labels").to_pylist())]
        pq.write_table(table.append_column("labels", pa.array(ids)), folder / path.name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("flag, expect_all", [("3", False), ("all", True), ("0", True), (None, True)])
def test_results_say_how_many_rows_the_folder_holds_and_how_many_were_used(
        tmp_path, tiny_clap_dir, demo_eval_dir, flag, expect_all):
    import pyarrow.parquet as pq
    held = sum(pq.read_table(p).num_rows for p in Path(demo_eval_dir).glob("*.parquet"))
    assert held > 3  # the fixture has 20 rows; the default 100 then reads them all
    out = tmp_path / "r.json"
    extra = [] if flag is None else ["--num-samples", flag]
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, out, *extra))
    assert code == 0
    info = json.loads(out.read_text())["test_info"]
    assert info["rows_in_folder"] == held
    assert info["rows_used"] == (held if expect_all else 3)
    assert info["num_samples"] == (None if flag in ("all", "0") else 100 if flag is None else 3)
    told = [line for line in err.splitlines() if "--num-samples all scores every row" in line]
    assert len(told) == (0 if expect_all else 1)
    if not expect_all:
        assert f"first 3 of the {held} rows" in told[0]


@pytest.mark.slow
def test_label_column_of_machine_ids_gives_the_same_results_as_names(tmp_path, with_mids, tiny_clap_dir):
    results = {}
    for column in ("human_labels", "labels"):
        out = tmp_path / f"{column}.json"
        code, err = run_main(eval_script, _eval_argv(with_mids, tiny_clap_dir, out, "--label-column", column))
        assert code == 0, err
        results[column] = json.loads(out.read_text())
    names, ids = results["human_labels"], results["labels"]
    assert [p["ground_truth_indices"] for p in ids["predictions"]] == [
        p["ground_truth_indices"] for p in names["predictions"]]
    assert [p["ground_truth_human_labels"] for p in ids["predictions"]][1:] == [
        p["ground_truth_human_labels"] for p in names["predictions"]][1:]  # recorded as class names
    assert ids["metrics"]["mAP"] == names["metrics"]["mAP"]
    assert ids["unknown_labels"] == [{"label": "/m/0not_a_class", "count": 1}]
    speech = next(i for i, name in enumerate(json.loads(
        (Path(train_script.__file__).parent / "CLAP/class_labels/audioset_class_labels_indices.json").read_text()
    ).values()) if name == "Speech")
    from data.labels import LabelMatcher, load_class_ids, load_class_labels
    from hyperbolic.config import DEFAULT_CLASS_LABELS
    classes = load_class_labels(DEFAULT_CLASS_LABELS)
    matcher = LabelMatcher(classes, load_class_ids(DEFAULT_CLASS_LABELS, classes))
    assert matcher.match("/m/09x0r,/m/0chx_") == (sorted([speech, classes.index("White noise")]), [])


def test_missing_label_column_names_the_flag_and_no_message_dumps_a_dict(tmp_path, demo_eval_dir, tiny_clap_dir):
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "r.json",
                                                 "--label-column", "labels"))
    assert code == 2
    assert "--label-column" in err and "'labels'" in err
    assert "[" not in err.splitlines()[-1] and "{" not in err.splitlines()[-1]
    # No usable clip for training: counts by reason and the flags to check, no dict
    classes = tmp_path / "classes.txt"
    classes.write_text("Speech\nMusic\n")
    code, err = run_main(train_script, _train_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "run",
                                                   "--class-labels", classes))
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert "20 no_known_label" in last and "--label-column" in last and "{" not in last


def test_top1_row_says_whose_cosine_it_is():
    from hyperbolic.evaluation.tables import format_metrics_table
    usage = {"audio": {"on_clip_sphere": 0.0}, "text": {"on_clip_sphere": 0.25}, "top1_same_as_cosine": 0.625}
    table = format_metrics_table({"test_info": {}, "models": {
        "clap_cosine": {"metrics": {}, "ball_usage": None}, "run-hyperbolic": {"metrics": {}, "ball_usage": usage}}})
    row = next(line for line in table.splitlines() if line.startswith("top1_same_own_cos"))
    assert row.split()[1:] == ["-", "0.6250"]
    assert "top1_same_cos " not in table
    assert "cosine of the model's own projected points" in table and "not the clap_cosine column" in table
