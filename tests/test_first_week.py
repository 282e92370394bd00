"""A user's first week (issue 13): rows held vs used, file modes, long clips, AudioSet machine ids,
resume, checkpoint files, SwanLab, --help, messages, demo commands, plots, training threads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from tests.helpers import run_main


def _train_argv(data, clap, out, *extra):
    return ["--parquet-dir", data, "--checkpoint", clap, "--device", "cpu", "--output-dir", out,
            "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-2", "--num-workers", "0", *extra]


def _main(script, *argv) -> int:
    return script.main([str(a) for a in argv])


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ 2: file modes follow the umask

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, tiny_clap_dir, demo_train_dir, demo_eval_dir):
    old = os.umask(umask)
    try:
        reference = tmp_path / "by_open.txt"
        with open(reference, "w") as handle:  # the independent reference: what open() gives
            handle.write("x")
        expected = stat.S_IMODE(reference.stat().st_mode)
        out, cache = tmp_path / "run", tmp_path / "cache"
        assert _main(train_script, *_train_argv(demo_train_dir, tiny_clap_dir, out, "--cache-dir", cache)) == 0
        result = tmp_path / "res" / "r.json"
        best = next(out.glob("best_projection_epoch_*.pth"))
        assert _main(eval_script, "--parquet-dir", demo_eval_dir, "--checkpoint", tiny_clap_dir, "--device", "cpu",
                     "--num-workers", "0", "--cache-dir", cache, "--output-json", result,
                     "--projection-checkpoint", best, "--plots", "--save-scores", tmp_path / "res" / "s.npz") == 0
        from data.synthetic import write_demo_dataset
        write_demo_dataset(tmp_path / "demo", clips_per_class=1, seed=0, seconds=0.5)
    finally:
        os.umask(old)
    written = {**_modes(out), **{f"cache/{k}": v for k, v in _modes(cache).items()},
               **{f"res/{k}": v for k, v in _modes(tmp_path / "res").items()},
               **{f"demo/{k}": v for k, v in _modes(tmp_path / "demo").items()}}
    assert any(k.endswith(".pth") for k in written) and any(k.endswith(".png") for k in written)
    assert any(k.startswith("cache/") and k.endswith(".npz") for k in written)
    assert any(k.endswith(".parquet") for k in written)
    assert {k: oct(v) for k, v in written.items() if v != expected} == {}
    assert expected == (0o644 if umask == 0o022 else 0o600)


# ------------------------------------------------------------------ 1: rows held vs rows used

def _eval_argv(data, clap, out, *extra):
    return ["--parquet-dir", data, "--checkpoint", clap, "--device", "cpu", "--num-workers", "0",
            "--output-json", out, *extra]


@pytest.mark.parametrize("flag, expect_all", [("3", False), ("all", True), ("0", True), (None, True)])
def test_results_say_how_many_rows_the_folder_holds_and_how_many_were_used(
        tmp_path, tiny_clap_dir, demo_eval_dir, flag, expect_all):
    import pyarrow.parquet as pq
    held = sum(pq.read_table(p).num_rows for p in Path(demo_eval_dir).glob("*.parquet"))
    assert held > 3  # the fixture has 20 rows; the default 100 then reads them all
    out = tmp_path / "r.json"
    extra = [] if flag is None else ["--num-samples", flag]
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, out, *extra))
    assert code == 0
    info = json.loads(out.read_text())["test_info"]
    assert info["rows_in_folder"] == held
    assert info["rows_used"] == (held if expect_all else 3)
    assert info["num_samples"] == (None if flag in ("all", "0") else 100 if flag is None else 3)
    told = [line for line in err.splitlines() if "--num-samples all scores every row" in line]
    assert len(told) == (0 if expect_all else 1)
    if not expect_all:
        assert f"first 3 of the {held} rows" in told[0]
