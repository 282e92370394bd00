"""``python -m hyperbolic.report``: one table over results files of every layout and age."""

from __future__ import annotations

import csv
import io
import json

import pytest

import test_clap_modelscope as test_script
from hyperbolic import report
from tests.helpers import run_main


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _comparison(tmp_path):
    """A comparison file as the evaluation writes it, with the issue-11 paired differences and
    the lead's ball-usage block on the hyperbolic model."""
    return _write(tmp_path / "cmp.json", {
        "test_info": {"parquet_dir": "/data/esc50", "layout": "comparison"},
        "models": {
            "clap_cosine": {"model_info": {"name": "clap_cosine", "model_type": "modelscope"},
                            "metrics": {"mAP": 0.5, "acc@1": 0.25, "t2a_R@1": 0.9}},
            "hyp": {"model_info": {"name": "hyp", "geometry": "hyperbolic", "use_hyperbolic": True},
                    "metrics": {"mAP": 0.625, "acc@1": 0.375},
                    "bootstrap": {"vs_clap_cosine": {"mAP": {"diff": 0.125, "low": 0.0625, "high": 0.1875},
                                                     "acc@1": {"diff": 0.125, "low": -0.25, "high": 0.5}}},
                    "ball_usage": {"audio": {"relative_radius": {"min": 0.5, "p10": 0.6, "median": 0.7, "p90": 0.8,
                                                                 "max": 0.9}, "on_clip_sphere": 0.5},
                                   "text": {"relative_radius": {"min": 0.1, "median": 0.25}, "on_clip_sphere": 0.0},
                                   "top1_same_as_cosine": 0.8125, "rank_corr_with_cosine": 0.5}},
        }})


def _old_single(tmp_path):
    """The earlier scripts' single-model layout: no name, no bootstrap, no ball usage."""
    return _write(tmp_path / "old.json", {
        "test_info": {"parquet_dir": "/data/audioset_eval"},
        "model_info": {"model_type": "hyperbolic_clap_modelscope", "use_hyperbolic": True, "c": 1.0},
        "metrics": {"mAP": 0.1, "acc@1": 0.2}, "predictions": []})


def _retrieval(tmp_path):
    return _write(tmp_path / "ret.json", {
        "test_info": {"parquet_dir": "/data/clotho", "task": "retrieval"},
        "models": {"clap_cosine": {"model_info": {"name": "clap_cosine"},
                                   "metrics": {"t2a_R@1": 0.1, "t2a_R@10": 0.5, "a2t_R@1": 0.15, "a2t_R@10": 0.6}},
                   "euc": {"model_info": {"name": "euc", "geometry": "euclidean"},
                           "metrics": {"t2a_R@1": 0.2, "t2a_R@10": 0.55, "a2t_R@1": 0.1, "a2t_R@10": 0.7},
                           "bootstrap": {"vs_clap_cosine": {"t2a_R@10": {"diff": 0.05, "low": -0.01, "high": 0.1},
                                                            "a2t_R@10": {"diff": 0.1, "low": 0.0, "high": 0.2}}}}}})


def _rows(text):
    return {(r["file"].rsplit("/", 1)[-1], r["model"]): r for r in csv.DictReader(io.StringIO(text))}


def test_csv_rows_hold_each_files_numbers(tmp_path, capsys):
    files = [_comparison(tmp_path), _old_single(tmp_path), _retrieval(tmp_path)]
    assert report.main([*map(str, files), "--format", "csv"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {("cmp.json", "clap_cosine"), ("cmp.json", "hyp"), ("old.json", "hyperbolic_clap_modelscope"),
                         ("ret.json", "clap_cosine"), ("ret.json", "euc")}
    hyp = rows[("cmp.json", "hyp")]
    assert (hyp["dataset"], hyp["task"], hyp["mAP"], hyp["acc@1"]) == ("/data/esc50", "classification", "0.6250", "0.3750")
    assert hyp["d_mAP"] == "+0.1250 [+0.0625, +0.1875]"
    assert hyp["d_acc@1"] == "+0.1250 [-0.2500, +0.5000]"
    assert (hyp["audio_radius_median"], hyp["text_radius_median"]) == ("0.7000", "0.2500")
    assert (hyp["audio_on_sphere"], hyp["text_on_sphere"]) == ("0.5000", "0.0000")
    assert (hyp["top1_same_as_cosine"], hyp["rank_corr_with_cosine"]) == ("0.8125", "0.5000")
    # a classification file's class-retrieval numbers are not the headline of its task
    assert rows[("cmp.json", "clap_cosine")]["t2a_R@1"] == "-"
    assert rows[("cmp.json", "clap_cosine")]["d_mAP"] == "-"
    old = rows[("old.json", "hyperbolic_clap_modelscope")]
    assert (old["mAP"], old["acc@1"], old["d_mAP"], old["audio_radius_median"]) == ("0.1000", "0.2000", "-", "-")
    euc = rows[("ret.json", "euc")]
    assert (euc["task"], euc["t2a_R@1"], euc["t2a_R@10"], euc["a2t_R@1"], euc["a2t_R@10"], euc["mAP"]) == (
        "retrieval", "0.2000", "0.5500", "0.1000", "0.7000", "-")
    assert euc["d_t2a_R@10"] == "+0.0500 [-0.0100, +0.1000]"
    assert euc["audio_radius_median"] == "-"  # euclidean: no ball


def test_markdown_says_which_file_lacks_what(tmp_path, capsys):
    old, cmp_ = _old_single(tmp_path), _comparison(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json", encoding="utf-8")
    other = _write(tmp_path / "setup.json", {"config": {}, "history": []})
    code = report.main([str(old), str(cmp_), str(broken), str(other)])
    out = capsys.readouterr().out
    assert code == 1  # rows for the readable files, a failure status for the others
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    notes = out.split("Not in every file:")[1]
    assert f"{old}: model hyperbolic_clap_modelscope: no bootstrap.vs_clap_cosine" in notes
    assert f"{old}: model hyperbolic_clap_modelscope: no ball_usage" in notes
    assert f"{cmp_}:" not in notes  # it has everything
    assert f"error: {broken}: cannot be read as JSON" in notes
    assert f"error: {other}: not a results JSON" in notes


def test_output_file_and_nothing_readable(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert report.main([str(_retrieval(tmp_path)), "--output", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    header = text.splitlines()[0]
    assert "t2a_R@10" in header and "mAP" not in header.split("|")  # only the columns some row fills
    assert capsys.readouterr().out == ""
    missing = tmp_path / "nope.json"
    assert report.main([str(missing)]) == 2
    assert "no results file could be read" in capsys.readouterr().err


@pytest.mark.slow
def test_report_over_esc50_comparison_with_paired_differences(esc50, tiny_clap_dir, tmp_path):
    from hyperbolic import report
    from tests.test_evaluate import _checkpoint
    folder, _ = esc50
    out = tmp_path / "cmp.json"
    code, err = run_main(test_script, [
        "--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--num-workers", "0",
        "--label-column", "category", "--class-labels", "from-data", "--top-k", "3", "--output-json", out,
        "--projection-checkpoint", _checkpoint(tmp_path / "hyp.pth", seed=2), "--bootstrap", "20"])
    assert code == 0, err
    blocks = json.loads(out.read_text())["models"]
    rows = {r["model"]: r for r in report.build_report([out]).rows}
    vs = blocks["hyp-hyperbolic"]["bootstrap"]["vs_clap_cosine"]
    for key in ("mAP", "acc@1"):
        assert rows["hyp-hyperbolic"][key] == f"{blocks['hyp-hyperbolic']['metrics'][key]:.4f}"
        assert rows["hyp-hyperbolic"][f"d_{key}"] == f"{vs[key]['diff']:+.4f} [{vs[key]['low']:+.4f}, {vs[key]['high']:+.4f}]"
    assert rows["clap_cosine"]["d_mAP"] == "-" and rows["hyp-hyperbolic"]["dataset"] == str(folder)
    usage = blocks["hyp-hyperbolic"].get("ball_usage")
    if usage is not None:  # the lead's diagnostics, when this tree has them
        assert rows["hyp-hyperbolic"]["audio_radius_median"] == f"{usage['audio']['relative_radius']['median']:.4f}"
