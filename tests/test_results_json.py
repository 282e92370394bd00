"""The results JSON writer and the predictions list, against the plain json module and a full
stable argsort (what they replaced for speed)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hyperbolic.evaluation.evaluate import _predictions
from hyperbolic.outputs import atomic_write_json, json_text

NESTED = {"a": [1, 2.5, None, True], "b": {}, "c": [], "d": {"é": "x\ny", "e": [[], [{}], {"f": 1e-300}]},
          "predictions": [{"k": [1, 2], "s": "t"}, {"k": [], "s": "u"}], 3: "int key"}


def test_without_one_line_keys_it_is_json_dumps_indent_2():
    assert json_text(NESTED) == json.dumps(NESTED, indent=2, ensure_ascii=False)


def test_one_line_items_only_under_the_named_keys(tmp_path):
    obj = {"test_info": {"n": 2}, "models": {"m": {"predictions": NESTED["predictions"], "per_class": [{"ap": 0.5}]}},
           "predictions": [], "d": NESTED["d"]}
    text = atomic_write_json(tmp_path / "r.json", obj, one_line_items=frozenset({"predictions"})).read_text()
    assert json.loads(text) == obj
    lines = text.splitlines()
    assert '        {"k": [1, 2], "s": "t"},' in lines and '        {"k": [], "s": "u"}' in lines
    # Everything else is laid out exactly as json.dumps(indent=2) lays it out.
    rest = {k: v for k, v in obj.items() if k != "models"}
    assert json_text(rest, one_line_items=frozenset({"predictions"})) == json.dumps(rest, indent=2, ensure_ascii=False)
    assert '      "per_class": [\n        {\n          "ap": 0.5\n        }\n      ]' in text


def test_nan_is_still_refused():
    with pytest.raises(ValueError):
        json_text({"predictions": [{"x": float("nan")}]}, one_line_items=frozenset({"predictions"}))


@pytest.mark.parametrize("levels", [2, 5, None])
def test_predictions_match_a_full_stable_sort(levels):
    rng = np.random.default_rng(levels or 0)
    n, c, k = 60, 9, 4
    s = (rng.standard_normal((n, c)) if levels is None else rng.integers(0, levels, (n, c))).astype(np.float32)
    clips = SimpleNamespace(metas=[SimpleNamespace(video_id=f"v{i}", file="f.parquet", row=i) for i in range(n)],
                            raw_labels=[["x"]] * n, label_indices=[[0]] * n)
    names = [f"class {j}" for j in range(c)]
    got = _predictions(s, clips, names, k)
    order = np.argsort(-s, axis=1, kind="stable")  # ties to the lower class index
    for i, p in enumerate(got):
        assert p["predicted_top1"] == names[order[i, 0]]
        assert [(q["rank"], q["classname"], q["similarity"]) for q in p["top_k_predictions"]] == [
            (r + 1, names[j], float(s[i, j])) for r, j in enumerate(order[i, :k])]
