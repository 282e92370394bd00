"""Both entry scripts end to end (``main([...])``) on the tiny offline CLAP and generated parquet."""

import json
import math

import pytest
import torch

import test_clap_modelscope as eval_script
import test_clap_modelscope as test_script
import train_hyperbolic_clap as train_script
from tests.helpers import train_argv

CHECKPOINT_KEYS = {"epoch", "projection_state_dict", "optimizer_state_dict", "train_loss", "val_loss", "c",
                   "temperature", "embed_dim", "config"}


def _train_argv(train_dir, clap_dir, out):
    return train_argv(train_dir, clap_dir, out, epochs=3, c=0.5, temperature=0.2, no_learn_temperature=True, seed=7)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clap_dir, demo_train_dir):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    assert train_script.main(_train_argv(demo_train_dir, tiny_clap_dir, out)) == 0
    return out


@pytest.mark.slow
def test_training_writes_checkpoints_and_setup(trained):
    setup = json.loads((trained / "setup.json").read_text())
    assert [row["epoch"] for row in setup["history"]] == [1, 2, 3]
    for e in (1, 2, 3):
        ckpt = torch.load(trained / f"projection_epoch_{e}.pth", weights_only=False)
        assert CHECKPOINT_KEYS <= set(ckpt)
        assert ckpt["epoch"] == e and ckpt["c"] == pytest.approx(0.5) and ckpt["embed_dim"] == 32
        assert set(ckpt["projection_state_dict"]) == {"linear.weight", "linear.bias"}
        assert ckpt["config"]["c"] == 0.5 and ckpt["config"]["seed"] == 7
    best = setup["summary"]["best_epoch"]
    assert (trained / f"best_projection_epoch_{best}.pth").exists()
    val = [row["val_mAP"] for row in setup["history"]]
    tied = [e for e, v in enumerate(val, 1) if v == max(val)]  # ties broken on the lowest val_loss, then first
    assert setup["summary"]["best_val_mAP"] == max(val)
    assert best == min(tied, key=lambda e: (setup["history"][e - 1]["val_loss"], e))
    for row in setup["history"]:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
        assert row["val_mean_pos_sim"] > row["val_mean_neg_sim"] - 1.0  # both present and finite
    # Loss goes down on this easy data.
    assert setup["history"][-1]["train_loss"] < setup["history"][0]["train_loss"]
    assert not list(trained.glob(".*.tmp"))  # atomic writes leave no temporary file behind


@pytest.mark.slow
def test_training_is_reproducible(tmp_path, trained, tiny_clap_dir, demo_train_dir):
    assert train_script.main(_train_argv(demo_train_dir, tiny_clap_dir, tmp_path / "again")) == 0
    a = torch.load(trained / "projection_epoch_3.pth", weights_only=False)["projection_state_dict"]
    b = torch.load(tmp_path / "again" / "projection_epoch_3.pth", weights_only=False)["projection_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_refuses_non_empty_output_dir(trained, tiny_clap_dir, demo_train_dir):
    argv = ["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--output-dir", str(trained), "--epochs", "1"]
    assert train_script.main(argv) == 2


def _eval(tmp_path, tiny_clap_dir, eval_dir, *extra):
    out = tmp_path / "results.json"
    argv = ["--parquet-dir", str(eval_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--output-json", str(out), "--num-samples", "100", *extra]
    assert test_script.main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_evaluation_plain_and_hyperbolic(tmp_path, trained, tiny_clap_dir, demo_eval_dir, tiny_clap):
    plain = _eval(tmp_path / "p", tiny_clap_dir, demo_eval_dir)
    assert set(plain) >= {"test_info", "model_info", "similarity_stats", "metrics", "predictions", "skipped"}
    assert plain["model_info"]["use_hyperbolic"] is False
    m = plain["metrics"]
    assert m["valid_samples"] == m["total_samples"] == len(plain["predictions"]) > 0
    assert -1.0 <= plain["similarity_stats"]["min"] <= plain["similarity_stats"]["max"] <= 1.0 + 1e-6
    pred = plain["predictions"][0]
    assert pred["predicted_top1"] == pred["top_k_predictions"][0]["classname"]
    assert [p["rank"] for p in pred["top_k_predictions"]] == list(range(1, 11))
    sims = [p["similarity"] for p in pred["top_k_predictions"]]
    assert sims == sorted(sims, reverse=True)

    ckpt = sorted(trained.glob("best_projection_epoch_*.pth"))[-1]
    hyp = _eval(tmp_path / "h", tiny_clap_dir, demo_eval_dir, "--use-hyperbolic", "--projection-checkpoint",
                str(ckpt), "--c", "0.5", "--temperature", "0.2")
    info = hyp["model_info"]
    assert info["use_hyperbolic"] and info["c"] == pytest.approx(0.5) and info["ignored_flags"] == {}
    assert hyp["similarity_stats"]["max"] <= 0.0  # -d / tau
    # Recompute mAP independently from the predictions' ground truth and a fresh score matrix.
    assert [p["video_id"] for p in hyp["predictions"]] == [p["video_id"] for p in plain["predictions"]]
    assert 0.0 <= hyp["metrics"]["mAP"] <= 1.0


@pytest.mark.slow
def test_evaluation_reports_differing_flag(tmp_path, trained, tiny_clap_dir, demo_eval_dir):
    ckpt = sorted(trained.glob("projection_epoch_*.pth"))[0]
    hyp = _eval(tmp_path, tiny_clap_dir, demo_eval_dir, "--use-hyperbolic", "--projection-checkpoint",
                str(ckpt), "--c", "2.0")
    assert hyp["model_info"]["c"] == pytest.approx(0.5)
    assert hyp["model_info"]["ignored_flags"] == {"c": 2.0}


@pytest.mark.parametrize("argv, flag", [
    (["--c", "-1"], "--c must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--train-ratio", "1.0"], "--train-ratio"),
    (["--batch-size", "0"], "--batch-size"),
    (["--clip-r", "1.5"], "--clip-r"),
    (["--prompt-template", "no placeholder"], "--prompt-template"),
])
def test_train_usage_errors_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--parquet-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--top-k", "0"], "--top-k"),
    (["--top-k", "528"], "--top-k"),
    (["--c", "0"], "--c must be > 0"),
    (["--use-hyperbolic"], "--projection-checkpoint"),
])
def test_eval_usage_errors_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--parquet-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_missing_clap_is_one_clear_error(tmp_path, monkeypatch, demo_eval_dir, capsys):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty_cache"))
    code = test_script.main(["--parquet-dir", str(demo_eval_dir), "--device", "cpu",
                             "--output-json", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "modelscope download --model laion/larger_clap_general" in err
    assert str(tmp_path / "empty_cache") in err
    assert not (tmp_path / "r.json").exists()


def test_every_main_exits_2_on_a_user_error_and_nothing_else(monkeypatch, tmp_path):
    """One base class (hyperbolic.errors.UserError) is what every main turns into exit status 2;
    any other exception is a bug and keeps its traceback."""
    from data.errors import DatasetError
    from hyperbolic import distributed, export
    from hyperbolic.embedding.clap import ClapNotFoundError, ClapPrecisionError
    from hyperbolic.errors import UserError
    from hyperbolic.hierarchy.ontology import OntologyError
    from hyperbolic.model.checkpoint import CheckpointError
    from hyperbolic.training.trainer import TrainingError
    for cls in (DatasetError, ClapNotFoundError, ClapPrecisionError, OntologyError, CheckpointError,
                TrainingError, export.ExportError):
        assert issubclass(cls, UserError), cls

    def raising(error):
        def run(*args, **kwargs):
            raise error
        return run

    argv = [str(tmp_path / "a.pth"), str(tmp_path / "a.onnx")]
    monkeypatch.setattr(export, "export_onnx", raising(export.ExportError("onnxruntime scores differ")))
    assert export.main(argv) == 2
    monkeypatch.setattr(export, "export_onnx", raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):  # the earlier main took any ValueError for bad input
        export.main(argv)
    monkeypatch.setattr(distributed, "run", raising(UserError("bad flag")))
    assert distributed.main(["--parquet-dir", str(tmp_path), "--checkpoint", str(tmp_path), "--device", "cpu"]) == 2


def _option_defaults(parser) -> dict:
    return {a.option_strings[0]: a.default for a in parser._actions if a.option_strings}


def test_distributed_shares_the_embedding_flags_and_their_checks(capsys):
    """hyperbolic.distributed declares the embedding flags through hyperbolic.cli like both scripts;
    only the per-rank defaults differ, and the same value is refused with the same message."""
    from hyperbolic import distributed
    eval_flags, dist_flags = _option_defaults(test_script.build_parser()), _option_defaults(distributed.build_parser())
    shared = ["--checkpoint", "--class-labels", "--label-column", "--embed-batch-size", "--cache-dir", "--precision",
              "--segment", "--hop", "--verbose"]
    assert {f: dist_flags[f] for f in shared} == {f: eval_flags[f] for f in shared}
    assert dist_flags["--device"] == "cpu" and dist_flags["--num-workers"] is None and "--no-cache" not in dist_flags
    for bad in (["--precision", "fp16", "--device", "cpu"], ["--hop", "5"], ["--segment", "20"],
                ["--num-workers", "-1"], ["--embed-batch-size", "0"]):
        messages = []
        for parse in (train_script.parse_args, distributed.parse_args):
            with pytest.raises(SystemExit) as exit_info:
                parse(["--parquet-dir", "x", *bad])
            assert exit_info.value.code == 2
            messages.append(capsys.readouterr().err.strip().splitlines()[-1].split("error: ")[1])
        assert messages[0] == messages[1], bad


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


@pytest.mark.parametrize("script", [train_script, test_script])
@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA --device"),
    (["--segment", "12"], "--segment must be in (0, 10]"),
    (["--segment", "5", "--hop", "6"], "--hop must be in (0, --segment]"),
    (["--hop", "5"], "--hop needs --segment"),
])
@pytest.mark.slow
def test_flags_are_checked(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--parquet-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
