"""Training on captions: positives, shared strings, mixing with class labels, the caption -> clip
cone term, selection on validation retrieval, and what the checkpoint records."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_hyperbolic_clap as train_script
from data.audioset import SkipLog
from data.labels import LabelMatcher
from data.synthetic import DEMO_CLASSES
from hyperbolic.config import TrainConfig
from hyperbolic.embedding.clap import FrozenClap
from hyperbolic.model.projector import similarity
from hyperbolic.training.captions import CaptionTrainer, caption_training_data
from tests.benchmark_folders import write_caption_training_folder
from tests.helpers import run_main, train_argv


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("caption_train")
    return folder, write_caption_training_folder(folder)


def _argv(data, clap, out, *extra):
    return train_argv(data, clap, out, *extra, epochs=3, batch_size=4, num_workers=0, train_ratio=0.5,
                      text_column="caption")


def _cfg(folder, **kw):
    return TrainConfig(parquet_dir=str(folder), device="cpu", num_workers=0, no_cache=True, text_column=["caption"],
                       **kw)


def test_positives_are_the_clips_captions_shared_strings_of_both(captions_dir, tiny_clap):
    folder, expected = captions_dir
    clips, prompts, info = caption_training_data(_cfg(folder), tiny_clap, class_names=[], matcher=LabelMatcher([]),
                                                 cache=None, skips=SkipLog())
    assert len(clips) == expected["clips"] and info["rows_merged_into_an_earlier_clip"] == expected["clips"]
    assert all(len(row) == 2 for row in clips.label_indices)
    shared = [row[0] for row in clips.label_indices]  # "the sound of <class>": one text per class
    for i in range(len(clips)):
        for j in range(len(clips)):
            same_class = expected["classes"][i] == expected["classes"][j]
            assert (shared[i] == shared[j]) == same_class
    assert len(prompts) == len(DEMO_CLASSES) + expected["clips"]  # distinct texts
    assert clips.first_label == shared
    # mixed with class labels: class prompts first, then the captions
    names = list(DEMO_CLASSES)
    mixed, prompts2, info2 = caption_training_data(_cfg(folder, caption_labels=True), tiny_clap, class_names=names,
                                                   matcher=LabelMatcher(names), cache=None, skips=SkipLog())
    assert info2["class_labels_mixed_in"] and len(prompts2) == len(names) + len(prompts)
    for i, row in enumerate(mixed.label_indices):
        assert row == [names.index(expected["classes"][i])] + [len(names) + k for k in clips.label_indices[i]]
    assert torch.equal(prompts2[len(names):], prompts)


def test_cone_term_pairs_caption_to_clip(captions_dir, tiny_clap):
    folder, _ = captions_dir
    clips, prompts, _ = caption_training_data(_cfg(folder), tiny_clap, class_names=[], matcher=LabelMatcher([]),
                                              cache=None, skips=SkipLog())
    losses = {}
    for w in (0.0, 0.5):
        trainer = CaptionTrainer(_cfg(folder, entailment_weight=w, seed=1), prompts.shape[1], prompts, [],
                                 num_classes=0)
        rows = [0, 3, 5]
        losses[w] = trainer.batch_loss(clips.audio[rows], [clips.label_indices[i] for i in rows],
                                       [clips.first_label[i] for i in rows])
    c = trainer.geometry.c
    pairs = [(i, k) for i in (0, 3, 5) for k in clips.label_indices[i]]
    caption_pts = trainer.projector(prompts[[k for _, k in pairs]], c=c)
    clip_pts = trainer.projector(clips.audio[[i for i, _ in pairs]], c=c)

    def violation(general, specific):
        # Xi(u, v) - psi(u) from the closed forms (Ganea et al. 2018), clamped at 0
        u, v = general.double(), specific.double()
        cc = float(c)
        nu, nv, dot = u.norm(dim=-1), v.norm(dim=-1), (u * v).sum(-1)
        diff = (u - v).norm(dim=-1)
        num = dot * (1 + cc * nu ** 2) - nu ** 2 * (1 + cc * nv ** 2)
        den = nu * diff * torch.sqrt(1 + cc ** 2 * nu ** 2 * nv ** 2 - 2 * cc * dot)
        xi = torch.arccos((num / den).clamp(-1, 1))
        psi = torch.arcsin((0.1 * (1 - cc * nu ** 2) / (cc ** 0.5 * nu)).clamp(-1, 1))
        return (xi - psi).clamp_min(0).mean()

    added = (losses[0.5] - losses[0.0]).item()
    assert added == pytest.approx(0.5 * violation(caption_pts, clip_pts).item(), rel=1e-4, abs=1e-6)
    assert added != pytest.approx(0.5 * violation(clip_pts, caption_pts).item(), rel=1e-3)


def _t2a_by_hand(scores, relevant):
    """Distinct texts as queries, stable ties: R@1, R@10 and AP@10 = (1/min(10, #rel)) sum P@i rel_i."""
    r1, r10, ap = [], [], []
    for j in range(scores.shape[1]):
        order = sorted(range(scores.shape[0]), key=lambda i: (-scores[i, j], i))
        rel = [bool(relevant[i, j]) for i in order]
        r1.append(rel[0])
        r10.append(any(rel[:10]))
        ap.append(sum(sum(rel[:r + 1]) / (r + 1) for r in range(min(10, len(rel))) if rel[r]) / min(10, sum(rel)))
    return {"val_t2a_R@1": np.mean(r1), "val_t2a_R@10": np.mean(r10), "val_t2a_mAP@10": np.mean(ap)}


@pytest.mark.slow
def test_training_selects_on_validation_retrieval(captions_dir, tiny_clap_dir, tmp_path):
    folder, _ = captions_dir
    out = tmp_path / "run"
    code, err = run_main(train_script, _argv(folder, tiny_clap_dir, out, "--entailment-weight", "0.1",
                                             "--select-metric", "val_t2a_mAP@10"))
    assert code == 0, err
    setup = json.loads((out / "setup.json").read_text())
    history = setup["history"]
    assert setup["config"]["text_column"] == ["caption"]
    assert setup["config"]["caption_labels"] is False and setup["captions"]["clip_id_column"] == "video_id"
    values = [row["val_t2a_mAP@10"] for row in history]
    assert len(set(values)) > 1  # the epochs differ, so the choice means something
    best = setup["summary"]["best_epoch"]
    tied = [e for e, v in enumerate(values, 1) if v == max(values)]  # ties broken on the lowest val_loss, then first
    assert best == min(tied, key=lambda e: (history[e - 1]["val_loss"], e))
    ckpt = torch.load(out / f"best_projection_epoch_{best}.pth", weights_only=False)
    assert ckpt["text_column"] == ["caption"] and ckpt["config"]["text_column"] == ["caption"]
    # val_t2a_R@10 recomputed by hand from the best checkpoint on the validation clips
    clap = FrozenClap.load(str(tiny_clap_dir), "cpu")
    clips, prompts, _ = caption_training_data(_cfg(folder), clap, class_names=[], matcher=LabelMatcher([]),
                                              cache=None, skips=SkipLog())
    ids = {f"{m.file}:{m.row}:{m.video_id}": i for i, m in enumerate(clips.metas)}
    val = [ids[k] for k in ckpt["split"]["val"]]
    texts = sorted({k for i in val for k in clips.label_indices[i]})
    relevant = np.array([[k in clips.label_indices[i] for k in texts] for i in val])
    from hyperbolic.model.projector import Projector
    projector = Projector(prompts.shape[1], geometry="hyperbolic", clip_r=ckpt["clip_r"])
    projector.load_state_dict(ckpt["projection_state_dict"])
    c, tau = ckpt["c"], ckpt["temperature"]
    with torch.no_grad():
        scores = similarity(projector(clips.audio[val], c=c), projector(prompts[texts], c=c), geometry="hyperbolic",
                            c=c, temperature=tau).numpy()
    for key, value in _t2a_by_hand(scores, relevant).items():
        assert history[best - 1][key] == pytest.approx(value, abs=1e-9), key
    assert history[best - 1]["val_mAP"] == pytest.approx(np.mean([
        _ap(scores[:, j], relevant[:, j]) for j in range(len(texts))]), abs=1e-6)


def _ap(s, y):
    from sklearn.metrics import average_precision_score
    return average_precision_score(y, s)


@pytest.mark.slow
def test_mixed_labels_and_flag_errors(captions_dir, tiny_clap_dir, tmp_path):
    folder, _ = captions_dir
    out = tmp_path / "mixed"
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(DEMO_CLASSES) + "\n")
    code, err = run_main(train_script, _argv(folder, tiny_clap_dir, out, "--label-column", "human_labels",
                                             "--class-labels", labels, "--epochs", "1"))
    assert code == 0, err
    setup = json.loads((out / "setup.json").read_text())
    assert setup["config"]["caption_labels"] is True and setup["captions"]["class_labels_mixed_in"] is True
    assert setup["config"]["select_metric"] == "val_t2a_R@10"  # the default with --text-column
    assert "val_t2a_mAP@10" in setup["history"][0] and setup["summary"]["best_val_t2a_R@10"] is not None
    for extra, message in ((["--select-metric", "val_t2a_R@10"], "needs --text-column"),):
        code, err = run_main(train_script, ["--parquet-dir", folder, *extra])
        assert code == 2 and message in err
    code, err = run_main(train_script, _argv(folder, tiny_clap_dir, tmp_path / "x", "--holdout-classes", "0.5"))
    assert code == 2 and "--holdout-classes works on class labels" in err


def _run(select="val_t2a_R@10"):
    return SimpleNamespace(cfg=SimpleNamespace(select_metric=select), setup={"history": []}, best=None,
                           best_epoch=None, stale=0)


def test_a_tie_on_the_selection_metric_is_broken_on_val_loss_and_said(caplog):
    from hyperbolic.training.train import _record
    run = _run()
    rows = [(0.8, 3.0), (1.0, 2.5), (1.0, 2.0), (1.0, 2.2), (0.9, 1.0)]  # (R@10, val_loss)
    with caplog.at_level(logging.WARNING, logger="hyperbolic.training.train"):
        results = [_record(run, e, {"epoch": e, "val_t2a_R@10": m, "val_loss": v})
                   for e, (m, v) in enumerate(rows, 1)]
    assert [r[0] for r in results] == [True, True, True, False, False]
    assert run.best_epoch == 3 and run.stale == 2
    assert "ties epoch 2" in results[2][1] and "2.0000 < 2.5000" in results[2][1]
    assert "ties epoch 3" in results[3][1] and results[4][1] == ""
    assert caplog.text.count("reached 1 at epoch 2") == 1  # saturation said once


def test_curves_show_the_selection_metric():
    from hyperbolic.evaluation.plots import curve_panels
    history = [{"train_loss": 1.0, "val_loss": 1.0, "val_mAP": 0.5, "val_t2a_R@10": 1.0, "c": 1.0, "temperature": 0.1}]
    assert [t for t, _ in curve_panels(history, "val_t2a_R@10")][:2] == [
        "loss", "val_t2a_R@10 (selects the best epoch)"]
    assert [t for t, _ in curve_panels(history)] == ["loss", "validation mAP"]
