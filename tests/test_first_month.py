"""A user's first month (issue 20): figures that answer one question each, caption selection
that says what it selects on, tables that name their runs and keep their intervals, skipped
files said once and summed up, no empty run folder, the offline random CLAP command, the demo's
commands, and README/docs commands that still parse."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data.audioset import SkipLog, describe_skipped
from hyperbolic.geometry import poincare
from tests.helpers import run_main

ROOT = Path(__file__).resolve().parents[1]


def _captured(monkeypatch, module):
    """Make ``module._save`` keep the figure instead of writing it; returns the list of figures."""
    figures = []
    monkeypatch.setattr(module, "_save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def _ball(n, d, *, seed, scale=1.0, c=1.0):
    gen = torch.Generator().manual_seed(seed)
    return poincare.expmap0(scale * torch.randn(n, d, generator=gen, dtype=torch.float64), c=c)


# ------------------------------------------------------------------ 1: the disk figures

def test_a_two_dimensional_ball_is_drawn_as_it_is():
    from hyperbolic.evaluation.plots import disk_layout
    x, others = _ball(9, 2, seed=1, c=2.0), _ball(4, 2, seed=2, c=2.0)
    xy, oxy = disk_layout(x, c=2.0, others=others)
    np.testing.assert_array_equal(xy, x.numpy())  # no PCA: angles and distances are the real ones
    np.testing.assert_array_equal(oxy, others.numpy())


def test_the_layout_of_prompts_and_clips_together_keeps_every_distance_to_the_origin():
    from hyperbolic.evaluation.plots import disk_layout
    for c in (0.3, 1.0):
        both = torch.cat([_ball(12, 16, seed=3, c=c), _ball(40, 16, seed=4, scale=0.8, c=c)])
        xy = torch.from_numpy(disk_layout(both, c=c))
        np.testing.assert_allclose(poincare.dist0(xy, c=c).numpy(), poincare.dist0(both, c=c).numpy(), rtol=1e-9)


def test_placed_labels_never_overlap_and_stay_inside(monkeypatch):
    from hyperbolic.evaluation import disk_plots
    figures = _captured(monkeypatch, disk_plots)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.3, 0.3, size=(200, 2))  # crowded: most labels cannot all fit
    names = [f"Speech synthesizer {i}" if i % 2 else f"Speech {i}" for i in range(200)]
    disk_plots.plot_poincare_disk(xy, "unused.png", c=1.0, names=names, dim=32, counts=list(range(200, 0, -1)))
    (fig,) = figures
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert 0 < len(boxes) <= 40
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(b.x0 >= frame.x0 and b.x1 <= frame.x1 and b.y0 >= frame.y0 and b.y1 <= frame.y1 for b in boxes)
    title = ax.get_title()
    assert "PCA of log_0" in title and f"{len(boxes)} named" in title and "left unnamed" in title


def test_clip_figure_colours_the_most_frequent_classes_and_names_them_in_the_legend(monkeypatch):
    from hyperbolic.evaluation import disk_plots
    figures = _captured(monkeypatch, disk_plots)
    names = [f"class {k}" for k in range(12)]
    labels = [[k] for k in range(12) for _ in range(12 - k)] + [[0, 11]]  # class 0 most frequent
    n = len(labels)
    disk_plots.plot_clip_distances(np.zeros((12, 2)), np.zeros((n, 2)), "unused.png", c=1.0, names=names,
                                   clip_labels=labels, own=np.ones(n), other=np.full(n, 2.0), dim=2)
    classes, colour = disk_plots.clip_colour_classes(labels)
    assert classes == list(range(8)) and colour[-1] == 0  # [0, 11]: 11 is not coloured, so 0
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    counts = {k: sum(1 for c in colour if c == k) for k in classes}
    for k in classes:
        assert f"class {k} ({counts[k]} clips)" in legend
    assert "clips of other classes (10)" in legend  # classes 8..11 less the one clip of class 0
    assert "100%" in figures[0].axes[1].get_title()  # own 1 < other 2 for every clip
    assert "2-D ball, drawn as it is" in figures[0].axes[0].get_title()


def test_clip_label_distances_against_the_closed_form():
    from hyperbolic.evaluation.files import clip_label_distances
    c = 0.7
    audio, text = _ball(15, 6, seed=5, c=c), _ball(5, 6, seed=6, c=c)
    targets = np.random.default_rng(1).uniform(size=(15, 5)) < 0.3
    targets[0] = False
    targets[0, 2] = True
    own, other = clip_label_distances(audio, text, targets, c=c)
    a, t = audio.numpy(), text.numpy()
    # d_c(x, y) = arcosh(1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2))) / sqrt(c)
    sq = ((a[:, None] - t[None]) ** 2).sum(-1)
    d = np.arccosh(1 + 2 * c * sq / np.outer(1 - c * (a ** 2).sum(1), 1 - c * (t ** 2).sum(1))) / np.sqrt(c)
    for i in range(15):
        mine = d[i, targets[i]]
        np.testing.assert_allclose(own[i], mine.min() if mine.size else np.inf, rtol=1e-9)
        np.testing.assert_allclose(other[i], d[i, ~targets[i]].min() if (~targets[i]).any() else np.inf, rtol=1e-9)


def test_hierarchy_figure_draws_only_the_edges_of_the_families_shown(monkeypatch):
    from hyperbolic.evaluation import disk_plots
    figures = _captured(monkeypatch, disk_plots)
    # 8 parents with 8, 7, ..., 1 children: only the 6 largest families are drawn
    edges, child = [], 8
    for p in range(8):
        for _ in range(8 - p):
            edges.append((p, child))
            child += 1
    d0 = np.linspace(0.5, 3.0, child)
    xy = np.random.default_rng(2).uniform(-0.6, 0.6, size=(child, 2))
    disk_plots.plot_hierarchy_radii(d0, xy, edges, "unused.png", c=1.0, names=[f"n{i}" for i in range(child)], dim=2)
    scatter_ax, disk_ax = figures[0].axes
    segments = [line for line in disk_ax.lines]
    assert len(segments) == sum(8 - p for p in range(6))  # 8+7+6+5+4+3, not the 36 of every family
    shown = {tuple(np.round(xy[p], 9)) for p in range(6)} | {tuple(np.round(xy[k], 9)) for p, k in edges if p < 6}
    for line in segments:
        for point in zip(*line.get_data()):
            assert tuple(np.round(point, 9)) in shown
    outside = sum(d0[k] > d0[p] for p, k in edges)
    assert f"child further out: {outside / len(edges):.0%}" in scatter_ax.get_title()


def test_an_ap_of_one_is_inside_the_axes(monkeypatch):
    from hyperbolic.evaluation import plots
    figures = _captured(monkeypatch, plots)
    rows = [{"name": f"c{k}", "ap": 1.0 if k < 3 else 0.5, "positives": 2} for k in range(6)]
    plots.plot_ap_comparison({"a": rows, "b": rows}, "unused.png", num_clips=10)
    plots.plot_per_class_ap(rows, "unused.png", num_clips=10)
    assert figures[0].axes[0].get_ylim()[1] > 1.0
    assert figures[1].axes[0].get_xlim()[1] > 1.0


# ------------------------------------------------------------------ 2: caption selection

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


# ------------------------------------------------------------------ 3, 9: the printed tables

def test_retrieval_table_prints_intervals_and_paired_differences():
    from hyperbolic.evaluation.retrieval import METRIC_KEYS
    from hyperbolic.evaluation.tables import format_retrieval_table

    def block(v, paired):
        boot = {k: {"low": v - 0.1, "high": v + 0.05, "point": v} for k in METRIC_KEYS}
        if paired:
            boot["vs_clap_cosine"] = {k: {"diff": 0.125, "low": -0.25, "high": 0.5} for k in METRIC_KEYS}
        return {"metrics": {k: v for k in METRIC_KEYS}, "bootstrap": boot}
    table = format_retrieval_table({"test_info": {"task": "retrieval"},
                                    "models": {"clap_cosine": block(0.5, False), "run-hyperbolic": block(0.75, True)}})
    lines = table.splitlines()
    ci = next(line for line in lines if line.startswith("t2a_R@1 95% CI"))
    assert "[0.4000, 0.5500]" in ci and "[0.6500, 0.8000]" in ci
    diff = next(line for line in lines if line.startswith("a2t_R@10 - cosine"))
    assert diff.split()[-3:] == ["+0.1250", "[-0.2500,", "+0.5000]"] and diff.split()[3] == "-"


def test_top1_row_says_whose_cosine_it_is():
    from hyperbolic.evaluation.tables import format_metrics_table
    usage = {"audio": {"on_clip_sphere": 0.0}, "text": {"on_clip_sphere": 0.25}, "top1_same_as_cosine": 0.625}
    table = format_metrics_table({"test_info": {}, "models": {
        "clap_cosine": {"metrics": {}, "ball_usage": None}, "run-hyperbolic": {"metrics": {}, "ball_usage": usage}}})
    row = next(line for line in table.splitlines() if line.startswith("top1_same_own_cos"))
    assert row.split()[1:] == ["-", "0.6250"]
    assert "top1_same_cos " not in table
    assert "cosine of the model's own projected points" in table and "not the clap_cosine column" in table


# ------------------------------------------------------------------ 6: skipped files

def test_skip_summary_counts_files_apart_from_rows():
    from data.audioset import ClipMeta
    skips, other = SkipLog(), SkipLog()
    skips.add("unreadable_file", file="a.parquet", detail="x")
    other.add("decode_error", ClipMeta("b.parquet", 3, "v"))
    other.add("decode_error", ClipMeta("b.parquet", 4, "w"))
    other.add("unreadable_file", file="c.parquet")
    skips.merge(other)
    assert (skips.files_skipped(), skips.rows_skipped(), skips.total) == (2, 2, 4)
    assert skips.summary() == "skipped: 2 files (2 unreadable_file), 2 rows (2 decode_error)"
    assert describe_skipped(None) == "skipped: nothing"
    old = {"total": 1, "reasons": {"decode_error": {"count": 1, "examples": []}}}  # written before "files"
    assert describe_skipped(old) == "skipped: 1 row (1 decode_error)"


@pytest.mark.slow
def test_an_unreadable_file_is_warned_once_and_summed_up_at_the_end(tmp_path, tiny_clap_dir, demo_eval_dir,
                                                                    classes_file, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for f in demo_eval_dir.glob("*.parquet"):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "zz_broken.parquet").write_text("not parquet")
    argv = ["--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--class-labels", classes_file,
            "--num-samples", "all", "--output-json", tmp_path / "r.json", "--num-workers", "0"]
    for run in (1, 2):  # the second run reads the damaged flag from the cache
        assert eval_script.main([str(a) for a in argv]) == 0
        printed = capsys.readouterr()
        assert printed.err.count("zz_broken.parquet") == 1, run  # the log goes to stderr
        assert "skipped in all: 0 rows, 1 file" in printed.err
        assert "skipped: 1 file (1 unreadable_file)" in printed.out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["skipped"]["files_skipped"] == 1 and results["skipped"]["rows_skipped"] == 0


# ------------------------------------------------------------------ 7, 8: early errors

def test_a_missing_clap_leaves_no_run_folder(tmp_path, demo_train_dir, classes_file):
    out = tmp_path / "runs" / "hyp"
    code, err = run_main(train_script, ["--parquet-dir", demo_train_dir, "--checkpoint", tmp_path / "no_clap",
                                        "--device", "cpu", "--class-labels", classes_file, "--output-dir", out])
    assert code == 2 and "no_clap" in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_caption_data_without_text_column_points_to_text_column(tmp_path, tiny_clap_dir):
    from tests.benchmark_folders import write_caption_training_folder
    folder = tmp_path / "caps"
    write_caption_training_folder(folder, clips=2)
    (folder / "train.parquet").write_bytes(_drop_column(folder / "train.parquet", "human_labels"))
    code, err = run_main(train_script, ["--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu",
                                        "--output-dir", tmp_path / "o"])
    assert code == 2
    assert "no column 'human_labels'" in err and "--text-column caption" in err and "--label-column" in err


def _drop_column(path, column):
    import io

    import pyarrow.parquet as pq
    buffer = io.BytesIO()
    pq.write_table(pq.read_table(path).drop_columns([column]), buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------ 5: the random CLAP command

def test_random_clap_command_builds_a_loadable_folder_and_refuses_a_full_one(tmp_path, capsys):
    from hyperbolic.embedding import tiny_clap
    from hyperbolic.embedding.clap import FrozenClap
    out = tmp_path / "random_clap"
    assert tiny_clap.main([str(out), "--seed", "3"]) == 0
    assert "mean nothing" in capsys.readouterr().err
    assert FrozenClap.load(str(out), "cpu").embed_dim == 32
    with pytest.raises(SystemExit) as stop:
        tiny_clap.main([str(out)])
    assert stop.value.code == 2 and "not an empty folder" in capsys.readouterr().err


# ------------------------------------------------------------------ 10: the demo's commands

def test_demo_commands_write_to_a_new_folder_without_overwrite(tmp_path):
    from hyperbolic.config import EvalConfig, TrainConfig
    from hyperbolic.demo import demo_commands
    cfg = TrainConfig(parquet_dir="d/train", output_dir=str(tmp_path / "demo" / "checkpoints"), overwrite=True,
                      epochs=60, learning_rate=1e-2, temperature=0.1)
    eval_cfg = EvalConfig(parquet_dir="d/eval", output_json=str(tmp_path / "demo" / "results_demo.json"))
    train_line, eval_line = [shlex.split(line) for line in demo_commands(cfg, eval_cfg).splitlines()]
    assert "--overwrite" not in train_line
    out = Path(train_line[train_line.index("--output-dir") + 1])
    assert out != Path(cfg.output_dir) and not out.exists()
    assert Path(eval_line[eval_line.index("--projection-checkpoint") + 1]) == out
    assert Path(eval_line[eval_line.index("--output-json") + 1]) != Path(eval_cfg.output_json)
    train_script.parse_args(train_line[2:])
    eval_script.parse_args(eval_line[2:])


# ------------------------------------------------------------------ 11: commands in the docs

SCRIPTS = {"train_hyperbolic_clap.py": train_script, "test_clap_modelscope.py": eval_script}
COMMAND = re.compile(r"python (train_hyperbolic_clap\.py|test_clap_modelscope\.py)\b")


def documented_commands(text: str) -> list[str]:
    """Every ``python train_hyperbolic_clap.py ...`` / ``python test_clap_modelscope.py ...`` of a
    markdown page: lines of fenced blocks (backslash continuations joined, ``#`` comments and
    whatever follows ``&&`` or ``;`` dropped), and inline code spans (which may wrap)."""
    commands = []
    parts = re.split(r"^```.*$", text, flags=re.M)
    for k, part in enumerate(parts):
        if k % 2:  # inside a fence
            for line in part.replace("\\\n", " ").splitlines():
                match = COMMAND.search(line)
                if match:
                    commands.append(re.split(r"\s#|&&|;", line[match.start():])[0])
        else:
            for span in re.findall(r"`([^`]+)`", part):
                match = COMMAND.search(span)
                if match:
                    commands.append(" ".join(span[match.start():].split()))
    return commands


def test_commands_in_readme_and_docs_parse():
    parsed = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command in documented_commands(page.read_text(encoding="utf-8")):
            argv = shlex.split(command)[2:]
            if "--help" in argv or "..." in argv or any("<" in a for a in argv):
                continue  # --help exits; "..." and <placeholders> stand for the reader's own flags
            SCRIPTS[shlex.split(command)[1]].parse_args(argv)  # a usage error exits: the test fails
            parsed += 1
    assert parsed >= 20


def test_readme_quotes_no_test_counts_or_timings():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"\b\d+ tests\b|\(\d+ tests\)|\d+ s of test time", readme)
