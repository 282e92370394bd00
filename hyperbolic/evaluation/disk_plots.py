"""The Poincaré-disk figures of ``--plots``, one question each (``hyperbolic.evaluation.files``
writes them for every hyperbolic model):

- ``plot_poincare_disk``: where do the classes sit? Every class prompt, coloured by top-level
  ontology category (with ``--ontology``), the most frequent classes named without overlap.
- ``plot_clip_distances``: how far is each clip from its label? The clips of the most frequent
  classes coloured by their class beside that class's prompt (a star of the same colour), and the
  exact distances ``d_c(clip, own label)`` against ``d_c(clip, nearest other class)``.
- ``plot_hierarchy_radii``: are children outside their parents? Each parent -> child pair's
  distances from the origin (exact), and the largest families on the disk with only their edges.

Points of a ball of more than 2 dimensions are laid out by ``plots.disk_layout`` (PCA of
``logmap0`` in the tangent space at the origin, then ``expmap0``: distances from the origin exact,
angles approximate), which each title says; a 2-dimensional ball (``--proj-dim 2``) is drawn as
it is. Labels are placed by ``place_labels``: a label that would overlap another, or leave the
axes, is moved, or left out and counted in the figure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Circle

from hyperbolic.evaluation.plots import _figure, _save, disk_labels

DISK_PX = (800, 800)          # plot_poincare_disk: (width, height)
PAIR_PX = (1400, 700)         # plot_clip_distances, plot_hierarchy_radii: two panels
CLIP_CLASSES = 8              # classes whose clips get a colour of their own
HUBS = 6                      # families (a parent and its children) drawn on the hierarchy disk
LABEL_FONT = 7
# Label positions tried in turn, in points from the point: right, left, above, below, diagonals.
LABEL_OFFSETS = ((4, 2), (-4, 2), (0, 6), (0, -6), (4, 8), (-4, 8), (4, -8), (-4, -8), (10, 0), (-10, 0))


def layout_note(dim: int) -> str:
    """How the points reached the disk, for a title."""
    if dim == 2:
        return "2-D ball, drawn as it is"
    return f"{dim}-D ball: PCA of log_0 at the origin, then exp_0 (distance to origin exact)"


def _palette(k: int) -> list:
    """``k`` distinct colours (tab10 without its grey, then tab20), none of them grey."""
    tab10 = [colormaps["tab10"](i) for i in range(10) if i != 7]
    tab20 = [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    return (tab10 + tab20)[:k] if k <= len(tab10) + len(tab20) else [colormaps["hsv"](i / k) for i in range(k)]


def _disk_axes(ax, c: float) -> None:
    radius = 1.0 / math.sqrt(c)
    ax.add_patch(Circle((0, 0), radius, fill=False, color="black", linewidth=1.0))
    lim = radius * 1.05
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def place_labels(ax, xy: np.ndarray, texts: Sequence[str], *, fontsize: int = LABEL_FONT) -> tuple[list, int]:
    """Annotate ``xy[i]`` with ``texts[i]`` in the order given (most important first), each at the
    first of ``LABEL_OFFSETS`` where its box overlaps no label placed before and stays inside the
    axes; a label with no such place is left out. Returns (the annotations, how many left out).
    Call after the limits and aspect are set: boxes are measured in display coordinates."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    ax.apply_aspect()
    frame = ax.get_window_extent(renderer)
    placed, boxes, omitted = [], [], 0
    for (x, y), text in zip(np.asarray(xy, dtype=float), texts):
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center",
                              va="bottom" if dy >= 0 else "top", zorder=5)
            box = ann.get_window_extent(renderer)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(b) for b in boxes):
                placed.append(ann)
                boxes.append(box)
                break
            ann.remove()
        else:
            omitted += 1
    return placed, omitted


def plot_poincare_disk(xy: np.ndarray, out_png: str | Path, *, c: float, names: Sequence[str], dim: int,
                       categories: Sequence[str | None] | None = None, title: str = "",
                       held_out: Sequence[int] = (), counts: Sequence[int] | None = None) -> Path:
    """Where do the classes sit? (C, 2) disk points of the class prompts inside the boundary of
    radius ``1/sqrt(c)``, coloured by ``categories`` (top-level ontology category; None:
    "unmatched"), ``held_out`` ringed in red; named: ``disk_labels`` (all up to 40 classes, else
    the 40 with most clips in ``counts``), placed without overlap (``place_labels``)."""
    xy = np.asarray(xy, dtype=float)
    fig = _figure(DISK_PX)
    ax = fig.add_subplot(1, 1, 1)
    _disk_axes(ax, c)
    if categories is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=14, color="tab:blue", zorder=2, label=f"class prompt ({len(xy)})")
    else:
        groups = sorted({g for g in categories if g is not None})
        colours = _palette(len(groups))
        for group, colour in [*zip(groups, colours), (None, "0.5")]:
            idx = [i for i, g in enumerate(categories) if g == group]
            if idx:
                ax.scatter(xy[idx, 0], xy[idx, 1], s=14, zorder=2, color=colour,
                           label=f"{group or 'unmatched'} ({len(idx)})")
    if len(held_out):
        held = list(held_out)
        ax.scatter(xy[held, 0], xy[held, 1], s=60, facecolors="none", edgecolors="tab:red", linewidths=1.2,
                   zorder=3, label=f"held out in training ({len(held)})")
    fig.subplots_adjust(left=0.03, right=0.97, top=0.9, bottom=0.12)
    shown = disk_labels(names, counts=counts)
    _, omitted = place_labels(ax, xy[shown], [names[i] for i in shown])
    fig.legend(loc="lower center", ncol=4, fontsize=7, frameon=False,
               title="class prompts by top-level category" if categories is not None else None, title_fontsize=7)
    named = f"{len(shown) - omitted} named" + (f", {omitted} more left unnamed to avoid overlap" if omitted else "")
    ax.set_title(f"{title or 'Where the classes sit'}\n{len(xy)} class prompts, {named}\n{layout_note(dim)}",
                 fontsize=9)
    return _save(fig, out_png)


def clip_colour_classes(clip_labels: Sequence[Sequence[int]], top: int = CLIP_CLASSES) -> tuple[list[int], list[int]]:
    """The ``top`` classes with most clips (ties by index), and each clip's colour class among
    them: the least frequent of its labels that is one of them (the most specific), else -1."""
    counts = Counter(k for row in clip_labels for k in set(row))
    classes = [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    rank = {k: counts[k] for k in classes}
    colour = [min((k for k in row if k in rank), key=lambda k: (rank[k], k), default=-1) for row in clip_labels]
    return classes, colour


def plot_clip_distances(text_xy: np.ndarray, audio_xy: np.ndarray, out_png: str | Path, *, c: float,
                        names: Sequence[str], clip_labels: Sequence[Sequence[int]], own: np.ndarray,
                        other: np.ndarray, dim: int, title: str = "") -> Path:
    """How far is each clip from its label? Left: the clips of the ``CLIP_CLASSES`` most frequent
    classes on the disk, each coloured by its class (``clip_colour_classes``), with that class's
    prompt as a star of the same colour; other clips small and grey. Right: histograms of the
    exact geodesic distances ``own`` (N,) from each clip to its nearest own label and ``other``
    (N,) to the nearest other class, with the fraction of clips nearer their label."""
    text_xy, audio_xy = np.asarray(text_xy, dtype=float), np.asarray(audio_xy, dtype=float)
    classes, colour_class = clip_colour_classes(clip_labels)
    colour_class = np.asarray(colour_class)
    fig = _figure(PAIR_PX)
    fig.subplots_adjust(left=0.03, right=0.97, top=0.86, bottom=0.22, wspace=0.15)
    ax = fig.add_subplot(1, 2, 1)
    _disk_axes(ax, c)
    rest = colour_class == -1
    if rest.any():
        ax.scatter(audio_xy[rest, 0], audio_xy[rest, 1], s=5, color="0.75", linewidths=0, zorder=1,
                   label=f"clips of other classes ({int(rest.sum())})")
    for k, colour in zip(classes, _palette(len(classes))):
        mine = colour_class == k
        ax.scatter(audio_xy[mine, 0], audio_xy[mine, 1], s=12, color=colour, alpha=0.8, linewidths=0, zorder=2,
                   label=f"{names[k]} ({int(mine.sum())} clips)")
        ax.scatter(text_xy[k, 0], text_xy[k, 1], s=180, marker="*", color=colour, edgecolors="black",
                   linewidths=0.8, zorder=4)
    ax.scatter([], [], s=120, marker="*", color="white", edgecolors="black", label="class prompt (star, same colour)")
    place_labels(ax, text_xy[classes], [names[k] for k in classes])
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.01), ncol=2, fontsize=7, frameon=False)
    ax.set_title(f"clips of the {len(classes)} most frequent classes, coloured by class\n{layout_note(dim)}",
                 fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    finite = np.concatenate([own[np.isfinite(own)], other[np.isfinite(other)]])
    high = float(finite.max(initial=0.0))
    bins = np.linspace(0.0, high * 1.02 if high > 0 else 1.0, 40)
    ax2.hist(own, bins=bins, histtype="step", linewidth=2, color="tab:green", label="to its nearest own label")
    ax2.hist(other[np.isfinite(other)], bins=bins, histtype="step", linewidth=2, color="tab:purple",
             label="to the nearest other class")
    nearer = float(np.mean(own < other)) if len(own) else float("nan")
    ax2.set_xlabel("geodesic distance d_c in the ball (exact, no projection)")
    ax2.set_ylabel("clips")
    ax2.legend(fontsize=8)
    ax2.set_title(f"{len(own)} clips; nearer their own label than any other class: {nearer:.0%}", fontsize=9)
    fig.suptitle(title or "How far is each clip from its label?", fontsize=10)
    return _save(fig, out_png)


def hub_families(edges: Sequence[tuple[int, int]], hubs: int = HUBS) -> list[tuple[int, list[int]]]:
    """The ``hubs`` parents with most children (ties by index) and their children, for the disk:
    ``[(parent, [children])]``."""
    children: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(int(a), []).append(int(b))
    order = sorted(children, key=lambda a: (-len(children[a]), a))[:hubs]
    return [(a, sorted(children[a])) for a in order]


def plot_hierarchy_radii(d0: np.ndarray, xy: np.ndarray, edges: Sequence[tuple[int, int]], out_png: str | Path, *,
                         c: float, names: Sequence[str], dim: int, title: str = "") -> Path:
    """Are children outside their parents? Left: for each (parent, child) pair of ``edges``, the
    child's exact distance from the origin ``d0[child]`` against its parent's ``d0[parent]``;
    above the diagonal, the child lies further out. Right: the ``HUBS`` largest families on the
    disk, parent (ringed, named) to child, and only their edges."""
    d0, xy = np.asarray(d0, dtype=float), np.asarray(xy, dtype=float)
    pairs = np.asarray(edges, dtype=int).reshape(-1, 2)
    fig = _figure(PAIR_PX)
    fig.subplots_adjust(left=0.06, right=0.97, top=0.86, bottom=0.2, wspace=0.15)
    ax = fig.add_subplot(1, 2, 1)
    parent, child = d0[pairs[:, 0]], d0[pairs[:, 1]]
    outside = child > parent
    ax.scatter(parent[outside], child[outside], s=10, alpha=0.6, color="tab:green",
               label=f"child further out ({int(outside.sum())})")
    ax.scatter(parent[~outside], child[~outside], s=10, alpha=0.6, color="tab:red",
               label=f"child nearer the origin ({int((~outside).sum())})")
    top = float(max(d0.max(initial=0.0), 1e-9)) * 1.05
    ax.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="same distance")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("parent's distance from the origin d_c(0, parent)")
    ax.set_ylabel("child's distance from the origin d_c(0, child)")
    share = float(outside.mean()) if len(pairs) else float("nan")
    ax.set_title(f"{len(pairs)} parent -> child class pairs; child further out: {share:.0%}\n(exact, no projection)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax2 = fig.add_subplot(1, 2, 2)
    _disk_axes(ax2, c)
    families = hub_families(pairs.tolist())
    for (p, kids), colour in zip(families, _palette(len(families))):
        for k in kids:
            ax2.plot(xy[[p, k], 0], xy[[p, k], 1], color=colour, linewidth=0.8, alpha=0.7, zorder=1)
        ax2.scatter(xy[kids, 0], xy[kids, 1], s=12, color=colour, zorder=2)
        ax2.scatter(xy[p, 0], xy[p, 1], s=80, color=colour, edgecolors="black", linewidths=1.0, zorder=3,
                    label=f"{names[p]} ({len(kids)} {'child' if len(kids) == 1 else 'children'})")
    place_labels(ax2, xy[[p for p, _ in families]], [names[p] for p, _ in families])
    ax2.legend(loc="upper left", bbox_to_anchor=(0.0, -0.01), ncol=2, fontsize=7, frameon=False)
    ax2.set_title(f"the {len(families)} largest families (parent ringed), only their edges\n{layout_note(dim)}",
                  fontsize=9)
    fig.suptitle(title or "Are children outside their parents?", fontsize=10)
    return _save(fig, out_png)
