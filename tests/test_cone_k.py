"""``test_clap_modelscope.py --entailment-k K``: every model's cones measured at one K, against an
independent recomputation from ``poincare`` (the ``tests.test_hierarchy_eval`` fixtures: the
tiny offline CLAP, the demo clips and the hand-written demo edges); the flag's checks."""

from __future__ import annotations

import json

import pytest
import torch

import test_clap_modelscope as test_script
from data.synthetic import DEMO_CLASSES
from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE
from hyperbolic.embedding.embeddings import embed_prompts, prompts_for
from hyperbolic.evaluation.tables import format_metrics_table
from hyperbolic.model.projector import Projector
from tests.helpers import run_main
from tests.test_evaluate import DIM
from tests.test_hierarchy_eval import CONE_C, CONE_K, DEMO_ABSTRACT, DEMO_EDGES, _inside, _run, env  # noqa: F401


@pytest.mark.slow
def test_one_k_for_every_model(env, tiny_clap):  # noqa: F811
    out = env["root"] / "k07.json"
    _run([*env["base"], "--class-labels", env["classes"], "--ontology", env["onto"], "--entailment-k", "0.7",
          "--projection-checkpoint", env["cone"], env["plain"], "--output-json", out])
    results = json.loads(out.read_text())
    cone = results["models"]["cone-hyperbolic"]
    assert cone["model_info"]["entailment_k"] == 0.7 and cone["model_info"]["entailment_k_checkpoint"] == CONE_K
    assert cone["hierarchy"]["cones"]["K"] == 0.7 and cone["hierarchy"]["cones"]["K_source"] == "--entailment-k"
    assert results["models"]["plain-hyperbolic"]["hierarchy"]["cones"]["K"] == 0.7

    projector = Projector(DIM, clip_r=0.9)
    projector.load_state_dict(torch.load(env["cone"], weights_only=False)["projection_state_dict"])
    text = torch.cat([embed_prompts(tiny_clap, prompts_for(list(DEMO_CLASSES), DEFAULT_PROMPT_TEMPLATE)),
                      embed_prompts(tiny_clap, prompts_for(DEMO_ABSTRACT, DEFAULT_PROMPT_TEMPLATE))])
    at = {n: i for i, n in enumerate([*DEMO_CLASSES, *DEMO_ABSTRACT])}
    with torch.no_grad():
        pts = projector(text, c=CONE_C)
    inside, margin = _inside(pts[[at[p] for p, _ in DEMO_EDGES]], pts[[at[k] for _, k in DEMO_EDGES]], c=CONE_C, K=0.7)
    assert margin.abs().min() > 1e-4
    assert cone["hierarchy"]["cones"]["prompt_pairs_in_cone"] == pytest.approx(inside.double().mean().item())
    assert "cone_K" in format_metrics_table(results) and "0.7000" in format_metrics_table(results)


@pytest.mark.parametrize("extra,message", [
    (["--entailment-k", "0", "--ontology", "o.json"], "--entailment-k must be > 0"),
    (["--entailment-k", "0.5"], "--entailment-k needs --ontology"),
])
def test_entailment_k_checks(extra, message):
    code, err = run_main(test_script, ["--parquet-dir", "x", *extra])
    assert code == 2 and message in err


def test_measure_cones_at_sets_every_checkpoint_and_keeps_its_own():
    from hyperbolic.evaluation.scoring import ScoringModel, measure_cones_at
    plain = ScoringModel(name="clap_cosine", prompt_template="{label}")
    hyp = ScoringModel(name="h", prompt_template="{label}", projector=Projector(4), geometry="hyperbolic", c=1.0,
                       temperature=0.1, info={"entailment_k": 0.1}, entailment_k=0.1)
    measure_cones_at([plain, hyp], None)
    assert hyp.entailment_k == 0.1
    measure_cones_at([plain, hyp], 1.0)
    assert hyp.entailment_k == 1.0 and hyp.info["entailment_k_checkpoint"] == 0.1
    assert hyp.info["entailment_k_source"] == "--entailment-k" and "entailment_k_source" not in plain.info
