"""The run folder: what training writes (file modes, --keep-epochs, the best checkpoint), continuing it (--resume RUN_DIR, Ctrl-C), a run folder as --projection-checkpoint, and nothing left behind by an early error."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from tests.helpers import _eval_argv, _train_argv, projection_weights, run_main, same_weights


def _main(script, *argv) -> int:
    return script.main([str(a) for a in argv])


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
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


@pytest.mark.slow
def test_keep_epochs_and_a_single_best_checkpoint(tmp_path, five_epochs, tiny_clap_dir, demo_train_dir):
    history = json.loads((five_epochs / "setup.json").read_text())["history"]
    best = min(history, key=lambda r: r["val_loss"])["epoch"]  # first of the lowest, as training picks
    # --keep-epochs 0 keeps every epoch, and still one best file
    assert sorted(p.name for p in five_epochs.glob("*.pth")) == sorted(
        [f"projection_epoch_{e}.pth" for e in range(1, 6)] + [f"best_projection_epoch_{best}.pth"])
    out = tmp_path / "run"
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "5",
                                                   "--keep-epochs", "2", "--select-metric", "val_loss"))
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.pth")) == sorted(
        ["projection_epoch_4.pth", "projection_epoch_5.pth", f"best_projection_epoch_{best}.pth"])
    assert same_weights(projection_weights(out / f"best_projection_epoch_{best}.pth"),
                 projection_weights(five_epochs / f"projection_epoch_{best}.pth"))
    assert json.loads((out / "setup.json").read_text())["summary"]["best_checkpoint"].endswith(
        f"best_projection_epoch_{best}.pth")


@pytest.mark.slow
def test_resume_run_dir_alone_continues_with_the_runs_settings(tmp_path, five_epochs, tiny_clap_dir,
                                                               demo_train_dir, monkeypatch):
    out = tmp_path / "run"
    code, _ = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "5",
                                                 "--select-metric", "val_loss"))
    assert code == 0
    for path in out.glob("*_5.pth"):  # what a kill after epoch 4 leaves
        path.unlink()
    monkeypatch.chdir(tmp_path)
    code, err = run_main(train_script, ["--resume", out])
    assert code == 0, err
    assert same_weights(projection_weights(out / "projection_epoch_5.pth"), projection_weights(five_epochs / "projection_epoch_5.pth"))
    # an explicit flag that changes what is computed is still refused; where it runs may differ
    code, err = run_main(train_script, ["--resume", out, "--learning-rate", "1e-4"])
    assert code == 2 and "--learning-rate 0.0001 (run: 0.01)" in err
    code, err = run_main(train_script, ["--resume", out, "--device", "cpu", "--keep-epochs", "1"])
    assert code == 0, err


def test_ctrl_c_names_the_last_epoch_and_the_resume_command(tmp_path, five_epochs, tiny_clap_dir, demo_train_dir,
                                                            monkeypatch):
    import shlex

    from hyperbolic.training.trainer import Trainer
    out = tmp_path / "run dir"
    original = Trainer.batch_loss

    def interrupt_in_epoch_4(self, *args):
        if (out / "projection_epoch_3.pth").exists():
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "batch_loss", interrupt_in_epoch_4)
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "5",
                                                   "--select-metric", "val_loss"))
    monkeypatch.setattr(Trainer, "batch_loss", original)
    assert code == 130
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert "epoch 3 is the last complete epoch" in line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:2] == ["python", "train_hyperbolic_clap.py"]
    code, err = run_main(train_script, command[2:])
    assert code == 0, err
    assert same_weights(projection_weights(out / "projection_epoch_5.pth"), projection_weights(five_epochs / "projection_epoch_5.pth"))


def test_projection_checkpoint_accepts_a_run_folder(tmp_path, five_epochs, tiny_clap_dir, demo_eval_dir):
    history = json.loads((five_epochs / "setup.json").read_text())["history"]
    best = min(history, key=lambda r: r["val_loss"])["epoch"]
    out = tmp_path / "r.json"
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, out, "--projection-checkpoint",
                                                 five_epochs, "--use-hyperbolic"))
    assert code == 0, err
    info = json.loads(out.read_text())["model_info"]
    assert info["projection_checkpoint"] == str(five_epochs / f"best_projection_epoch_{best}.pth")
    assert info["epoch"] == best
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "r2.json",
                                                 "--projection-checkpoint", empty))
    assert code == 2
    assert "is a folder without best_projection_epoch_*.pth" in err and "does not exist" not in err


def test_a_missing_clap_leaves_no_run_folder(tmp_path, demo_train_dir, classes_file):
    out = tmp_path / "runs" / "hyp"
    code, err = run_main(train_script, ["--parquet-dir", demo_train_dir, "--checkpoint", tmp_path / "no_clap",
                                        "--device", "cpu", "--class-labels", classes_file, "--output-dir", out])
    assert code == 2 and "no_clap" in err
    assert not out.exists() and not (tmp_path / "runs").exists()
