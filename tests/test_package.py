"""The habits of a maintained package: a version recorded in what users keep, a changelog that
describes it, a linter configuration CI runs, and pytest collecting only tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hyperbolic
from hyperbolic.evaluation.files import write_results
from hyperbolic.model import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_changelog_top_entry_is_the_current_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", hyperbolic.__version__)
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert headings and headings[0] == hyperbolic.__version__


def test_every_checkpoint_records_the_version(tmp_path):
    checkpoint.save_epoch(tmp_path, 3, {"epoch": 3}, best=True)
    for name in ("projection_epoch_3.pth", "best_projection_epoch_3.pth"):
        saved = torch.load(tmp_path / name, weights_only=False)
        assert saved == {"epoch": 3, "hyperbolic_clap_version": hyperbolic.__version__}


@pytest.mark.parametrize("blocks", [{"clap_cosine": {"metrics": {"mAP": 0.5}}},
                                    {"a": {"metrics": {"mAP": 0.5}}, "b": {"metrics": {"mAP": 0.4}}}])
def test_every_results_file_records_the_version(tmp_path, blocks):
    write_results(tmp_path / "r.json", {"timestamp": "t"}, blocks, ("mAP",), {})
    info = json.loads((tmp_path / "r.json").read_text())["test_info"]
    assert info == {"timestamp": "t", "hyperbolic_clap_version": hyperbolic.__version__}


def test_ci_runs_the_linter_before_the_tests():
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python -m ")]
    assert [s.split()[2] for s in steps] == ["pip", "ruff", "pytest"]
    assert (ROOT / "ruff.toml").is_file()
    assert any(line.startswith("ruff==") for line in (ROOT / "requirements.txt").read_text().splitlines())


@pytest.mark.slow
def test_pytest_never_collects_the_evaluation_script():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "test_clap_modelscope.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 5, out.stdout + out.stderr  # 5: no tests collected
    assert "test_clap_modelscope.py::" not in out.stdout
