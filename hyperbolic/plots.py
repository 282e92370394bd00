"""PNG figures for evaluation and training: class prompts on the Poincaré disk, per-class AP,
training curves.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global
backend or figure state is touched) at a fixed size and dpi, without tight bounding boxes, so
each kind of PNG always has the same pixel size (``*_PX`` below). Files are written
atomically (``outputs.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from sklearn.decomposition import PCA

from hyperbolic import poincare
from hyperbolic.outputs import atomic_write_bytes

DPI = 100
DISK_PX = (800, 800)        # (width, height) of plot_poincare_disk
AP_PX = (1000, 800)         # plot_per_class_ap
CURVES_PX = (1000, 800)     # plot_training_curves
ANNOTATE_MAX = 40           # above this many classes only the 40 with most children are named


def _figure(px: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(px[0] / DPI, px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def disk_layout(points, *, c: float) -> np.ndarray:
    """(C, D) points of the ball -> (C, 2) points of the disk of the same curvature.

    ``u = logmap0(x)``; the directions come from PCA of u to 2-D (scikit-learn, centred);
    each 2-D vector is rescaled to its point's original tangent norm ``|u|``, then mapped by
    ``expmap0``. Distances from the origin (hence ``dist0``) are kept exactly; angles between
    points are only as faithful as two principal components allow.
    """
    x = torch.as_tensor(points, dtype=torch.float64)
    u = poincare.logmap0(x, c=c).numpy()
    norms = np.linalg.norm(u, axis=1)
    k = min(2, u.shape[0], u.shape[1])
    z = np.zeros((u.shape[0], 2))
    if k > 0 and u.shape[0] > 1:
        z[:, :k] = PCA(n_components=k, svd_solver="full").fit_transform(u)
    zn = np.linalg.norm(z, axis=1)
    # A point at the PCA centre has no 2-D direction; it is put on the first axis at its norm.
    direction = np.where(zn[:, None] > 1e-12, z / np.where(zn > 1e-12, zn, 1.0)[:, None], [1.0, 0.0])
    return poincare.expmap0(torch.from_numpy(direction * norms[:, None]), c=c).numpy()


def plot_poincare_disk(xy: np.ndarray, out_png: str | Path, *, c: float, names: Sequence[str],
                       categories: Sequence[str | None] | None = None,
                       edges: Sequence[tuple[int, int]] | None = None, title: str = "") -> Path:
    """Scatter (C, 2) disk points inside the boundary circle of radius ``1/sqrt(c)``.

    ``categories`` colours the points (e.g. the top-level ontology category; None: grey,
    "unmatched"); ``edges`` are (parent, child) index pairs drawn as straight grey segments
    (not geodesics). With more than ANNOTATE_MAX classes only the ANNOTATE_MAX classes with the
    most children are named.
    """
    xy = np.asarray(xy, dtype=float)
    radius = 1.0 / math.sqrt(c)
    fig = _figure(DISK_PX)
    ax = fig.add_subplot(1, 1, 1)
    ax.add_patch(Circle((0, 0), radius, fill=False, color="black", linewidth=1.0))
    for a, b in edges or ():
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], color="0.6", linewidth=0.6, zorder=1)
    if categories is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=14, color="tab:blue", zorder=2)
    else:
        groups = sorted({g for g in categories if g is not None})
        cmap = colormaps["tab10"]
        for k, group in enumerate([*groups, None]):
            idx = [i for i, g in enumerate(categories) if g == group]
            if idx:
                ax.scatter(xy[idx, 0], xy[idx, 1], s=14, zorder=2, label=group or "unmatched",
                           color="0.5" if group is None else cmap(k % 10))
        fig.legend(loc="lower center", ncol=4, fontsize=7, frameon=False)
    if len(names) <= ANNOTATE_MAX:
        labelled = range(len(names))
    else:  # the classes with the most children: the hubs of the hierarchy
        fan_out = Counter(a for a, _ in edges or ())
        labelled = [a for a, _ in sorted(fan_out.items(), key=lambda kv: (-kv[1], kv[0]))[:ANNOTATE_MAX]]
    for i in labelled:
        ax.annotate(names[i], xy[i], fontsize=6, xytext=(2, 2), textcoords="offset points")
    lim = radius * 1.05
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title or "Poincaré disk", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out_png)


def plot_per_class_ap(per_class: Sequence[dict], out_png: str | Path, *, n: int = 15, title: str = "") -> Path:
    """Horizontal bars of the ``n`` best and ``n`` worst classes by AP (one panel of every
    class, best first, when there are at most ``2 n``).

    ``per_class``: rows ``{"name", "ap", "positives"}`` (``metrics.per_class_ap``); ties in AP
    are broken by name, so the chart is reproducible.
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
        ax.set_yticks(y, [f"{r['name']} ({r['positives']})" for r in part], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("AP (positives in brackets)")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title or "Per-class AP", fontsize=10)
    fig.subplots_adjust(left=0.22, right=0.97, wspace=0.7 if len(panels) > 1 else 0.2)
    return _save(fig, out_png)


def plot_training_curves(setup_json_path: str | Path, out_png: str | Path) -> Path:
    """Loss, validation mAP, c and temperature per epoch from a training ``setup.json``.

    Reads ``setup["history"]``: one row per epoch with ``epoch`` (else the row number) and
    ``train_loss``, ``val_loss``, ``val_mAP``, ``c``, ``temperature``; a panel whose keys no
    row has says "not recorded". Raises ValueError when there is no history.
    """
    setup = json.loads(Path(setup_json_path).read_text(encoding="utf-8"))
    history = setup.get("history") or []
    if not history:
        raise ValueError(f"{setup_json_path}: no 'history' rows to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    panels = (("loss", ("train_loss", "val_loss")), ("validation mAP", ("val_mAP",)),
              ("curvature c", ("c",)), ("temperature", ("temperature",)))
    fig = _figure(CURVES_PX)
    for k, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(2, 2, k + 1)
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
    fig.subplots_adjust(hspace=0.4, wspace=0.3)
    return _save(fig, out_png)
