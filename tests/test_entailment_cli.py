"""train_hyperbolic_clap.py with --ontology / --entailment-weight / --expand-ancestors (proposed wiring)."""

import json

import pytest
import torch

import train_hyperbolic_clap as train_script
from data.synthetic import DEMO_CLASSES, write_demo_ontology
from hyperbolic.model import projector as projector_module
from hyperbolic.outputs import atomic_write_json
from tests.helpers import train_argv

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs


def _argv(data, clap, out, *extra):
    return train_argv(data, clap, out, *extra, epochs=3, seed=3)


def _weights(path):
    return torch.load(path, weights_only=False)["projection_state_dict"]


def test_ontology_without_weight_changes_nothing(tmp_path, tiny_clap_dir, demo_train_dir):
    onto = write_demo_ontology(tmp_path / "onto.json")
    labels = atomic_write_json(tmp_path / "classes.json", dict(enumerate(DEMO_CLASSES)))
    base = ["--class-labels", str(labels)]
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, tmp_path / "plain", *base)) == 0
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, tmp_path / "onto", *base, "--ontology", str(onto))) == 0
    a, b = _weights(tmp_path / "plain" / "projection_epoch_3.pth"), _weights(tmp_path / "onto" / "projection_epoch_3.pth")
    # not bit-equal: CLAP's text embeddings change in the last bits with the batch they sit in,
    # and the 8 abstract prompts join the 10 class prompts' batch
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    setup = json.loads((tmp_path / "onto" / "setup.json").read_text())
    assert setup["hierarchy"]["parent_child_pairs"] == 15 and len(setup["hierarchy"]["extra_prompts"]) == 8


def test_entailment_run_never_projects_held_out_prompts(tmp_path, monkeypatch, tiny_clap_dir, demo_train_dir):
    onto = write_demo_ontology(tmp_path / "onto.json")
    held = tmp_path / "held.txt"
    held.write_text("Sine wave\n")
    from hyperbolic.embedding.clap import FrozenClap
    from hyperbolic.embedding.embeddings import embed_prompts, prompts_for
    held_emb = embed_prompts(FrozenClap.load(str(tiny_clap_dir)), prompts_for(["Sine wave"], "This is a sound of {label}."))
    seen_rows = []
    original = projector_module.Projector.forward

    def spy(self, x, *, c):
        seen_rows.append(x.detach().clone())
        return original(self, x, c=c)

    monkeypatch.setattr(projector_module.Projector, "forward", spy)
    out = tmp_path / "run"
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, out, "--ontology", str(onto),
                                   "--entailment-weight", "1", "--expand-ancestors",
                                   "--holdout-classes", str(held))) == 0
    rows = torch.cat([r for r in seen_rows if r.shape[1] == held_emb.shape[1]])
    assert not torch.isclose(rows, held_emb, atol=1e-6).all(dim=1).any()
    setup = json.loads((out / "setup.json").read_text())
    assert setup["config"]["entailment_weight"] == 1.0 and setup["holdout_classes"] == ["Sine wave"]


@pytest.mark.parametrize("extra, message", [
    (["--entailment-weight", "1"], "need --ontology"),
    (["--expand-ancestors"], "need --ontology"),
    (["--entailment-weight", "-1"], "--entailment-weight must be >= 0"),
    (["--entailment-k", "0"], "--entailment-k must be > 0"),
    (["--ontology", "x.json", "--entailment-weight", "1", "--geometry", "euclidean"], "--geometry hyperbolic"),
    (["--ontology", "x.json", "--expand-ancestors", "--text-pairing", "first-label"], "all-labels"),
])
def test_bad_entailment_flags(extra, message, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(["--parquet-dir", "x", *extra])
    assert message in capsys.readouterr().err


def test_missing_ontology_exits_2(tmp_path, tiny_clap_dir, demo_train_dir):
    assert train_script.main(_argv(demo_train_dir, tiny_clap_dir, tmp_path / "r", "--ontology",
                                   str(tmp_path / "nope.json"))) == 2
