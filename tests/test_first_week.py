"""A user's first week (issue 13): rows held vs used, file modes, long clips, AudioSet machine ids,
resume, checkpoint files, SwanLab, --help, messages, demo commands, plots, training threads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------ 1: rows held vs rows used

def _eval_argv(data, clap, out, *extra):
    return ["--parquet-dir", data, "--checkpoint", clap, "--device", "cpu", "--num-workers", "0",
            "--output-json", out, *extra]


@pytest.mark.slow
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


# ------------------------------------------------------------------ 5, 6: resume and checkpoint files

def _weights(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)["projection_state_dict"]


def _same(a, b) -> bool:
    import torch
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def five_epochs(tmp_path_factory, tiny_clap_dir, demo_train_dir):
    out = tmp_path_factory.mktemp("five") / "run"
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--epochs", "5",
                                                   "--keep-epochs", "0", "--select-metric", "val_loss"))
    assert code == 0, err
    return out


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
    assert _same(_weights(out / f"best_projection_epoch_{best}.pth"),
                 _weights(five_epochs / f"projection_epoch_{best}.pth"))
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
    assert _same(_weights(out / "projection_epoch_5.pth"), _weights(five_epochs / "projection_epoch_5.pth"))
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
    assert _same(_weights(out / "projection_epoch_5.pth"), _weights(five_epochs / "projection_epoch_5.pth"))


# ------------------------------------------------------------------ 4: AudioSet machine ids

# Published AudioSet ids of the demo classes (class_labels_indices.csv of AudioSet).
DEMO_MIDS = {"Sine wave": "/m/01v_m0", "White noise": "/m/0chx_", "Pink noise": "/m/0cj0r", "Silence": "/m/028v0c",
             "Mains hum": "/m/06xkwv", "Chirp tone": "/m/0hdsk", "Clicking": "/m/07qc9xj", "Beep, bleep": "/m/02fs_r",
             "Dial tone": "/m/015jpf", "Buzz": "/m/07pjwq1"}


@pytest.fixture(scope="module")
def with_mids(tmp_path_factory, demo_eval_dir):
    """The demo eval shards plus a ``labels`` column of machine ids, as AudioSet's shards have;
    the first row's ids also hold one id that is no class."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path_factory.mktemp("mids")
    for i, path in enumerate(sorted(Path(demo_eval_dir).glob("*.parquet"))):
        table = pq.read_table(path)
        ids = [[DEMO_MIDS[name] for name in row] + (["/m/0not_a_class"] if (i, r) == (0, 0) else [])
               for r, row in enumerate(table.column("human_labels").to_pylist())]
        pq.write_table(table.append_column("labels", pa.array(ids)), folder / path.name)
    return folder


@pytest.mark.slow
def test_label_column_of_machine_ids_gives_the_same_results_as_names(tmp_path, with_mids, tiny_clap_dir):
    results = {}
    for column in ("human_labels", "labels"):
        out = tmp_path / f"{column}.json"
        code, err = run_main(eval_script, _eval_argv(with_mids, tiny_clap_dir, out, "--label-column", column))
        assert code == 0, err
        results[column] = json.loads(out.read_text())
    names, ids = results["human_labels"], results["labels"]
    assert [p["ground_truth_indices"] for p in ids["predictions"]] == [
        p["ground_truth_indices"] for p in names["predictions"]]
    assert [p["ground_truth_human_labels"] for p in ids["predictions"]][1:] == [
        p["ground_truth_human_labels"] for p in names["predictions"]][1:]  # recorded as class names
    assert ids["metrics"]["mAP"] == names["metrics"]["mAP"]
    assert ids["unknown_labels"] == [{"label": "/m/0not_a_class", "count": 1}]
    speech = next(i for i, name in enumerate(json.loads(
        (Path(train_script.__file__).parent / "CLAP/class_labels/audioset_class_labels_indices.json").read_text()
    ).values()) if name == "Speech")
    from data.labels import LabelMatcher, load_class_ids, load_class_labels
    from hyperbolic.config import DEFAULT_CLASS_LABELS
    classes = load_class_labels(DEFAULT_CLASS_LABELS)
    matcher = LabelMatcher(classes, load_class_ids(DEFAULT_CLASS_LABELS, classes))
    assert matcher.match("/m/09x0r,/m/0chx_") == (sorted([speech, classes.index("White noise")]), [])


def test_missing_label_column_names_the_flag_and_no_message_dumps_a_dict(tmp_path, demo_eval_dir, tiny_clap_dir):
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "r.json",
                                                 "--label-column", "labels"))
    assert code == 2
    assert "--label-column" in err and "'labels'" in err
    assert "[" not in err.splitlines()[-1] and "{" not in err.splitlines()[-1]
    # No usable clip for training: counts by reason and the flags to check, no dict
    classes = tmp_path / "classes.txt"
    classes.write_text("Speech\nMusic\n")
    code, err = run_main(train_script, _train_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "run",
                                                   "--class-labels", classes))
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert "20 no_known_label" in last and "--label-column" in last and "{" not in last


# ------------------------------------------------------------------ 8: --help shows every default

def _help_blocks(parser) -> dict[str, str]:
    """option -> its help text, from the rendered --help."""
    import re
    blocks, current = {}, None
    for line in parser.format_help().splitlines():
        m = re.match(r"^  (--[a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


@pytest.mark.parametrize("script", [train_script, eval_script])
def test_help_states_every_default_once(script):
    parser = script.build_parser()
    blocks = _help_blocks(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    first = {id(a): next(o for o in a.option_strings if o.startswith("--")) for a in options}
    assert set(blocks) == set(first.values())  # one help block per option
    for action in options:
        text = blocks[first[id(action)]]
        assert text.count("(default") <= 1, text
        if action.nargs == 0 or action.required or "required" in text:
            continue
        assert text.count("(default") == 1, text
        if action.default is not None and not isinstance(action.default, list) and "CLAP/class_labels" not in text:
            assert f"(default: {action.default}" in text or f"(default: '{action.default}" in text, text
    assert "(default: 1.0)" in _help_blocks(train_script.build_parser())["--c"]


def test_demo_names_the_flags_it_ignores(monkeypatch):
    import hyperbolic.demo
    calls = []
    monkeypatch.setattr(hyperbolic.demo, "run_demo", lambda **kw: calls.append(kw))
    code, err = run_main(train_script, ["--demo", "--epochs", "5", "--learning-rate", "1e-4", "--seed", "7"])
    assert code == 0 and calls == [{"output_dir": None, "seed": 7}]
    assert "ignoring --epochs, --learning-rate (only --seed" in err
    code, err = run_main(train_script, ["--demo", "--seed", "7"])
    assert "ignoring" not in err


# ------------------------------------------------------------------ 9: --projection-checkpoint RUN_DIR

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


# ------------------------------------------------------------------ 10: the demo prints its commands

@pytest.mark.slow
def test_demo_commands_rerun_the_demo(tmp_path, capsys, monkeypatch):
    import shlex

    from hyperbolic.demo import run_demo
    demo = tmp_path / "demo"
    results = run_demo(demo, seed=3, epochs=3, train_clips_per_class=2, eval_clips_per_class=1, seconds=1.0)
    printed = capsys.readouterr().out
    commands = [shlex.split(line) for line in printed.splitlines() if line.strip().startswith("python ")]
    assert [c[1] for c in commands] == ["train_hyperbolic_clap.py", "test_clap_modelscope.py"]
    train_cmd, eval_cmd = commands[0][2:], commands[1][2:]
    used = json.loads((demo / "checkpoints" / "setup.json").read_text())["config"]
    for flag, key in (("--learning-rate", "learning_rate"), ("--temperature", "temperature"), ("--epochs", "epochs")):
        assert float(train_cmd[train_cmd.index(flag) + 1]) == used[key]
    best = next((demo / "checkpoints").glob("best_projection_epoch_*.pth"))
    before = _weights(best)
    monkeypatch.chdir(tmp_path)
    code, err = run_main(train_script, train_cmd)
    assert code == 0, err
    assert _same(_weights(best), before)
    out = tmp_path / "again.json"
    code, err = run_main(eval_script, [*eval_cmd[:eval_cmd.index("--output-json")],
                                       *eval_cmd[eval_cmd.index("--output-json") + 2:], "--output-json", out])
    assert code == 0, err
    again = json.loads(out.read_text())
    # the rerun's model is named after its own folder (checkpoints_rerun), its numbers are the demo's
    assert list(again["summary"].values()) == list(results["summary"].values())
    assert list(again["summary"])[1] == "checkpoints_rerun-hyperbolic"


# ------------------------------------------------------------------ 7: SwanLab

@pytest.mark.slow
def test_swanlab_offline_logs_go_under_the_output_dir(tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    pytest.importorskip("swanlab")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "run"
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, out, "--use-swanlab",
                                                   "--swanlab-mode", "offline"))
    assert code == 0, err
    assert list(cwd.iterdir()) == []
    assert any(p.is_file() for p in (out / "swanlog").rglob("*"))


def test_missing_swanlab_fails_before_embedding(tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    import sys

    import hyperbolic.embedding.embeddings
    monkeypatch.setitem(sys.modules, "swanlab", None)  # import swanlab -> ImportError
    monkeypatch.setattr(hyperbolic.embedding.embeddings, "embed_clips", lambda *a, **k: pytest.fail("embedded before the check"))
    code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, tmp_path / "run", "--use-swanlab"))
    assert code == 2
    assert "--use-swanlab needs the swanlab package" in err


# ------------------------------------------------------------------ 14: training-loop threads, epoch time

def test_epoch_loop_runs_on_the_measured_thread_count_and_restores_the_count(
        tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    import re

    import torch

    from hyperbolic.training.trainer import Trainer
    seen_threads, original = [], Trainer.batch_loss

    def spy(self, *args):
        seen_threads.append((id(self), torch.get_num_threads()))
        return original(self, *args)

    monkeypatch.setattr(Trainer, "batch_loss", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, tmp_path / "run"))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    setup = json.loads((tmp_path / "run" / "setup.json").read_text())
    chosen = setup["training_threads"]
    per_step = chosen["seconds_per_step"]
    # The probe ran on a copy of the trainer at 1 and 2 threads; the run's own steps all ran on
    # the faster count, which the log and setup.json report with the measured figures.
    assert set(per_step) == {"1", "2"} and chosen["available"] == 2
    assert chosen["threads"] == (2 if per_step["2"] < per_step["1"] else 1)
    run_trainer = seen_threads[-1][0]
    assert {n for who, n in seen_threads if who == run_trainer} == {chosen["threads"]}
    assert {n for who, n in seen_threads if who != run_trainer} == {1, 2}
    assert after == 2
    seconds = setup["history"][0]["seconds"]
    line = next(line for line in err.splitlines() if "epoch 1/2" in line)
    assert re.search(rf"\b{seconds:.2f}s\b", line), line
    plural = "" if chosen["threads"] == 1 else "s"
    assert f"training on {chosen['threads']} intra-op thread{plural} (of 2)" in err
    assert f"1 thread: {1000 * per_step['1']:.2f} ms" in err


def test_training_threads_grow_with_the_step():
    from hyperbolic.training.train import training_threads
    # 6 (B + P) D^2 flops per step, one thread per 1e9: hand-computed
    assert training_threads(16, 527, 512, 16) == 1          # 0.85e9
    assert training_threads(4096, 527, 512, 16) == 7        # 7.27e9
    assert training_threads(4096, 527, 512, 4) == 4         # capped by what is available
    assert training_threads(1, 1, 8, 16) == 1


# ------------------------------------------------------------------ 3: clips longer than 10 s

@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Six 1 s clips and three longer ones (12 s at 44.1 kHz, 10.5 s and exactly 10 s at 48 kHz)."""
    import numpy as np

    from data.synthetic import encode_audio, write_parquet_shard
    folder = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    lengths = [(1.0, 48000)] * 6 + [(12.0, 44100), (10.5, 48000), (10.0, 48000)]
    rows = [{"audio": {"bytes": encode_audio(0.1 * rng.standard_normal(int(s * sr)).astype(np.float32), sr, "flac"),
                       "path": f"{i}.flac"},
             "human_labels": ["White noise" if i % 2 else "Sine wave"], "video_id": f"v{i}"}
            for i, (s, sr) in enumerate(lengths)]
    write_parquet_shard(folder / "a.parquet", rows)
    return folder


@pytest.mark.slow
def test_truncated_clips_are_counted_and_logged(tmp_path, long_clips, tiny_clap_dir):
    cache = tmp_path / "cache"
    for attempt in ("cold", "warm"):  # the counts come back from the embedding cache too
        out = tmp_path / f"{attempt}.json"
        code, err = run_main(eval_script, _eval_argv(long_clips, tiny_clap_dir, out, "--cache-dir", cache))
        assert code == 0, err
        info = json.loads(out.read_text())["test_info"]
        assert info["clips_truncated"] == 2  # 12 s and 10.5 s; exactly 10 s is not cut
        assert info["longest_seconds"] == pytest.approx(12.0)
        assert info["clips_length_unknown"] == 0
        told = [line for line in err.splitlines() if "--segment" in line]
        assert len(told) == 1 and "2 of 9 clips are longer than 10 s (longest 12.0 s)" in told[0]
    code, err = run_main(train_script, _train_argv(long_clips, tiny_clap_dir, tmp_path / "run", "--no-cache"))
    assert code == 0, err
    data = json.loads((tmp_path / "run" / "setup.json").read_text())["data"]
    assert (data["clips_truncated"], data["longest_seconds"]) == (2, pytest.approx(12.0))
    out = tmp_path / "seg.json"
    code, err = run_main(eval_script, _eval_argv(long_clips, tiny_clap_dir, out, "--no-cache", "--segment", "5"))
    assert code == 0, err
    assert json.loads(out.read_text())["test_info"]["clips_truncated"] == 0


# ------------------------------------------------------------------ 13: plots

def test_curve_panels_drop_what_was_not_learned():
    from hyperbolic.evaluation.plots import curve_panels
    fixed = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0, "val_mAP": 0.1 * e, "c": 1.0,
              "temperature": 0.1} for e in (1, 2, 3)]
    assert [t for t, _ in curve_panels(fixed)] == ["loss", "validation mAP"]
    learned = [{**row, "temperature": 0.1 + 0.01 * row["epoch"]} for row in fixed]
    assert [t for t, _ in curve_panels(learned)] == ["loss", "validation mAP", "temperature"]


def test_training_curves_mark_the_best_epoch(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from hyperbolic.evaluation.plots import plot_training_curves
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 - 0.1 * e, "val_mAP": 0.1 * e, "c": 1.0,
                "temperature": 0.1} for e in range(1, 6)]
    images = {}
    for best in (2, 4):
        (tmp_path / "setup.json").write_text(json.dumps({"history": history, "summary": {"best_epoch": best}}))
        images[best] = imread(plot_training_curves(tmp_path / "setup.json", tmp_path / f"b{best}.png"))
    assert not np.array_equal(images[2], images[4])  # the mark moves with the best epoch


def test_disk_labels_name_the_most_frequent_classes_when_there_are_many():
    from hyperbolic.evaluation.plots import disk_labels
    names = [f"class {i}" for i in range(527)]
    counts = [0] * 527
    for i, n in zip(range(100, 150), range(50, 0, -1)):  # classes 100..149, decreasing counts
        counts[i] = n
    assert disk_labels(names, counts=counts) == list(range(100, 140))
    assert disk_labels(names[:12], counts=counts[:12]) == list(range(12))  # few classes: all named


def test_disk_layout_puts_clips_with_the_prompts_pca():
    import torch

    from hyperbolic.geometry import poincare
    from hyperbolic.evaluation.plots import disk_layout
    g = torch.Generator().manual_seed(0)
    text = poincare.expmap0(0.5 * torch.randn(20, 8, generator=g, dtype=torch.float64), c=1.0)
    audio = poincare.expmap0(0.5 * torch.randn(7, 8, generator=g, dtype=torch.float64), c=1.0)
    xy, audio_xy = disk_layout(text, c=1.0, others=audio)
    assert np.allclose(xy, disk_layout(text, c=1.0))  # the prompts' layout does not depend on the clips
    assert np.allclose(np.linalg.norm(audio_xy, axis=1), audio.norm(dim=1).numpy())  # dist0 kept


@pytest.mark.slow
def test_plots_of_a_comparison_run(tmp_path, five_epochs, tiny_clap_dir, demo_eval_dir):
    out = tmp_path / "r.json"
    code, err = run_main(eval_script, _eval_argv(demo_eval_dir, tiny_clap_dir, out, "--projection-checkpoint",
                                                 five_epochs, "--plots"))
    assert code == 0, err
    results = json.loads(out.read_text())
    figure = Path(results["test_info"]["comparison_plot"])
    assert figure.is_file() and figure.name == "r_per_class_ap_models.png"
    for block in results["models"].values():
        assert Path(block["plots"]["per_class_ap"]).is_file()
