"""The figures: the Poincaré disk (prompts, clips, hierarchy), per-class AP and the training curves, each checked for what it shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import test_clap_modelscope as eval_script
from hyperbolic.geometry import poincare
from tests.helpers import _eval_argv, run_main


def test_curve_panels_drop_what_was_not_learned():
    from hyperbolic.evaluation.plots import curve_panels
    fixed = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0, "val_mAP": 0.1 * e, "c": 1.0,
              "temperature": 0.1} for e in (1, 2, 3)]
    assert [t for t, _ in curve_panels(fixed)] == ["loss", "validation mAP"]
    learned = [{**row, "temperature": 0.1 + 0.01 * row["epoch"]} for row in fixed]
    assert [t for t, _ in curve_panels(learned)] == ["loss", "validation mAP", "temperature"]


def test_training_curves_mark_the_best_epoch(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from hyperbolic.evaluation.plots import plot_training_curves
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 - 0.1 * e, "val_mAP": 0.1 * e, "c": 1.0,
                "temperature": 0.1} for e in range(1, 6)]
    images = {}
    for best in (2, 4):
        (tmp_path / "setup.json").write_text(json.dumps({"history": history, "summary": {"best_epoch": best}}))
        images[best] = imread(plot_training_curves(tmp_path / "setup.json", tmp_path / f"b{best}.png"))
    assert not np.array_equal(images[2], images[4])  # the mark moves with the best epoch


def test_disk_labels_name_the_most_frequent_classes_when_there_are_many():
    from hyperbolic.evaluation.plots import disk_labels
    names = [f"class {i}" for i in range(527)]
    counts = [0] * 527
    for i, n in zip(range(100, 150), range(50, 0, -1)):  # classes 100..149, decreasing counts
        counts[i] = n
    assert disk_labels(names, counts=counts) == list(range(100, 140))
    assert disk_labels(names[:12], counts=counts[:12]) == list(range(12))  # few classes: all named


def test_disk_layout_puts_clips_with_the_prompts_pca():
    import torch

    from hyperbolic.evaluation.plots import disk_layout
    from hyperbolic.geometry import poincare
    g = torch.Generator().manual_seed(0)
    text = poincare.expmap0(0.5 * torch.randn(20, 8, generator=g, dtype=torch.float64), c=1.0)
    audio = poincare.expmap0(0.5 * torch.randn(7, 8, generator=g, dtype=torch.float64), c=1.0)
    xy, audio_xy = disk_layout(text, c=1.0, others=audio)
    assert np.allclose(xy, disk_layout(text, c=1.0))  # the prompts' layout does not depend on the clips
    assert np.allclose(np.linalg.norm(audio_xy, axis=1), audio.norm(dim=1).numpy())  # dist0 kept


@pytest.mark.slow
def test_plots_of_a_comparison_run(tmp_path, five_epochs, tiny_clap_dir, demo_eval_dir):
    out = tmp_path / "r.json"
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, out, "--projection-checkpoint",
                                                 five_epochs, "--plots"))
    assert code == 0, err
    results = json.loads(out.read_text())
    figure = Path(results["test_info"]["comparison_plot"])
    assert figure.is_file() and figure.name == "r_per_class_ap_models.png"
    for block in results["models"].values():
        assert Path(block["plots"]["per_class_ap"]).is_file()


def _captured(monkeypatch, module):
    """Make ``module._save`` keep the figure instead of writing it; returns the list of figures."""
    figures = []
    monkeypatch.setattr(module, "_save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def _ball(n, d, *, seed, scale=1.0, c=1.0):
    gen = torch.Generator().manual_seed(seed)
    return poincare.expmap0(scale * torch.randn(n, d, generator=gen, dtype=torch.float64), c=c)


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
