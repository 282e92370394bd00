"""Training features: held-out classes, learned geometry, sweeps, resume."""

import json

import pytest
import torch

import train_hyperbolic_clap as train_script
from hyperbolic import train as train_module
from hyperbolic.projector import C_RANGE_FACTOR

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs


def _argv(data, clap, out, *extra):
    return ["--parquet-dir", str(data), "--checkpoint", str(clap), "--device", "cpu", "--output-dir", str(out),
            "--epochs", "4", "--batch-size", "8", "--learning-rate", "1e-2", "--seed", "3", *extra]


def _weights(path):
    return torch.load(path, weights_only=False)["projection_state_dict"]


def test_holdout_classes_never_reach_training(tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    seen_text_rows = []
    original = train_module.Trainer.logits

    def spy(self, audio, text):
        seen_text_rows.append(text.detach().clone())
        return original(self, audio, text)

    monkeypatch.setattr(train_module.Trainer, "logits", spy)
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--holdout-classes", "0.3")) == 0
    setup = json.loads((out / "setup.json").read_text())
    held = setup["holdout_classes"]
    assert len(held) == 3  # 30% of the 10 classes present
    names = setup["class_names"]
    ckpt = torch.load(out / "projection_epoch_4.pth", weights_only=False)
    assert ckpt["holdout_classes"] == held
    # Held-out prompt embeddings are never fed to the projector during training or validation.
    from hyperbolic.clap import FrozenClap
    from hyperbolic.embeddings import embed_prompts, prompts_for
    held_emb = embed_prompts(FrozenClap.load(str(tiny_clap_dir)), prompts_for(held, setup["config"]["prompt_template"]))
    seen_emb = embed_prompts(FrozenClap.load(str(tiny_clap_dir)), prompts_for([n for n in names if n not in held][:3],
                                                                              setup["config"]["prompt_template"]))
    rows = torch.cat(seen_text_rows)
    assert not any(torch.isclose(rows, h, atol=1e-6).all(dim=1).any() for h in held_emb)
    assert any(torch.isclose(rows, s, atol=1e-6).all(dim=1).any() for s in seen_emb)  # the spy sees prompts
    # Same seed, same held-out set.
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, tmp_path / "again", "--holdout-classes", "0.3",
                                   "--epochs", "1")) == 0
    assert json.loads((tmp_path / "again" / "setup.json").read_text())["holdout_classes"] == held


def test_holdout_classes_from_file(tmp_path, tiny_clap_dir, demo_train_dir):
    listing = tmp_path / "held.txt"
    listing.write_text("white noise\nSine wave\n")
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--holdout-classes", str(listing),
                                   "--epochs", "1")) == 0
    assert sorted(json.loads((out / "setup.json").read_text())["holdout_classes"]) == ["Sine wave", "White noise"]


def test_learned_curvature_stays_in_its_clamp(tmp_path, tiny_clap_dir, demo_train_dir):
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--learn-c", "--learn-temperature",
                                   "--c", "0.5", "--learning-rate", "0.5", "--epochs", "6")) == 0
    history = json.loads((out / "setup.json").read_text())["history"]
    cs = [row["c"] for row in history]
    assert all(0.5 / C_RANGE_FACTOR * (1 - 1e-6) <= c <= 0.5 * C_RANGE_FACTOR * (1 + 1e-6) for c in cs)
    assert len(set(cs)) > 1  # it was learned
    ckpt = torch.load(out / "projection_epoch_6.pth", weights_only=False)
    assert ckpt["c"] == pytest.approx(cs[-1]) and ckpt["temperature"] == pytest.approx(history[-1]["temperature"])


def test_sweep_writes_one_folder_per_combination(tmp_path, tiny_clap_dir, demo_train_dir, capsys):
    out = tmp_path / "sweep"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--c", "0.1", "1.0", "--temperature",
                                   "0.2", "0.5", "--epochs", "2")) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["runs"]) == 4
    for run in sweep["runs"]:
        folder = out / f"c{run['c']:g}_t{run['temperature']:g}"
        assert (folder / "setup.json").exists() and (folder / "projection_epoch_2.pth").exists()
        ckpt = torch.load(folder / "projection_epoch_2.pth", weights_only=False)
        assert ckpt["c"] == pytest.approx(run["c"]) and ckpt["temperature"] == pytest.approx(run["temperature"])
    assert sweep["winner"]["best_val_mAP"] == max(r["best_val_mAP"] for r in sweep["runs"])
    assert "<- best" in capsys.readouterr().out


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    full = tmp_path / "full"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, full)) == 0

    interrupted = tmp_path / "interrupted"
    writes = []
    original = train_module.atomic_write_json

    def crash_after_two_epochs(path, obj):
        original(path, obj)
        writes.append(path)
        if len(writes) == 3:  # setup.json at the start, then after epochs 1 and 2
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(train_module, "atomic_write_json", crash_after_two_epochs)
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, interrupted)) == 130  # Ctrl-C: one line
    monkeypatch.setattr(train_module, "atomic_write_json", original)
    assert not (interrupted / "projection_epoch_3.pth").exists()
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, interrupted, "--resume", str(interrupted))) == 0
    a, b = _weights(full / "projection_epoch_4.pth"), _weights(interrupted / "projection_epoch_4.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((full / "setup.json").read_text())["history"]
    hb = json.loads((interrupted / "setup.json").read_text())["history"]
    assert [r["val_loss"] for r in ha] == [r["val_loss"] for r in hb]


def test_resume_refuses_other_data(tmp_path, tiny_clap_dir, demo_train_dir):
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "1")) == 0
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--resume", str(out), "--seed", "4",
                                   "--epochs", "2")) == 2


def test_non_finite_loss_stops_with_epoch_and_batch(tmp_path, monkeypatch, capsys, tiny_clap_dir, demo_train_dir):
    calls = []
    original = train_module.Trainer.batch_loss

    def poisoned(self, audio, labels, first):
        loss = original(self, audio, labels, first)
        calls.append(self.projector.training)
        if sum(calls) == 6:  # 4 training batches per epoch: epoch 2, batch 1
            return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module.Trainer, "batch_loss", poisoned)
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out)) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, batch 1" in err
    assert sorted(p.name for p in out.glob("projection_epoch_*.pth")) == ["projection_epoch_1.pth"]
    ckpt = torch.load(out / "projection_epoch_1.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["projection_state_dict"].values())


def test_split_without_validation_clip_is_a_clear_error(tmp_path, capsys, tiny_clap_dir, demo_train_dir):
    code = train_script.main(_argv(demo_train_dir, tiny_clap_dir, tmp_path / "run", "--num-samples", "3",
                                   "--train-ratio", "0.9"))
    assert code == 2
    assert "--train-ratio 0.9 splits 3 usable clips into 3 train and 0 validation" in capsys.readouterr().err


def test_fewer_clips_than_a_batch_trains(tmp_path, tiny_clap_dir, demo_train_dir):
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--num-samples", "6", "--train-ratio", "0.5",
                                   "--batch-size", "16", "--epochs", "2")) == 0
    history = json.loads((out / "setup.json").read_text())["history"]
    assert all(row["val_loss"] > 0 for row in history)  # a real loss on 3 clips, not a placeholder


def test_swanlab_receives_config_and_one_log_per_epoch(tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    import sys
    import types
    calls = {"init": [], "log": [], "finish": 0}
    fake = types.SimpleNamespace(
        init=lambda **kw: calls["init"].append(kw),
        log=lambda row, step: calls["log"].append((step, row)),
        finish=lambda: calls.__setitem__("finish", calls["finish"] + 1))
    monkeypatch.setitem(sys.modules, "swanlab", fake)
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "2", "--use-swanlab",
                                   "--swanlab-mode", "offline", "--swanlab-project", "P")) == 0
    assert calls["init"][0]["project"] == "P" and calls["init"][0]["mode"] == "offline"
    assert calls["init"][0]["config"]["epochs"] == 2
    assert [step for step, _ in calls["log"]] == [1, 2] and "val_mAP" in calls["log"][0][1]
    assert calls["finish"] == 1


def test_evaluation_reports_seen_and_unseen_classes(tmp_path, tiny_clap_dir, demo_train_dir, demo_eval_dir):
    import numpy as np
    from sklearn.metrics import average_precision_score

    import test_clap_modelscope as test_script
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--holdout-classes", "0.3",
                                   "--epochs", "2")) == 0
    held = json.loads((out / "setup.json").read_text())["holdout_classes"]
    labels = tmp_path / "labels.json"  # the 10 demo classes keep the test fast
    from data.synthetic import DEMO_CLASSES
    labels.write_text(json.dumps(dict(enumerate(DEMO_CLASSES))))
    result, scores = tmp_path / "r.json", tmp_path / "s.npz"
    assert test_script.main(["--parquet-dir", str(demo_eval_dir), "--checkpoint", str(tiny_clap_dir),
                             "--device", "cpu", "--use-hyperbolic", "--projection-checkpoint",
                             str(out / "projection_epoch_2.pth"), "--class-labels", str(labels),
                             "--output-json", str(result), "--save-scores", str(scores)]) == 0
    split = json.loads(result.read_text())["metrics_by_split"]
    assert sorted(split["holdout_classes"]) == sorted(held)
    data = np.load(scores)
    s, y = data[[k for k in data.files if k.startswith("scores_")][0]], data["targets"]
    unseen = np.array([name in held for name in data["class_names"]])
    rows = y[:, unseen].any(axis=1)
    expected = np.mean([average_precision_score(y[rows][:, unseen][:, j], s[rows][:, unseen][:, j])
                        for j in range(unseen.sum())])
    assert split["unseen"]["mAP"] == pytest.approx(expected, rel=1e-9)
    assert split["unseen"]["num_classes_evaluated"] == len(held)
    assert split["seen"]["num_classes_evaluated"] == 10 - len(held)
