"""The ``radius`` block and the hierarchy-aware metrics through ``test_clap_modelscope.main`` on the
tiny offline CLAP and the demo clips: values recomputed from the ``--save-scores`` matrices and the
demo ontology's edges written out by hand (``tests.test_hierarchy_eval``), the printed table's rows,
and a results file written before these blocks existed still printing."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from data.synthetic import DEMO_CLASSES
from hyperbolic.evaluation.tables import format_metrics_table
from tests.test_evaluate import _load_npz
from tests.test_hierarchy_eval import DEMO_ABSTRACT, DEMO_EDGES, _run, env  # noqa: F401 (env: a fixture)

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, a whole run


@pytest.fixture(scope="module")
def run(env):  # noqa: F811
    out, npz = env["root"] / "radius.json", env["root"] / "radius.npz"
    _run([*env["base"], "--class-labels", env["classes"], "--ontology", env["onto"], "--save-scores", npz,
          "--projection-checkpoint", env["cone"], env["euc"], "--output-json", out])
    return json.loads(out.read_text()), _load_npz(npz)


def _closure():
    """Each demo class with every node above it, from the hand-written edges."""
    parents: dict[str, set] = {}
    for p, k in DEMO_EDGES:
        parents.setdefault(k, set()).add(p)

    def up(n):
        return {n}.union(*(up(p) for p in parents.get(n, ())))
    return [up(n) for n in DEMO_CLASSES]


def test_radius_and_hierarchy_blocks_match_a_recomputation(run):
    results, z = run
    lab = z["labelled"]
    closure = _closure()
    for name in ("clap_cosine", "cone-hyperbolic", "euc-euclidean"):
        block = results["models"][name]
        s = z[f"scores_{name}"]
        hub = block["radius"]["hubness"]
        # 10 classes: every class is in every clip's top 10, N_10 is constant and its skewness undefined.
        assert s.shape[1] == 10 and hub["skewness_N10"] is None and "same N_10" in hub["skewness_skipped"]
        assert len(np.unique(s, axis=None)) == s.size  # no ties: the argmax is the only top 1
        top1 = np.bincount(s.argmax(axis=1), minlength=10)
        assert hub["top1_hub_share"] == pytest.approx(top1.max() / len(s)) and hub["top1_hub_class"] == top1.argmax()
        st, tt = s[lab], z["targets"][lab]
        inter = pred = true = 0
        for row, labels in zip(st, tt):
            truth = set().union(*(closure[j] for j in np.flatnonzero(labels)))
            top = closure[int(row.argmax())]
            inter, pred, true = inter + len(top & truth), pred + len(top), true + len(truth)
        assert block["hierarchy"]["hierarchical_precision@1"] == pytest.approx(inter / pred)
        assert block["hierarchy"]["hierarchical_recall@1"] == pytest.approx(inter / true)
        gt = block["hierarchy"]["map_by_ground_truth"]
        assert gt["labels"]["mAP"] == pytest.approx(block["metrics"]["mAP"])  # no --expand-ancestors
    cos, hyp = results["models"]["clap_cosine"], results["models"]["cone-hyperbolic"]
    assert cos["radius"]["logit_split"]["angle_only"] is None and cos["radius"]["logit_split"]["skipped"]
    assert cos["hierarchy"]["traversal"]["on_path"] is None and cos["hierarchy"]["traversal"]["skipped"]
    assert 0 <= hyp["hierarchy"]["traversal"]["on_path"] <= 1
    assert hyp["radius"]["confidence"]["radius"]["aurc"] is not None
    assert len(DEMO_ABSTRACT) == 8  # the traversal's nodes: 10 classes and these


def test_table_rows_and_old_results_files(run):
    results, _ = run
    table = format_metrics_table(results)
    for label in ("text_cos_mean", "text_erank", "hub_skew_N10", "radius_only_rho", "AURC radius", "gap centroids", "hier_F1@1",
                  "mAP +ancestors", "backoff_area", "traverse_on_path", "mAP depth 2"):
        assert label in table
    old = copy.deepcopy(results)
    for block in old["models"].values():
        block.pop("radius")
        for key in ("hierarchical_precision@1", "map_by_ground_truth", "backoff", "traversal"):
            block["hierarchy"].pop(key)
    old_table = format_metrics_table(old)
    assert "hub_skew_N10" not in old_table and "hier_F1@1" in old_table  # the row, with "-" in every column
