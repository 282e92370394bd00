"""PNG figures for evaluation and training: per-class AP against chance, the per-class AP of
every model of a run in one figure, training curves with the best epoch marked, and the layout
of ball points on the Poincaré disk (``disk_layout``, ``disk_labels``) that the disk figures of
``hyperbolic.evaluation.disk_plots`` draw.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global
backend or figure state is touched) at a fixed size and dpi, without tight bounding boxes, so
each kind of PNG always has the same pixel size (``*_PX`` below). Files are written
atomically (``outputs.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from hyperbolic.geometry import poincare
from hyperbolic.outputs import atomic_write_bytes

DPI = 100
AP_PX = (1000, 800)         # plot_per_class_ap
CURVES_PX = (1000, 800)     # plot_training_curves
COMPARE_PX = (1000, 700)    # plot_ap_comparison
ANNOTATE_MAX = 40           # above this many classes only 40 are named (see disk_labels)
AP_TOP = 1.04               # AP axes end a little above 1.0, so an AP of 1.0 is drawn, not clipped


def _figure(px: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(px[0] / DPI, px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def disk_layout(points, *, c: float, others=None):
    """(C, D) points of the ball -> (C, 2) points of the disk of the same curvature.

    ``u = logmap0(x)``; the directions come from PCA of u to 2-D (scikit-learn, centred);
    each 2-D vector is rescaled to its point's original tangent norm ``|u|``, then mapped by
    ``expmap0``. Distances from the origin (hence ``dist0``) are kept exactly; angles between
    points are only as faithful as two principal components allow.

    ``others`` (M, D) (e.g. the clips): laid out with the same PCA, fitted on ``points`` only;
    then ``((C, 2), (M, 2))`` is returned.

    A 2-dimensional ball (``--proj-dim 2``) is the disk already: its points are returned as they
    are (float64), so the figure shows the real geometry, angles included.
    """
    x = torch.as_tensor(points, dtype=torch.float64)
    if x.shape[-1] == 2:
        xy = x.numpy()
        return xy if others is None else (xy, torch.as_tensor(others, dtype=torch.float64).numpy())
    u = poincare.logmap0(x, c=c).numpy()
    k = min(2, u.shape[0], u.shape[1])
    pca = PCA(n_components=k, svd_solver="full").fit(u) if k > 0 and u.shape[0] > 1 else None
    xy = _to_disk(u, pca, c)
    if others is None:
        return xy
    v = poincare.logmap0(torch.as_tensor(others, dtype=torch.float64), c=c).numpy()
    return xy, _to_disk(v, pca, c)


def _to_disk(u: np.ndarray, pca, c: float) -> np.ndarray:
    norms = np.linalg.norm(u, axis=1)
    z = np.zeros((u.shape[0], 2))
    if pca is not None and len(u):
        z[:, :pca.n_components_] = pca.transform(u)
    zn = np.linalg.norm(z, axis=1)
    # A point at the PCA centre has no 2-D direction; it is put on the first axis at its norm.
    direction = np.where(zn[:, None] > 1e-12, z / np.where(zn > 1e-12, zn, 1.0)[:, None], [1.0, 0.0])
    return poincare.expmap0(torch.from_numpy(direction * norms[:, None]), c=c).numpy()


def disk_labels(names: Sequence[str], *, edges=None, counts=None, limit: int = ANNOTATE_MAX) -> list[int]:
    """The classes named on the disk: all when there are at most ``limit``; else the ``limit``
    classes with the most clips (``counts``, ties by index), else with the most children
    (``edges``: the hubs of the hierarchy), else none."""
    if len(names) <= limit:
        return list(range(len(names)))
    if counts is not None:
        order = sorted(range(len(names)), key=lambda i: (-counts[i], i))
        return [i for i in order[:limit] if counts[i] > 0]
    fan_out = Counter(a for a, _ in edges or ())
    return [a for a, _ in sorted(fan_out.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def plot_per_class_ap(per_class: Sequence[dict], out_png: str | Path, *, n: int = 15, title: str = "",
                      num_clips: int | None = None) -> Path:
    """Horizontal bars of the ``n`` best and ``n`` worst classes by AP (one panel of every
    class, best first, when there are at most ``2 n``).

    ``per_class``: rows ``{"name", "ap", "positives"}`` (``metrics.per_class_ap``); ties in AP
    are broken by name, so the chart is reproducible. ``num_clips``: the labelled clips; each
    bar then gets its chance level, a black tick at ``positives / num_clips`` (the expected AP
    of a random ranking).
    """
    rows = sorted(per_class, key=lambda r: (-r["ap"], r["name"]))
    if not rows:
        raise ValueError("no per-class AP to plot")
    if len(rows) <= 2 * n:
        panels = [(rows, f"all {len(rows)} classes with a positive")]
    else:
        panels = [(rows[:n], f"best {n}"), (rows[::-1][:n], f"worst {n}")]
    fig = _figure(AP_PX)
    for col, (part, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), col + 1)
        y = np.arange(len(part))
        ax.barh(y, [r["ap"] for r in part], color="tab:red" if "worst" in label else "tab:green")
        if num_clips:
            ax.scatter([r["positives"] / num_clips for r in part], y, marker="|", s=120, color="black", zorder=3,
                       label="chance (positives / clips)" if col == 0 else None)
        ax.set_yticks(y, [f"{r['name']} ({r['positives']})" for r in part], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, AP_TOP)
        ax.set_xlabel("AP (positives in brackets)")
        ax.set_title(label, fontsize=9)
    if num_clips:
        fig.legend(loc="lower center", fontsize=7, frameon=False)
    fig.suptitle(title or "Per-class AP", fontsize=10)
    fig.subplots_adjust(left=0.22, right=0.97, wspace=0.7 if len(panels) > 1 else 0.2)
    return _save(fig, out_png)


def plot_ap_comparison(per_class: dict[str, Sequence[dict]], out_png: str | Path, *,
                       num_clips: int | None = None, title: str = "") -> Path:
    """Every model of a run in one figure: each model's per-class AP sorted from best to worst
    (mAP in the legend), and the chance level sorted likewise (``positives / num_clips``)."""
    fig = _figure(COMPARE_PX)
    ax = fig.add_subplot(1, 1, 1)
    for name, rows in per_class.items():
        ap = sorted((r["ap"] for r in rows), reverse=True)
        if ap:
            ax.plot(np.arange(1, len(ap) + 1), ap, linewidth=1.5, label=f"{name} (mAP {np.mean(ap):.3f})")
    if num_clips:
        rows = next(iter(per_class.values()), [])
        chance = sorted((r["positives"] / num_clips for r in rows), reverse=True)
        ax.plot(np.arange(1, len(chance) + 1), chance, color="black", linestyle="--", linewidth=1,
                label=f"chance (mean {np.mean(chance):.3f})" if chance else None)
    ax.set_ylim(0, AP_TOP)  # a model at AP 1.0 stays inside the axes
    ax.set_xlabel("class rank (each model sorted by its own AP)")
    ax.set_ylabel("AP")
    ax.legend(fontsize=8)
    ax.set_title(title or "Per-class AP of every model", fontsize=10)
    return _save(fig, out_png)


CURVE_PANELS = (("loss", ("train_loss", "val_loss")), ("validation mAP", ("val_mAP",)),
                ("curvature c", ("c",)), ("temperature", ("temperature",)))


def curve_panels(history: Sequence[dict], select_metric: str = "val_mAP") -> list[tuple[str, tuple[str, ...]]]:
    """The panels worth drawing: loss and validation mAP always; the metric that selects the
    best epoch when it is neither (``val_t2a_R@10`` of caption training), second; c and
    temperature only when they moved (learned), since a flat line says nothing the title could not."""
    def flat(key):
        values = {row[key] for row in history if row.get(key) is not None}
        return len(values) <= 1
    panels = [(title, keys) for title, keys in CURVE_PANELS if title in ("loss", "validation mAP")
              or not all(flat(k) for k in keys)]
    if select_metric not in ("val_loss", "val_mAP"):
        panels.insert(1, (f"{select_metric} (selects the best epoch)", (select_metric,)))
    return panels


def plot_training_curves(setup_json_path: str | Path, out_png: str | Path) -> Path:
    """Loss, validation mAP, the selection metric (``config.select_metric``) when it is another,
    and c and temperature when they were learned, per epoch, from a training ``setup.json``,
    with the best epoch (``summary.best_epoch``) marked on every panel and the metric it was
    selected on (and the epochs tied on it, broken on val_loss) in the figure's title.

    Reads ``setup["history"]``: one row per epoch with ``epoch`` (else the row number) and
    ``train_loss``, ``val_loss``, ``val_mAP``, ``c``, ``temperature``; a panel whose keys no
    row has says "not recorded". Raises ValueError when there is no history.
    """
    setup = json.loads(Path(setup_json_path).read_text(encoding="utf-8"))
    history = setup.get("history") or []
    if not history:
        raise ValueError(f"{setup_json_path}: no 'history' rows to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    summary = setup.get("summary") or {}
    best = summary.get("best_epoch")
    select = (setup.get("config") or {}).get("select_metric") or "val_mAP"
    panels = curve_panels(history, select)
    rows = 1 if len(panels) <= 2 else 2
    fig = _figure(CURVES_PX)
    for k, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, 2, k + 1)
        if best is not None:
            ax.axvline(best, color="0.4", linestyle=":", linewidth=1, label=f"best epoch {best}")
        drawn = False
        for key in keys:
            pts = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
                drawn = True
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    if best is not None:
        tied = summary.get("epochs_tied_on_select_metric") or [best]
        if len(tied) > 1:
            title = f"best epoch {best}: {select} ties at epochs {_span(tied)}, broken on the lowest val_loss"
        else:
            title = f"best epoch {best}: {'lowest' if select == 'val_loss' else 'highest'} {select}"
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.4, wspace=0.3)
    return _save(fig, out_png)


def _span(epochs: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``1-3, 5``."""
    runs: list[list[int]] = []
    for e in sorted(epochs):
        if runs and e == runs[-1][-1] + 1:
            runs[-1].append(e)
        else:
            runs.append([e])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
