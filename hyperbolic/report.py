"""One table over many results JSON files: ``python -m hyperbolic.report RESULT.json ...``.

A row per (file, model block): the dataset (``test_info.parquet_dir``), the task
(classification, or retrieval for ``--text-column`` runs), the model's geometry and output size
``proj_dim`` (a file from before ``--proj-dim``: its ``embed_dim``, the only size there was), the
headline metrics of each task
(mAP and acc@1; R@1 and R@10 in both directions), the paired difference to plain CLAP with its
interval when the block has ``bootstrap.vs_clap_cosine``, and the ball-usage numbers of
hyperbolic models (``ball_usage``). Any results JSON the evaluation writes is read, the earlier
scripts' single-model files too; what a file does not hold is shown as ``-`` and listed, per
file, under the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hyperbolic.outputs import atomic_write_bytes

PLAIN = "clap_cosine"  # hyperbolic.evaluation.scoring.PLAIN_MODEL_NAME; not imported, so the report needs no torch
HEADLINE = {"classification": ("mAP", "acc@1"),
            "retrieval": ("t2a_R@1", "t2a_R@10", "a2t_R@1", "a2t_R@10")}
METRIC_COLUMNS = ("mAP", "acc@1", "t2a_R@1", "t2a_R@10", "a2t_R@1", "a2t_R@10")
DIFF_KEYS = {"classification": ("mAP", "acc@1"), "retrieval": ("t2a_R@10", "a2t_R@10")}
DIFF_COLUMNS = tuple(f"d_{k}" for k in ("mAP", "acc@1", "t2a_R@10", "a2t_R@10"))
BALL_COLUMNS = ("audio_radius_median", "audio_on_sphere", "text_radius_median", "text_on_sphere", "top1_same_as_cosine",
                "rank_corr_with_cosine")
MODEL_COLUMNS = ("geometry", "proj_dim")  # what the model is: its scoring geometry and output size D
SPLIT_COLUMNS = tuple(c for part in ("seen", "unseen", "never_trained") for c in (f"{part}_mAP", f"d_{part}_mAP"))
GUARD_COLUMNS = ("train_overlap",)  # fraction of the evaluated clips the checkpoint trained or validated on
COLUMNS = ("file", "dataset", "model", "task", *MODEL_COLUMNS, *METRIC_COLUMNS, *DIFF_COLUMNS, *BALL_COLUMNS,
           *SPLIT_COLUMNS, *GUARD_COLUMNS)


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)    # what a readable file lacks
    errors: list[str] = field(default_factory=list)   # files that could not be read as results


def _number(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, float)):
        return f"{x:.4f}"
    return str(x)


def format_diff(entry) -> str | None:
    """``{diff, low, high}`` -> ``+0.0123 [-0.0010, +0.0250]``; None when the entry is not one."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), (int, float)) for k in ("diff", "low", "high")):
        return None
    return f"{entry['diff']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}]"


def _radius(part) -> float | None:
    """The median relative radius (|x| over the ball radius) of a ``ball_usage`` part."""
    radius = part.get("relative_radius") if isinstance(part, dict) else None
    value = radius.get("median") if isinstance(radius, dict) else None
    return value if isinstance(value, (int, float)) else None


def _sphere(part) -> float | None:
    value = part.get("on_clip_sphere") if isinstance(part, dict) else None
    if isinstance(value, dict):
        value = value.get("fraction", value.get("mean"))
    return value if isinstance(value, (int, float)) else None


def _model_columns(name: str, info: dict) -> dict:
    """``geometry`` and ``proj_dim`` of a block; a file from before ``proj_dim`` existed had
    square projectors only, so its ``embed_dim`` is D."""
    if name == PLAIN:
        return {"geometry": "cosine"}
    geometry = info.get("geometry") or ("hyperbolic" if info.get("use_hyperbolic") is True else None)
    dim = info.get("proj_dim", info.get("embed_dim"))
    return {"geometry": geometry or "-", "proj_dim": str(dim) if isinstance(dim, int) else "-"}


def model_blocks(results: dict) -> dict[str, dict]:
    """The model blocks of a results file by name: ``models`` of a comparison, or the file
    itself under its model's name (single-model layout, the earlier scripts' files too)."""
    if isinstance(results.get("models"), dict):
        return results["models"]
    info = results.get("model_info") or {}
    return {info.get("name") or info.get("model_type") or "model": results}


def _task(results: dict, metrics: dict) -> str:
    task = (results.get("test_info") or {}).get("task")
    if task in HEADLINE:
        return task
    return "retrieval" if "mAP" not in metrics and "t2a_R@1" in metrics else "classification"


def read_results(path: Path, report: Report) -> None:
    """Add the rows of one results file to ``report``, and a note for each thing it lacks."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.errors.append(f"{path}: cannot be read as JSON ({err})")
        return
    if not isinstance(results, dict) or not isinstance(results.get("test_info"), dict):
        report.errors.append(f"{path}: not a results JSON of test_clap_modelscope.py (no 'test_info')")
        return
    dataset = results["test_info"].get("parquet_dir", "-")
    lacks: list[str] = []
    for name, block in model_blocks(results).items():
        if not isinstance(block, dict):
            lacks.append(f"model {name}: not a model block")
            continue
        metrics = block.get("metrics") if isinstance(block.get("metrics"), dict) else {}
        info = block.get("model_info") if isinstance(block.get("model_info"), dict) else {}
        task = _task(results, metrics)
        row = dict.fromkeys(COLUMNS, "-")
        row.update(file=str(path), dataset=str(dataset), model=str(name), task=task)
        row.update(_model_columns(name, info))
        if not metrics:
            lacks.append(f"model {name}: no metrics (no clip had a known label)")
        else:
            missing = [k for k in HEADLINE[task] if not isinstance(metrics.get(k), (int, float))]
            if missing:
                lacks.append(f"model {name}: no {', '.join(missing)} in metrics")
            for key in HEADLINE[task]:
                row[key] = _number(metrics.get(key))
        if name != PLAIN:
            vs = ((block.get("bootstrap") or {}).get("vs_clap_cosine")
                  if isinstance(block.get("bootstrap"), dict) else None)
            if isinstance(vs, dict):
                for key in DIFF_KEYS[task]:
                    row[f"d_{key}"] = format_diff(vs.get(key)) or "-"
            elif metrics:
                lacks.append(f"model {name}: no bootstrap.vs_clap_cosine (paired difference to plain CLAP; "
                             "evaluate it beside plain CLAP with --bootstrap N)")
        _split_cells(block.get("metrics_by_split"), row)
        overlap = block.get("overlap_with_training")
        if isinstance(overlap, dict) and isinstance(overlap.get("fraction"), (int, float)):
            row["train_overlap"] = _number(overlap["fraction"])
            if overlap.get("clips"):
                lacks.append(f"model {name}: {overlap['clips']} evaluated clips were in its training or validation "
                             "data (overlap_with_training): not a held-out result")
        hyperbolic = info.get("geometry") == "hyperbolic" or info.get("use_hyperbolic") is True
        if hyperbolic:
            ball = block.get("ball_usage")
            if isinstance(ball, dict):
                row.update(audio_radius_median=_number(_radius(ball.get("audio"))),
                           audio_on_sphere=_number(_sphere(ball.get("audio"))),
                           text_radius_median=_number(_radius(ball.get("text"))),
                           text_on_sphere=_number(_sphere(ball.get("text"))),
                           top1_same_as_cosine=_number(ball.get("top1_same_as_cosine")),
                           rank_corr_with_cosine=_number(ball.get("rank_corr_with_cosine")))
            else:
                lacks.append(f"model {name}: no ball_usage (hyperbolic model evaluated before the "
                             "ball-usage diagnostics existed)")
        report.rows.append(row)
    report.notes.extend(f"{path}: {what}" for what in lacks)


def _split_cells(split, row: dict) -> None:
    """``<part>_mAP`` (the model's, then plain CLAP's on the same classes) and ``d_<part>_mAP`` (the
    paired difference with its interval, under --bootstrap) of ``metrics_by_split``."""
    if not isinstance(split, dict):
        return
    for part in ("seen", "unseen", "never_trained"):
        own = split.get(part) if isinstance(split.get(part), dict) else {}
        cos = (split.get(PLAIN) or {}).get(part) if isinstance(split.get(PLAIN), dict) else None
        if isinstance(own.get("mAP"), (int, float)):
            row[f"{part}_mAP"] = _number(own["mAP"]) + (
                f" (cos {cos['mAP']:.4f})" if isinstance(cos, dict) and isinstance(cos.get("mAP"), (int, float)) else "")
        boot = (split.get("bootstrap") or {}).get(part) if isinstance(split.get("bootstrap"), dict) else None
        if isinstance(boot, dict):
            row[f"d_{part}_mAP"] = format_diff((boot.get(f"vs_{PLAIN}") or {}).get("mAP")) or "-"


def build_report(paths) -> Report:
    report = Report()
    for path in paths:
        read_results(Path(path), report)
    return report


def _used_columns(rows: list[dict]) -> list[str]:
    """Every column that some row fills, in table order; file, dataset, model and task always."""
    return [c for c in COLUMNS if c in COLUMNS[:4] or any(r[c] != "-" for r in rows)]


def to_markdown(report: Report) -> str:
    cols = _used_columns(report.rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in cols) + " |" for r in report.rows]
    extra = [f"- {n}" for n in report.notes] + [f"- error: {e}" for e in report.errors]
    if extra:
        lines += ["", "Not in every file:" if report.notes else "Errors:", *extra]
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.rows)
    return out.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hyperbolic.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="results files of test_clap_modelscope.py")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--output", default=None, metavar="FILE", help="write the table here (default: stdout)")
    args = p.parse_args(argv)
    report = build_report(args.results)
    text = to_markdown(report) if args.format == "markdown" else to_csv(report)
    if args.output:
        atomic_write_bytes(args.output, text.encode("utf-8"))
    else:
        sys.stdout.write(text)
    if args.format == "csv" or args.output:  # the table holds no notes: say them on stderr
        for line in report.notes:
            print(f"note: {line}", file=sys.stderr)
        for line in report.errors:
            print(f"error: {line}", file=sys.stderr)
    if not report.rows:
        print("error: no results file could be read", file=sys.stderr)
        return 2
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
