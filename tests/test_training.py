"""Training features: held-out classes, learned geometry, sweeps, resume."""

import json

import pytest
import torch

import train_hyperbolic_clap as train_script
from hyperbolic.model.projector import C_RANGE_FACTOR, Projector
from hyperbolic.training import train as train_module
from hyperbolic.training.trainer import Trainer, upgrade_optimizer_state
from tests.helpers import _train_argv, projection_weights, run_main, train_argv

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs


def _argv(data, clap, out, *extra):
    return train_argv(data, clap, out, *extra, epochs=4, seed=3)


def test_holdout_classes_never_reach_training(tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    seen_text_rows = []
    original = Projector.forward

    def spy(self, x, *, c):  # every row the projector sees: clips and prompts
        seen_text_rows.append(x.detach().clone())
        return original(self, x, c=c)

    monkeypatch.setattr(Projector, "forward", spy)
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--holdout-classes", "0.3")) == 0
    setup = json.loads((out / "setup.json").read_text())
    held = setup["holdout_classes"]
    assert len(held) == 3  # 30% of the 10 classes present
    names = setup["class_names"]
    ckpt = torch.load(out / "projection_epoch_4.pth", weights_only=False)
    assert ckpt["holdout_classes"] == held
    # Held-out prompt embeddings are never fed to the projector during training or validation.
    from hyperbolic.embedding.clap import FrozenClap
    from hyperbolic.embedding.embeddings import embed_prompts, prompts_for
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
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--learn-c", "--c", "0.5",
                                   "--learning-rate", "0.5", "--epochs", "6")) == 0
    history = json.loads((out / "setup.json").read_text())["history"]
    cs = [row["c"] for row in history]
    assert all(0.5 / C_RANGE_FACTOR * (1 - 1e-6) <= c <= 0.5 * C_RANGE_FACTOR * (1 + 1e-6) for c in cs)
    assert len(set(cs)) > 1  # it was learned
    ckpt = torch.load(out / "projection_epoch_6.pth", weights_only=False)
    assert ckpt["c"] == pytest.approx(cs[-1]) and ckpt["temperature"] == pytest.approx(history[-1]["temperature"])
    assert {row["temperature"] for row in history} == {history[0]["temperature"]}  # --learn-c alone: tau fixed


def test_sweep_writes_one_folder_per_combination(tmp_path, tiny_clap_dir, demo_train_dir, capsys):
    out = tmp_path / "sweep"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--c", "0.1", "1.0", "--temperature",
                                   "0.2", "0.5", "--no-learn-temperature", "--epochs", "2")) == 0
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
    a, b = projection_weights(full / "projection_epoch_4.pth"), projection_weights(interrupted / "projection_epoch_4.pth")
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
    original = Trainer.batch_loss

    def poisoned(self, audio, labels, first):
        loss = original(self, audio, labels, first)
        calls.append(self.projector.training)
        if sum(calls) == 6:  # 4 training batches per epoch: epoch 2, batch 1
            return loss * float("nan")
        return loss

    monkeypatch.setattr(Trainer, "batch_loss", poisoned)
    # The thread probe's steps would be counted too: this test is about the epochs' batches.
    monkeypatch.setattr("hyperbolic.training.train.probe_threads", lambda step, available: (1, {}))
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out)) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, batch 1" in err
    assert sorted(p.name for p in out.glob("projection_epoch_*.pth")) == ["projection_epoch_1.pth"]
    ckpt = torch.load(out / "projection_epoch_1.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["projection_state_dict"].values())


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


# ------------------------------------------------------------- issue 11: what the numbers mean

def test_holdout_drops_every_clip_with_a_held_out_label(tmp_path, tiny_clap_dir):
    import pyarrow.parquet as pq

    from data.synthetic import write_demo_dataset
    data = tmp_path / "mixed"
    write_demo_dataset(data, clips_per_class=2, seed=5, seconds=1.0, mixtures=12)
    labels = {vid: set(lab) for f in sorted(data.glob("*.parquet"))
              for vid, lab in zip(*pq.read_table(f, columns=["video_id", "human_labels"]).to_pydict().values())}
    listing = tmp_path / "held.txt"
    listing.write_text("Sine wave\nWhite noise\n")
    held = {"Sine wave", "White noise"}
    carrying = {v for v, lab in labels.items() if lab & held}
    only = {v for v, lab in labels.items() if lab <= held}
    assert len(carrying) > len(only)  # some mixtures pair a held-out class with another one
    out = tmp_path / "run"
    assert train_script.main(_argv(data, tiny_clap_dir, out, "--holdout-classes", str(listing), "--epochs", "1")) == 0
    setup = json.loads((out / "setup.json").read_text())
    assert setup["data"]["clips_dropped_holdout"] == len(carrying)
    assert setup["data"]["clips_dropped_only_holdout_labels"] == len(only)
    assert setup["data"]["clips"] == len(labels) - len(carrying)
    split = torch.load(out / "projection_epoch_1.pth", weights_only=False)["split"]
    used = {entry.rsplit(":", 1)[1] for part in ("train", "val") for entry in split[part]}
    assert used == set(labels) - carrying  # no held-out audio in training or validation


def _hierarchy_trainer(expand):
    from data.synthetic import DEMO_CLASSES, demo_ontology
    from hyperbolic.config import TrainConfig
    from hyperbolic.hierarchy.cones import EntailmentObjective, Hierarchy
    from hyperbolic.hierarchy.ontology import Ontology
    ontology = Ontology(demo_ontology())
    h = Hierarchy.build(ontology, list(DEMO_CLASSES), expand_ancestors=expand)
    torch.manual_seed(0)
    prompts = torch.nn.functional.normalize(torch.randn(len(h.prompt_names), 8), dim=-1)
    cfg = TrainConfig(parquet_dir="unused", temperature=0.5, seed=0)
    trainer = Trainer(cfg, 8, prompts, list(range(len(DEMO_CLASSES))),
                                   entailment=EntailmentObjective(h))
    return trainer, ontology, h


def test_validation_scores_against_the_ground_truth_training_uses():
    import numpy as np
    from sklearn.metrics import average_precision_score

    from hyperbolic.embedding.embeddings import ClipEmbeddings
    trainer, ontology, h = _hierarchy_trainer(expand=True)
    rng = np.random.default_rng(0)
    labels = [sorted(rng.choice(h.num_classes, size=int(rng.integers(1, 3)), replace=False).tolist())
              for _ in range(30)]
    audio = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    clips = ClipEmbeddings(audio, labels, [row[0] for row in labels], [[] for _ in labels], [None] * 30)
    # Expected positives, by name through the ontology: each label and every node above it.
    index = {name: i for i, name in enumerate(h.prompt_names)}
    y = np.zeros((30, len(h.prompt_names)), dtype=bool)
    for i, row in enumerate(labels):
        for k in row:
            node = ontology.node_id(h.prompt_names[k])
            for v in {node, *ontology.ancestors(node)}:
                y[i, index[ontology.name(v)]] = True
    assert y[:, h.num_classes:].any()  # abstract parents are positives
    # Training's own positives for these clips are the same sets.
    assert [sorted(np.flatnonzero(r).tolist()) for r in y] == trainer.entailment.expand(labels)
    with torch.no_grad():
        scores = trainer.logits(audio, trainer.prompts).numpy()
    expected = np.mean([average_precision_score(y[:, j], scores[:, j]) for j in range(y.shape[1]) if y[:, j].any()])
    row = trainer.validate(clips)
    assert row["val_mAP"] == pytest.approx(expected, rel=1e-5)
    assert row["val_mean_pos_sim"] == pytest.approx(float(scores[y].mean()), rel=1e-5)


def test_weight_decay_spares_biases_and_log_scalars(tmp_path, tiny_clap_dir, demo_train_dir):
    from hyperbolic.config import TrainConfig
    cfg = TrainConfig(parquet_dir="unused", weight_decay=0.5, learning_rate=0.1, learn_c=True,
                      learn_temperature=True, c=0.3, temperature=0.2)
    trainer = Trainer(cfg, 8, torch.randn(4, 8), [0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in [*trainer.projector.named_parameters(),
                                                  *trainer.geometry.named_parameters()]}
    # A loss of the weight matrix alone: every other parameter has a zero gradient, so only
    # decay could move it.
    trainer.optimizer.zero_grad()
    (trainer.projector.linear.weight ** 2).sum().backward()
    for p in trainer.params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    after = dict([*trainer.projector.named_parameters(), *trainer.geometry.named_parameters()])
    for name in ("linear.bias", "log_c", "log_tau"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["linear.weight"], before["linear.weight"])
    # The checkpoint shows the groups.
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--weight-decay", "0.5",
                                   "--learn-temperature", "--epochs", "1")) == 0
    groups = torch.load(out / "projection_epoch_1.pth", weights_only=False)["optimizer_state_dict"]["param_groups"]
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in groups] == [("decay", 0.5, 1),
                                                                                  ("no_decay", 0.0, 2)]


def test_single_group_optimizer_state_resumes_in_two_groups():
    from hyperbolic.config import TrainConfig
    cfg = TrainConfig(parquet_dir="unused", weight_decay=0.1, learn_temperature=True)
    trainer = Trainer(cfg, 8, torch.randn(4, 8), [0, 1, 2, 3])
    old = torch.optim.AdamW(trainer.params, lr=1e-3, weight_decay=0.1)  # the earlier single group
    for _ in range(2):
        old.zero_grad()
        sum((p ** 2).sum() for p in trainer.params).backward()
        old.step()
    saved = old.state_dict()
    trainer.optimizer.load_state_dict(upgrade_optimizer_state(saved, trainer.optimizer,
                                                                           trainer.params))
    for p, i in zip(trainer.params, saved["param_groups"][0]["params"]):
        assert torch.equal(trainer.optimizer.state[p]["exp_avg"], saved["state"][i]["exp_avg"])
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]


def test_sweep_resumed_from_a_checkpoint_names_the_sweep_folder(tmp_path, tiny_clap_dir, demo_train_dir):
    from tests.helpers import run_main
    out = tmp_path / "sweep"
    argv = _argv(demo_train_dir, tiny_clap_dir, out, "--c", "0.5", "1.0", "--temperature", "0.2", "--epochs", "2")
    assert train_script.main(argv) == 0
    names = ("c0.5_t0.2", "c1_t0.2")
    for name in names:  # as if killed after epoch 1
        (out / name / "projection_epoch_2.pth").unlink()
    pth = out / names[0] / "projection_epoch_1.pth"
    code, err = run_main(train_script, [*argv, "--resume", pth])
    assert code == 2 and f"--resume {out} " in err and "settings differ" not in err
    code, err = run_main(train_script, [*argv, "--resume", pth.parent])
    assert code == 2 and f"--resume {out}" in err
    # From the sweep folder, every combination continues from its own latest checkpoint.
    assert train_script.main([*argv, "--resume", str(out)]) == 0
    for name in names:
        assert (out / name / "projection_epoch_2.pth").exists()


@pytest.mark.slow
def test_swanlab_offline_logs_go_under_the_output_dir(tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    pytest.importorskip("swanlab")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "run"
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--use-swanlab",
                                                   "--swanlab-mode", "offline"))
    assert code == 0, err
    assert list(cwd.iterdir()) == []
    assert any(p.is_file() for p in (out / "swanlog").rglob("*"))


def test_missing_swanlab_fails_before_embedding(tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    import sys

    import hyperbolic.embedding.embeddings
    monkeypatch.setitem(sys.modules, "swanlab", None)  # import swanlab -> ImportError
    monkeypatch.setattr(hyperbolic.embedding.embeddings, "embed_clips", lambda *a, **k: pytest.fail("embedded before the check"))
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, tmp_path / "run", "--use-swanlab"))
    assert code == 2
    assert "--use-swanlab needs the swanlab package" in err


def test_a_sweep_tie_on_the_selection_metric_goes_to_the_lower_val_loss():
    from hyperbolic.training.train import sweep_rank
    rows = [{"selected_by": 1.0, "best_val_loss": 0.9}, {"selected_by": 1.0, "best_val_loss": 0.4},
            {"selected_by": 0.8, "best_val_loss": 0.1}]
    assert max(rows, key=lambda r: sweep_rank(r, select_metric="val_t2a_R@10")) is rows[1]
    assert max(rows, key=lambda r: sweep_rank(r, select_metric="val_loss")) is rows[2]
    same = [dict(rows[0]), dict(rows[0])]
    assert max(same, key=lambda r: sweep_rank(r, select_metric="val_mAP")) is same[0]
