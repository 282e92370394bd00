"""The study's figures: each bootstrapped metric against the projection size D per geometry (one
panel per training fraction), and against the training fraction (one panel per D). Lines are the
mean over seeds; bands the 95% interval of the seed-averaged bootstrap; plain CLAP and the linear
probe are horizontal reference lines."""

from __future__ import annotations

from pathlib import Path

from hyperbolic.study.grid import COSINE, PROBE
from hyperbolic.study.summary import BOOTSTRAPPED

REFERENCE_STYLE = {COSINE: ("0.4", "--"), PROBE: ("0.2", ":")}
COLORS = {"hyperbolic": "C3", "euclidean": "C0", "euclidean-distance": "C2"}  # the same in every figure


def _panel(ax, rows: list[dict], metric: str, x_of, refs: list[dict]) -> None:
    for geometry in sorted({r["geometry"] for r in rows}):
        pts = sorted((x_of(r), r[metric]) for r in rows if r["geometry"] == geometry)
        xs = [x for x, _ in pts]
        color = COLORS.get(geometry)
        ax.plot(xs, [s["mean"] for _, s in pts], marker="o", label=geometry, color=color)
        if all("interval" in s for _, s in pts):
            ax.fill_between(xs, [s["interval"]["low"] for _, s in pts], [s["interval"]["high"] for _, s in pts],
                            alpha=0.2, color=color)
    for ref in refs:
        color, style = REFERENCE_STYLE[ref["geometry"]]
        ax.axhline(ref[metric]["mean"], color=color, linestyle=style, label=ref["geometry"])
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def _save(fig, axes, path: Path) -> Path:
    """One legend (the first panel's), tight layout, the PNG written, the figure closed."""
    import matplotlib.pyplot as plt
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_study(rows: list[dict], out_dir: Path, *, embed_dim: int) -> list[Path]:
    """Write ``study_<metric>_vs_dim.png`` and ``study_<metric>_vs_fraction.png``; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r["geometry"] not in (COSINE, PROBE)]
    if not trained:
        return []
    def dim_of(row: dict) -> int:
        return embed_dim if row["proj_dim"] is None else row["proj_dim"]

    fractions = sorted({r["train_fraction"] for r in trained})
    dims = sorted({dim_of(r) for r in trained})
    written = []
    for metric in BOOTSTRAPPED:
        fig, axes = plt.subplots(1, len(fractions), figsize=(4.5 * len(fractions), 3.6), squeeze=False)
        for ax, f in zip(axes[0], fractions):
            refs = [r for r in rows if r["geometry"] == COSINE or (r["geometry"] == PROBE and r["train_fraction"] == f)]
            _panel(ax, [r for r in trained if r["train_fraction"] == f], metric, dim_of, refs)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("projection size D")
            ax.set_title(f"training fraction {f:g}")
        written.append(_save(fig, axes, out_dir / f"study_{metric.replace('@', '_at_')}_vs_dim.png"))
        if len(fractions) < 2:
            continue
        fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.6), squeeze=False)
        for ax, d in zip(axes[0], dims):
            refs = [r for r in rows if r["geometry"] == COSINE]
            _panel(ax, [r for r in trained if dim_of(r) == d], metric, lambda r: r["train_fraction"], refs)
            probes = sorted((r["train_fraction"], r[metric]["mean"]) for r in rows if r["geometry"] == PROBE)
            if probes:
                ax.plot(*zip(*probes), color="0.2", linestyle=":", label=PROBE)
            ax.set_xscale("log")
            ax.set_xlabel("training fraction")
            ax.set_title(f"D = {d}")
        written.append(_save(fig, axes, out_dir / f"study_{metric.replace('@', '_at_')}_vs_fraction.png"))
    return written
