"""Interruptions: a training run killed (SIGKILL) mid-training or mid-extraction leaves only
complete files, and ``--resume`` finishes it with the weights of an uninterrupted run.

The killed runs are real subprocesses of ``train_hyperbolic_clap.py``; the reference and the
resumed runs call ``main([...])`` in this process (same code, no interpreter start-up). Also here:
results are never overwritten, and a non-empty output folder needs ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data.synthetic import write_demo_dataset
from hyperbolic.embedding.cache import decode_npz
from tests.helpers import run_main

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 16
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(scope="module")
def data20(tmp_path_factory) -> Path:
    """20 clips in 5 files: a few seconds of embedding with the tiny CLAP."""
    folder = tmp_path_factory.mktemp("data20")
    write_demo_dataset(folder, clips_per_class=2, seed=11, seconds=1.0, shards=5)
    return folder


@pytest.fixture(scope="module")
def data6(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data6")
    write_demo_dataset(folder, clips_per_class=1, seed=12, seconds=0.5, shards=1)
    return folder


def train_argv(data, clap_dir, classes, out, *extra):
    return ["--parquet-dir", str(data), "--checkpoint", str(clap_dir), "--device", "cpu",
            "--class-labels", str(classes), "--output-dir", str(out), "--epochs", str(EPOCHS),
            "--batch-size", "4", "--learning-rate", "1e-2", "--seed", "9",
            "--num-workers", "1",  # the same decoding worker on any machine: extraction paces alike
            *map(str, extra)]


class Run:
    """``python train_hyperbolic_clap.py ARGV`` in the repository root; output read on a thread."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TQDM_DISABLE", None)  # the progress bar is how we see extraction start
        self.proc = subprocess.Popen([sys.executable, "train_hyperbolic_clap.py", *argv], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self):
        for chunk in iter(lambda: self.proc.stdout.read1(1 << 16), b""):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_for(self, condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (status {self.proc.returncode}) before {what}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output[-3000:]}")
            time.sleep(0.001)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL, "the run had finished before it was killed"


def check_every_file(folder: Path) -> list[Path]:
    """Every file under ``folder`` loads completely; returns the temporary leftovers
    (``.<name>.<random>.tmp`` of an interrupted atomic write), which no reader counts."""
    leftovers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            leftovers.append(path)
        elif path.suffix == ".pth":
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            epoch = int(path.stem.rsplit("_", 1)[1])
            assert ckpt["epoch"] == epoch and len(ckpt["history"]) == epoch, path
            assert set(ckpt["projection_state_dict"]) == {"linear.weight", "linear.bias"}
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".npz":  # cache file: arrays plus the sha256 they were written with
            with np.load(path, allow_pickle=False) as npz:
                names = tuple(n for n in npz.files if n != "meta")
            decode_npz(path.read_bytes(), names)
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_START) and data.endswith(PNG_END), path
        else:
            raise AssertionError(f"unexpected file {path}")
    return leftovers


def real_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tmp")}


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["projection_state_dict"]


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_run(a: Path, b: Path) -> None:
    """Same files, bit-identical weights in every checkpoint, same history (wall time aside)."""
    assert real_files(a) == real_files(b)
    for name in sorted(real_files(a)):
        if name.endswith(".pth"):
            wa, wb = weights(a / name), weights(b / name)
            assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    ha, hb = (json.loads((d / "setup.json").read_text()) for d in (a, b))
    assert _without_seconds(ha["history"]) == _without_seconds(hb["history"])
    assert ha["summary"]["best_epoch"] == hb["summary"]["best_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data20, tiny_clap_dir, classes_file) -> Path:
    """The uninterrupted run, every embedding computed (no cache)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, err = run_main(train_script, [*train_argv(data20, tiny_clap_dir, classes_file, out), "--no-cache"])
    assert code == 0, err
    return out


# ------------------------------------------------------------------ (a) killed mid-training

@pytest.fixture(scope="module")
def killed_in_training(tmp_path_factory, data20, tiny_clap_dir, classes_file):
    root = tmp_path_factory.mktemp("killed_training")
    out, cache = root / "run", root / "cache"
    argv = [*train_argv(data20, tiny_clap_dir, classes_file, out), "--cache-dir", cache]
    run = Run(argv)
    run.wait_for(lambda: (out / "projection_epoch_2.pth").exists(), "epoch 2 was written")
    run.kill()
    return out, cache, argv


def test_kill_mid_training_leaves_only_complete_files(killed_in_training):
    out, cache_dir, _ = killed_in_training
    done = sorted(int(p.stem.rsplit("_", 1)[1]) for p in out.glob("projection_epoch_*.pth"))
    assert done[0] == 1 and done == list(range(1, len(done) + 1)) and len(done) < EPOCHS
    check_every_file(out)
    check_every_file(cache_dir)
    # setup.json is written after the epoch's checkpoint: it has that epoch or the one before.
    history = json.loads((out / "setup.json").read_text())["history"]
    assert [r["epoch"] for r in history] in (done, done[:-1])


def test_resume_after_kill_mid_training_equals_uninterrupted(killed_in_training, reference):
    out, _, argv = killed_in_training
    code, err = run_main(train_script, [*argv, "--resume", out])
    assert code == 0, err
    assert "resuming" in err and "audio embeddings: 20 reused, 0 computed" in err
    check_every_file(out)
    assert_same_run(reference, out)


# ------------------------------------------------------------------ (b) killed mid-extraction

def _cached_rows(cache: Path) -> set[tuple[str, int]]:
    """(parquet file key, row) of every audio outcome stored in the cache's complete files."""
    rows = set()
    for path in cache.rglob("*.npz"):
        if path.parent.parent.name == "audio":
            with np.load(path, allow_pickle=False) as npz:
                rows |= {(path.parent.name, int(r)) for r in npz["rows"]}
    return rows


@pytest.fixture(scope="module")
def killed_in_extraction(tmp_path_factory, data20, tiny_clap_dir, classes_file):
    """Killed once the first of the 5 files is embedded and saved to the cache, before the rest."""
    root = tmp_path_factory.mktemp("killed_extraction")
    out, cache = root / "run", root / "cache"
    argv = [*train_argv(data20, tiny_clap_dir, classes_file, out), "--cache-dir", cache]
    run = Run(argv)
    run.wait_for(lambda: any(cache.rglob("*.npz")), "the first file's embeddings were saved")
    run.kill()
    return out, cache, argv, run.output


@pytest.fixture(scope="module")
def resumed_after_extraction(killed_in_extraction):
    out, cache, argv, _ = killed_in_extraction
    saved = _cached_rows(cache)
    code, err = run_main(train_script, [*argv, "--resume", out])
    assert code == 0, err
    return out, saved, err


def test_kill_mid_extraction_leaves_only_complete_files(killed_in_extraction):
    out, cache, _, log = killed_in_extraction
    assert "train /" not in log, "killed after extraction, not during it"
    assert not list(out.glob("*.pth"))
    check_every_file(out)
    check_every_file(cache)
    assert 0 < len(_cached_rows(cache)) < 20


def test_resume_after_kill_mid_extraction_equals_uninterrupted(resumed_after_extraction, reference):
    out, _, _ = resumed_after_extraction
    check_every_file(out)
    assert_same_run(reference, out)


def test_resume_after_kill_mid_extraction_reuses_what_was_saved(resumed_after_extraction):
    _, saved, log = resumed_after_extraction
    counts = re.search(r"audio embeddings: (\d+) reused, (\d+) computed", log)
    assert counts and (int(counts.group(1)), int(counts.group(2))) == (len(saved), 20 - len(saved))


# ------------------------------------------------------------------ never overwrite, never mix runs

def test_results_are_never_overwritten(tmp_path, demo_eval_dir, tiny_clap_dir, classes_file):
    argv = ["--parquet-dir", demo_eval_dir, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--class-labels",
            classes_file, "--num-samples", "3", "--top-k", "3", "--output-json", tmp_path / "results.json",
            "--save-scores", tmp_path / "scores.npz"]
    assert run_main(eval_script, argv)[0] == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(first) == {"results.json", "scores.npz"}
    code, err = run_main(eval_script, argv)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in first} == first
    assert real_files(tmp_path) == {"results.json", "scores.npz", "results_1.json", "scores_1.npz"}
    second = json.loads((tmp_path / "results_1.json").read_text())
    assert second["test_info"]["scores_file"] == str(tmp_path / "scores_1.npz")
    assert second["metrics"] == json.loads(first["results.json"])["metrics"]


@pytest.mark.parametrize("content", ["previous_run", "other_file"])
def test_non_empty_output_dir_needs_resume_or_overwrite(tmp_path, reference, data6, tiny_clap_dir, classes_file,
                                                        content):
    out = tmp_path / "run"
    if content == "previous_run":
        shutil.copytree(reference, out)
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    code, err = run_main(train_script, train_argv(data6, tiny_clap_dir, classes_file, out))
    assert code == 2
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_overwrite_leaves_no_checkpoint_of_the_previous_run(tmp_path, data6, tiny_clap_dir, classes_file):
    """A later checkpoint of the replaced run left in place would be taken for this run's, by
    --resume (latest epoch) and by whoever picks a best_projection_epoch_*.pth."""
    out = tmp_path / "run"
    assert run_main(train_script, [*train_argv(data6, tiny_clap_dir, classes_file, out), "--epochs", "3"])[0] == 0
    code, err = run_main(train_script, [*train_argv(data6, tiny_clap_dir, classes_file, out), "--epochs", "2",
                                        "--learning-rate", "3e-2", "--overwrite"])
    assert code == 0, err
    assert not (out / "projection_epoch_3.pth").exists()
    for path in out.glob("*.pth"):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["config"]["learning_rate"] == 3e-2 and ckpt["config"]["epochs"] == 2, path.name


def test_resume_of_a_finished_run_changes_nothing(tmp_path, data6, tiny_clap_dir, classes_file):
    """Resuming a run that already reached --epochs is a no-op that succeeds, not a crash."""
    out = tmp_path / "run"
    argv = [*train_argv(data6, tiny_clap_dir, classes_file, out), "--epochs", "2"]
    assert run_main(train_script, argv)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".pth", ".json")}
    code, err = run_main(train_script, [*argv, "--resume", out])
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".pth", ".json")} == before


def _run_cut_after_epoch_2(out: Path, argv) -> dict:
    """A 3-epoch run whose epoch-3 files are removed (what a kill after epoch 2 leaves); returns
    the epoch-3 weights it had."""
    assert run_main(train_script, argv)[0] == 0
    final = weights(out / "projection_epoch_3.pth")
    for path in out.glob("*_3.pth"):
        path.unlink()
    return final


def test_resume_dir_continues_that_dir(tmp_path, monkeypatch, data6, tiny_clap_dir, classes_file):
    """``--resume DIR`` alone (no --output-dir) continues DIR, not the default ./checkpoints_hyperbolic."""
    out = tmp_path / "run"
    argv = [*train_argv(data6, tiny_clap_dir, classes_file, out), "--epochs", "3"]
    final = _run_cut_after_epoch_2(out, argv)
    monkeypatch.chdir(tmp_path)
    no_output_dir = [a for a in argv if a not in ("--output-dir", str(out))]
    code, err = run_main(train_script, [*no_output_dir, "--resume", out])
    assert code == 0, err
    resumed = weights(out / "projection_epoch_3.pth")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert not (tmp_path / "checkpoints_hyperbolic").exists()


def test_resume_with_other_hyperparameters_is_refused(tmp_path, data6, tiny_clap_dir, classes_file):
    """The optimizer and schedule come back from the checkpoint, so a different --learning-rate
    would be recorded in setup.json but not used: refused, naming the flag and both values."""
    out = tmp_path / "run"
    argv = [*train_argv(data6, tiny_clap_dir, classes_file, out), "--epochs", "3"]
    _run_cut_after_epoch_2(out, argv)
    code, err = run_main(train_script, [*argv, "--learning-rate", "5e-2", "--resume", out])
    assert code == 2
    assert "--learning-rate 0.05 (run: 0.01)" in err
    assert not (out / "projection_epoch_3.pth").exists()
