"""Class splits of a checkpoint (seen / unseen / never_trained, ``hyperbolic.evaluation.splits``),
plain CLAP beside each with paired bootstrap intervals, the coverage warning, and ``--holdout-seed``
keeping the held-out classes fixed across ``--seed``. Metrics checked against scikit-learn."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from hyperbolic.evaluation.splits import class_parts, coverage, split_block
from hyperbolic.evaluation.tables import format_metrics_table
from hyperbolic.metrics.classification import classification_metrics
from hyperbolic.report import build_report, to_markdown

NAMES = ["Speech", "Music", "Dog", "Cat", "Bird"]


def test_class_parts_from_the_record_and_without_it():
    parts = class_parts({"holdout_classes": ["dog"]}, {"trained_classes": ["Speech", "music"]}, NAMES)
    assert parts["seen"].tolist() == [True, True, False, False, False]
    assert parts["unseen"].tolist() == [False, False, True, False, False]
    assert parts["never_trained"].tolist() == [False, False, False, True, True]
    old = class_parts({"holdout_classes": ["Dog"]}, None, NAMES)  # an earlier checkpoint: seen = not held out
    assert old["seen"].tolist() == [True, True, False, True, True] and old["never_trained"] is None
    assert class_parts({"holdout_classes": []}, None, NAMES) is None


def _case(seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random((60, 5)) < 0.35
    t[~t.any(1), 0] = True
    return rng.normal(size=(60, 5)) + t, rng.normal(size=(60, 5)) + 0.5 * t, t


def test_split_block_against_sklearn_with_plain_clap_and_paired_intervals():
    s, plain, t = _case()
    parts = class_parts({"holdout_classes": ["Dog"]}, {"trained_classes": ["Speech", "Music"]}, NAMES)
    cfg = SimpleNamespace(bootstrap=50, bootstrap_seed=0)
    out = split_block(parts, s, plain, t, cfg, lambda a, b: classification_metrics(a, b), ["Dog"], "clap_cosine")
    for part, cols in (("seen", [0, 1]), ("unseen", [2]), ("never_trained", [3, 4])):
        rows = t[:, cols].any(axis=1)
        for got, scores in ((out[part], s), (out["clap_cosine"][part], plain)):
            expected = np.mean([average_precision_score(t[rows][:, c], scores[rows][:, c]) for c in cols])
            assert got["mAP"] == pytest.approx(expected)
        vs = out["bootstrap"][part]["vs_clap_cosine"]["mAP"]
        assert vs["diff"] == pytest.approx(out[part]["mAP"] - out["clap_cosine"][part]["mAP"])
        assert vs["low"] <= vs["high"]
    assert out["classes"] == {"seen": 2, "unseen": 1, "never_trained": 2}


def test_coverage_warns_with_the_fixes(caplog):
    t = np.zeros((4, 5), dtype=bool)
    t[np.arange(4), [0, 2, 3, 4]] = True  # evaluated: Speech, Dog, Cat, Bird
    s = np.zeros((4, 5))
    s[:, 3] = 1.0          # every top 1 is Cat (never trained) ...
    s[0] = [2, 0, 0, 2, 0]  # ... except a tie of Speech and Cat: 1/2 on a never-trained class
    parts = class_parts({"holdout_classes": []}, {"trained_classes": ["Speech"]}, NAMES)
    with caplog.at_level(logging.WARNING):
        out = coverage(parts, s, t, NAMES, "m")
    assert out["trained_of_evaluated"] == pytest.approx(1 / 4)
    assert out["top1_on_never_trained"] == pytest.approx((0.5 + 3) / 4)
    assert "--negatives all-classes" in out["warning"] and "--class-labels" in caplog.text
    fine = coverage(class_parts({"holdout_classes": []}, {"trained_classes": NAMES}, NAMES), s, t, NAMES, "m")
    assert "warning" not in fine and fine["top1_on_never_trained"] == 0.0


@pytest.mark.slow
def test_holdout_seed_fixes_the_classes_and_the_splits_reach_table_and_report(tmp_path, tiny_clap_dir,
                                                                              demo_train_dir, demo_eval_dir):
    base = ["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--holdout-classes", "0.3"]
    held = []
    for seed in (3, 4):
        assert train_script.main([*base, "--seed", str(seed), "--output-dir", str(tmp_path / f"s{seed}")]) == 0
        held.append(json.loads((tmp_path / f"s{seed}" / "setup.json").read_text())["holdout_classes"])
    assert held[0] == held[1] and len(held[0]) == 3
    labels = tmp_path / "labels.json"
    from data.synthetic import DEMO_CLASSES
    labels.write_text(json.dumps(dict(enumerate(DEMO_CLASSES))))
    out = tmp_path / "r.json"
    assert eval_script.main(["--parquet-dir", str(demo_eval_dir), "--checkpoint", str(tiny_clap_dir), "--device",
                             "cpu", "--num-workers", "0", "--class-labels", str(labels), "--bootstrap", "20",
                             "--projection-checkpoint", str(tmp_path / "s3"), "--output-json", str(out)]) == 0
    results = json.loads(out.read_text())
    block = next(b for n, b in results["models"].items() if n != "clap_cosine")
    split = block["metrics_by_split"]
    assert sorted(split["holdout_classes"]) == sorted(held[0]) and split["classes"]["unseen"] == 3
    assert split["clap_cosine"]["unseen"]["mAP"] is not None and split["bootstrap"]["unseen"]["vs_clap_cosine"]
    table = format_metrics_table(results)
    assert "unseen mAP" in table and "unseen mAP-cos" in table
    assert "unseen_mAP" in to_markdown(build_report([out]))
