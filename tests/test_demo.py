"""``train_hyperbolic_clap.py --demo``: the flags it ignores and the commands it prints."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from tests.helpers import projection_weights, run_main, same_weights


def test_demo_names_the_flags_it_ignores(monkeypatch):
    import hyperbolic.demo
    calls = []
    monkeypatch.setattr(hyperbolic.demo, "run_demo", lambda **kw: calls.append(kw))
    code, err = run_main(train_script, ["--demo", "--epochs", "5", "--learning-rate", "1e-4", "--seed", "7"])
    assert code == 0 and calls == [{"output_dir": None, "seed": 7}]
    assert "ignoring --epochs, --learning-rate (only --seed" in err
    code, err = run_main(train_script, ["--demo", "--seed", "7"])
    assert "ignoring" not in err


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
    before = projection_weights(best)
    monkeypatch.chdir(tmp_path)
    code, err = run_main(train_script, train_cmd)
    assert code == 0, err
    assert same_weights(projection_weights(best), before)
    out = tmp_path / "again.json"
    code, err = run_main(eval_script, [*eval_cmd[:eval_cmd.index("--output-json")],
                                       *eval_cmd[eval_cmd.index("--output-json") + 2:], "--output-json", out])
    assert code == 0, err
    again = json.loads(out.read_text())
    # the rerun's model is named after its own folder (checkpoints_rerun), its numbers are the demo's
    assert list(again["summary"].values()) == list(results["summary"].values())
    assert list(again["summary"])[1] == "checkpoints_rerun-hyperbolic"


def test_demo_commands_write_to_a_new_folder_without_overwrite(tmp_path):
    from hyperbolic.config import EvalConfig, TrainConfig
    from hyperbolic.demo import demo_commands
    cfg = TrainConfig(parquet_dir="d/train", output_dir=str(tmp_path / "demo" / "checkpoints"), overwrite=True,
                      epochs=60, learning_rate=1e-2, temperature=0.1)
    eval_cfg = EvalConfig(parquet_dir="d/eval", output_json=str(tmp_path / "demo" / "results_demo.json"))
    train_line, eval_line = [shlex.split(line) for line in demo_commands(cfg, eval_cfg).splitlines()]
    assert "--overwrite" not in train_line
    out = Path(train_line[train_line.index("--output-dir") + 1])
    assert out != Path(cfg.output_dir) and not out.exists()
    assert Path(eval_line[eval_line.index("--projection-checkpoint") + 1]) == out
    assert Path(eval_line[eval_line.index("--output-json") + 1]) != Path(eval_cfg.output_json)
    train_script.parse_args(train_line[2:])
    eval_script.parse_args(eval_line[2:])
