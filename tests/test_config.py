"""One source of truth for every setting: the flags' defaults and choices are the configuration's,
and a configuration built in code is checked as the scripts check their flags."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from hyperbolic import distributed
from hyperbolic.config import EmbeddingConfig, EvalConfig, TrainConfig, default_of
from hyperbolic.errors import ConfigError, UserError

# Flags whose parser default is not the field's, each for a reason a reader can check.
TRAIN_EXCEPTIONS = {
    "label_column": None,  # None tells "not typed" apart: a typed --label-column mixes labels into caption training
}
SWEEP_FLAGS = {"c", "temperature"}  # nargs="+": the parser default is [the field's default]


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("parser, cls, exceptions", [
    (train_script.build_parser(), TrainConfig, TRAIN_EXCEPTIONS),
    (eval_script.build_parser(), EvalConfig, {}),
])
def test_every_flag_default_and_choice_is_the_configuration_field(parser, cls, exceptions):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = 0
    for dest, action in _actions(parser).items():
        if dest not in fields:
            continue
        checked += 1
        expected = exceptions.get(dest, default_of(cls, dest))
        if expected is dataclasses.MISSING:  # a field without a default: the flag has none either
            expected = None
        if dest in SWEEP_FLAGS and cls is TrainConfig:
            expected = [expected]
        assert action.default == expected, f"--{dest}: parser {action.default!r} != config {expected!r}"
        choices = fields[dest].metadata.get("choices")
        if action.choices is not None or choices is not None:
            assert tuple(action.choices) == tuple(choices), dest
    assert checked >= (40 if cls is TrainConfig else 30)  # the test reads the parser it means to


def test_every_configuration_field_with_a_flag_has_exactly_one():
    """A field added to the configuration without its flag (or the other way round) is caught."""
    no_flag = {"TrainConfig": {"caption_labels"},  # decided from the command line (--label-column typed)
               "EvalConfig": {"projection_checkpoints", "result_dir"}}  # --projection-checkpoint; not a flag
    for parser, cls in ((train_script.build_parser(), TrainConfig), (eval_script.build_parser(), EvalConfig)):
        dests = set(_actions(parser))
        missing = {f.name for f in dataclasses.fields(cls)} - dests - no_flag[cls.__name__]
        assert missing == set(), f"{cls.__name__} fields without a flag: {missing}"


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(parquet_dir="x", device="cpu", **kw)


@pytest.mark.parametrize("bad, message", [
    ({"negatives": "batch"}, "--negatives must be one of in-batch, all-classes (got 'batch')"),
    ({"geometry": "spherical"}, "--geometry must be one of"),
    ({"clip_mode": "soft"}, "--clip-mode must be one of"),
    ({"select_metric": "val_acc"}, "--select-metric must be one of"),
    ({"epochs": 0}, "--epochs must be >= 1 (got 0)"),
    ({"c": -1.0}, "--c must be > 0 and finite (got -1)"),
    ({"temperature": math.inf}, "--temperature must be > 0 and finite"),
    ({"learn_c": True, "learn_temperature": True}, "--learn-c with --learn-temperature"),
    ({"entailment_weight": 1.0}, "--entailment-weight > 0 and --expand-ancestors need --ontology"),
    ({"embed_batch_size": 0}, "--embed-batch-size must be >= 1 (got 0)"),
])
def test_a_configuration_built_in_code_is_refused_as_the_flag_would_be(bad, message, tmp_path):
    """The library's entry point runs the script's checks: an illegal value built in code no longer
    passes silently (negatives="batch" used to train as in-batch)."""
    cfg = _cfg(**bad, output_dir=str(tmp_path / "run"))
    assert any(m.startswith(message) for m in cfg.problems()), cfg.problems()
    from hyperbolic.training.train import train
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        train(cfg)
    assert isinstance(ConfigError("x"), UserError)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("bad", [["--negatives", "batch"], ["--epochs", "0"], ["--c", "1", "-1"],
                                 ["--learn-c", "--learn-temperature"], ["--embed-batch-size", "0"]])
def test_the_script_prints_the_message_the_configuration_gives(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--parquet-dir", "x", *bad])
    assert exit_info.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1]
    if bad[0] == "--negatives":  # argparse's own choices check comes first, and names the flag too
        assert "--negatives" in printed and "'batch'" in printed
        return
    c_values = [float(v) for v in bad[1:]] if bad[0] == "--c" else [1.0]
    problems = [m for c in c_values for m in _cfg(**{
        "--epochs": {"epochs": 0}, "--c": {"c": c}, "--learn-c": {"learn_c": True, "learn_temperature": True},
        "--embed-batch-size": {"embed_batch_size": 0}}[bad[0]]).problems()]
    assert printed == problems[0]


def test_evaluation_checks_a_configuration_built_in_code(tmp_path):
    from hyperbolic.evaluation.evaluate import evaluate
    cfg = EvalConfig(parquet_dir=str(tmp_path), device="cpu", expand_ancestors=True, use_hyperbolic=True)
    with pytest.raises(ConfigError) as err:
        evaluate(cfg)
    assert str(err.value).splitlines() == ["--use-hyperbolic needs --projection-checkpoint PATH",
                                           "--expand-ancestors needs --ontology PATH (the ontology whose ancestors are added)"]


def test_defaults_decided_from_other_settings_are_decided_once_for_code_and_flags():
    assert _cfg().learn_temperature is True and _cfg(learn_c=True).learn_temperature is False
    assert _cfg(init_radius=0).init_radius is None and _cfg().init_radius == 0.5
    assert _cfg().select_metric == "val_mAP" and _cfg(text_column=["caption"]).select_metric == "val_t2a_R@10"
    args = train_script.parse_args(["--parquet-dir", "x", "--learn-c", "--init-radius", "0"])
    assert (args.learn_temperature, args.init_radius, args.select_metric) == (False, None, "val_mAP")
    # what the scripts build equals what the same settings give in code
    cfg, _, _ = train_script.config_from_args(args, ["--parquet-dir", "x", "--learn-c", "--init-radius", "0"])
    assert cfg == TrainConfig(parquet_dir="x", learn_c=True, init_radius=0)


def test_distributed_refuses_bad_embedding_flags_with_the_configuration_messages(capsys):
    with pytest.raises(SystemExit):
        distributed.parse_args(["--parquet-dir", "x", "--embed-batch-size", "0"])
    printed = capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1]
    assert printed == EmbeddingConfig(parquet_dir="x", embed_batch_size=0).problems()[0]
