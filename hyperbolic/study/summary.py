"""The summary of a study: one row per configuration (geometry, D, fraction) over its seeds, and
the paired differences hyperbolic minus each control, rebuilt from whatever cells are finished.

Intervals include seed variation: every cell's bootstrap uses the same resamples of the eval
clips (same ``--bootstrap`` and ``--bootstrap-seed``, same clips), so resample b of a
configuration is the mean over its seeds of their values on resample b
(``seed_averaged_samples``). The point value is the mean over seeds of the full-data metric; the
interval is the percentile interval of the seed-averaged resamples; a difference pairs the two
configurations resample by resample (``hyperbolic.metrics.bootstrap.bootstrap_difference``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from hyperbolic.metrics.bootstrap import bootstrap_difference
from hyperbolic.study.cell import METRICS, read_samples
from hyperbolic.study.grid import CELL_FILE, COSINE, PROBE

BOOTSTRAPPED = ("mAP", "acc@1")
ALPHA = 0.05
HIERARCHY_KEYS = ("mistake_severity", "hier_dist@5", "prompt_pairs_in_cone", "clip_label_pairs_in_cone",
                  "norm_depth_rho")
USAGE_KEYS = ("audio_on_clip_sphere", "text_on_clip_sphere", "top1_same_as_cosine")


def read_cells(root: Path) -> list[dict]:
    """Every finished cell's record under ``root/cells``, in key order."""
    return [json.loads(p.read_text()) for p in sorted((Path(root) / "cells").glob(f"*/{CELL_FILE}"))]


def seed_averaged_samples(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Resample b of a configuration: the mean over its seeds of each seed's value on resample b."""
    return {k: np.mean([s[k] for s in samples], axis=0) for k in BOOTSTRAPPED}


def _mean_sd(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}


def verdict(low: float, high: float) -> str:
    """wins (interval above 0), loses (below 0) or ties (contains 0)."""
    return "wins" if low > 0 else "loses" if high < 0 else "ties"


def _group(records: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["geometry"], r["proj_dim"], r["fraction"])].append(r)
    return groups


def _config_row(key: tuple, cells: list[dict], samples: dict[str, np.ndarray]) -> dict:
    geometry, dim, fraction = key
    row = {"geometry": geometry, "proj_dim": dim, "train_fraction": fraction,
           "seeds": sorted(c["seed"] for c in cells), "cells": [c["key"] for c in cells]}
    for m in METRICS:
        row[m] = _mean_sd([c["metrics"][m] for c in cells])
        if m in samples:
            lo, hi = np.percentile(samples[m], [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
            row[m]["interval"] = {"low": float(lo), "high": float(hi)}
    if any(c.get("hierarchy") for c in cells):
        row["hierarchy"] = {k: _mean_sd([(c.get("hierarchy") or {}).get(k) for c in cells]) for k in HIERARCHY_KEYS}
    if any(c.get("ball_usage") for c in cells):
        row["ball_usage"] = {k: _mean_sd([(c.get("ball_usage") or {}).get(k) for c in cells]) for k in USAGE_KEYS}
    parked = [c.get("selected_epoch_parked") for c in cells if c.get("selected_epoch_parked") is not None]
    if parked:
        row["selected_epoch_parked"] = int(sum(parked))
        row["on_clip_sphere_max_jump"] = max(c["on_clip_sphere_max_jump"] for c in cells)
    row["seconds_per_cell"] = _mean_sd([c["seconds"]["total"] for c in cells])["mean"]
    row["cpu_seconds_per_cell"] = _mean_sd([c.get("cpu_seconds", {}).get("total") for c in cells])["mean"]
    return row


def summarize(root: Path, records: list[dict] | None = None, *, embed_dim: int | None = None) -> list[dict]:
    """The summary rows: one per configuration, then hyperbolic rows carry ``differences`` to each
    control at the same D and fraction (every other trained geometry, plain CLAP, and the linear
    probe at that fraction), and every trained row its ``gain_share_of_probe``."""
    records = read_cells(root) if records is None else records
    checks = {(r["bootstrap"]["n"], r["bootstrap"]["seed"], r["eval_clips"]) for r in records}
    if len(checks) > 1:
        raise ValueError(f"cells of one study with different bootstraps or eval sets: {sorted(checks)}")
    groups = _group(records)
    averaged = {key: seed_averaged_samples([read_samples(root, c) for c in cells]) for key, cells in groups.items()}
    rows = {key: _config_row(key, cells, averaged[key]) for key, cells in groups.items()}
    cosine = next((k for k in rows if k[0] == COSINE), None)
    for key, row in rows.items():
        geometry, dim, fraction = key
        if geometry in (COSINE, PROBE):
            continue
        probe = (PROBE, None, fraction)
        if cosine and probe in rows:
            span = rows[probe]["mAP"]["mean"] - rows[cosine]["mAP"]["mean"]
            row["gain_share_of_probe"] = (None if abs(span) < 1e-12 else
                                          (row["mAP"]["mean"] - rows[cosine]["mAP"]["mean"]) / span)
        if geometry != "hyperbolic":
            continue
        controls = [k for k in rows if k[1:] == key[1:] and k[0] not in ("hyperbolic", COSINE, PROBE)]
        controls += [k for k in (cosine, probe) if k in rows]
        row["differences"] = {}
        for other in controls:
            point = {m: row[m]["mean"] for m in BOOTSTRAPPED}
            base = {m: rows[other][m]["mean"] for m in BOOTSTRAPPED}
            diff = bootstrap_difference(averaged[key], averaged[other], point, base, alpha=ALPHA)
            for m in BOOTSTRAPPED:
                diff[m]["verdict"] = verdict(diff[m]["low"], diff[m]["high"])
            row["differences"][other[0]] = diff
    order = {COSINE: 0, PROBE: 1}
    # By fraction, the references first, then D ascending (None: the CLAP size, ``embed_dim``, or
    # last when it is not known), then geometry.
    clap_size = math.inf if embed_dim is None else embed_dim
    return [rows[k] for k in sorted(rows, key=lambda k: (k[2], order.get(k[0], 2),
                                                        clap_size if k[1] is None else k[1], k[0]))]


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _dim(dim, embed_dim: int | None) -> str:
    return (f"{embed_dim}" if embed_dim else "clap") if dim is None else str(dim)


def _metric_cell(stat: dict) -> str:
    text = _fmt(stat["mean"]) + (f" ± {_fmt(stat['sd'])}" if stat.get("sd") is not None else "")
    if "interval" in stat:
        text += f" [{_fmt(stat['interval']['low'])}, {_fmt(stat['interval']['high'])}]"
    return text


def markdown_table(rows: list[dict], *, embed_dim: int | None = None) -> str:
    """The summary as markdown: the configurations, then the paired differences, then (with an
    ontology) the hierarchy figures."""
    lines = ["| fraction | D | model | seeds | mAP mean ± sd [95% CI] | acc@1 mean ± sd [95% CI] | share of probe gain |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        dim = "-" if r["geometry"] in (COSINE, PROBE) else _dim(r["proj_dim"], embed_dim)
        lines.append(f"| {r['train_fraction']:g} | {dim} | {r['geometry']} | {len(r['seeds'])} | "
                     f"{_metric_cell(r['mAP'])} | {_metric_cell(r['acc@1'])} | {_fmt(r.get('gain_share_of_probe'), 2)} |")
    diffs = [r for r in rows if r.get("differences")]
    if diffs:
        lines += ["", "| fraction | D | hyperbolic minus | Δ mAP [95% CI] | | Δ acc@1 [95% CI] | |",
                  "|---|---|---|---|---|---|---|"]
        for r in diffs:
            for name, d in r["differences"].items():
                cells = " | ".join(f"{d[m]['diff']:+.3f} [{d[m]['low']:+.3f}, {d[m]['high']:+.3f}] | {d[m]['verdict']}"
                                   for m in BOOTSTRAPPED)
                lines.append(f"| {r['train_fraction']:g} | {_dim(r['proj_dim'], embed_dim)} | {name} | {cells} |")
    hier = [r for r in rows if r.get("hierarchy")]
    if hier:
        lines += ["", "| fraction | D | model | mistake severity | hier_dist@5 | edges in cone | clip-label pairs in cone "
                      "| rho(depth, norm) | selected epoch parked | max on-sphere jump |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in hier:
            h = r["hierarchy"]
            dim = "-" if r["geometry"] in (COSINE, PROBE) else _dim(r["proj_dim"], embed_dim)
            lines.append(f"| {r['train_fraction']:g} | {dim} | {r['geometry']} | "
                         + " | ".join(_fmt(h[k]["mean"]) for k in HIERARCHY_KEYS)
                         + f" | {r.get('selected_epoch_parked', '-')} | {_fmt(r.get('on_clip_sphere_max_jump'), 2)} |")
    return "\n".join(lines) + "\n"
