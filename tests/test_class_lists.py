"""Class lists read from the data (``--class-labels from-data``) on ESC-50 / UrbanSound8K style folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import test_clap_modelscope as test_script
from data.audioset import SkipLog
from data.class_list import distinct_labels
from data.errors import DatasetError
from data.labels import LabelMatcher
from data.synthetic import write_parquet_shard
from hyperbolic.embedding.embeddings import PROMPT_NAME_RULE, embed_clips, embed_prompts
from tests.benchmark_folders import ESC_CATEGORIES
from tests.helpers import run_main


@pytest.mark.slow
def test_esc50_like_from_data(esc50, tiny_clap_dir, tiny_clap, tmp_path):
    folder, expected = esc50
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    code, err = run_main(test_script, [
        "--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--num-workers", "0",
        "--label-column", "category", "--class-labels", "from-data", "--top-k", "3", "--output-json", out,
        "--save-scores", npz])
    assert code == 0, err
    results = json.loads(out.read_text())
    names = sorted(ESC_CATEGORIES)
    assert results["test_info"]["class_names"] == names and results["test_info"]["class_labels"] == "from-data"
    assert results["model_info"]["prompt_label_rule"] == PROMPT_NAME_RULE
    saved = np.load(npz)
    assert saved["class_names"].tolist() == names  # names unchanged in every output
    assert {p["predicted_top1"] for p in results["predictions"]} <= set(names)
    # the prompts said "dog bark": recompute plain CLAP's scores from those prompts
    clips = embed_clips(tiny_clap, folder, matcher=LabelMatcher(names), skips=SkipLog(), label_column="category")
    prompts = embed_prompts(tiny_clap, [f"This is a sound of {n.replace('_', ' ')}." for n in names])
    assert np.allclose(saved["scores_clap_cosine"], (clips.audio @ prompts.T).numpy(), atol=1e-6)
    # metrics from the saved scores: acc@1 by hand, mAP with scikit-learn
    s, y = saved["scores_clap_cosine"], saved["targets"]
    truth = [names.index(c) for c in expected["categories"]]
    assert y.argmax(1).tolist() == truth and y.sum(1).tolist() == [1] * len(truth)
    top1 = [int(np.argsort(-row, kind="stable")[0]) for row in s]
    assert results["metrics"]["acc@1"] == pytest.approx(np.mean([t == p for t, p in zip(truth, top1)]))
    ap = [average_precision_score(y[:, k], s[:, k]) for k in range(len(names))]
    assert results["metrics"]["mAP"] == pytest.approx(np.mean(ap), abs=1e-9)


@pytest.mark.slow
def test_from_data_reads_the_rows_read_and_names_bad_columns(tmp_path, esc50):
    folder, expected = esc50
    assert distinct_labels(folder, label_column="category", limit=2) == sorted(expected["categories"][:2])
    with pytest.raises(DatasetError, match="no column 'class'.*--label-column"):
        distinct_labels(folder, label_column="class")
    urban = tmp_path / "urban"
    urban.mkdir()
    write_parquet_shard(urban / "fold1.parquet", [
        {"slice_file_name": "a.wav", "classID": 3, "class": "dog_bark", "audio": {"bytes": b"x", "path": "a"}},
        {"slice_file_name": "b.wav", "classID": 2, "class": "Dog_Bark", "audio": {"bytes": b"x", "path": "b"}},
        {"slice_file_name": "c.wav", "classID": 8, "class": "siren", "audio": {"bytes": b"x", "path": "c"}}])
    assert distinct_labels(urban, label_column="class") == ["dog_bark", "siren"]  # one class per name, any case
    with pytest.raises(DatasetError, match="UrbanSound8K: --label-column class, not classID"):
        distinct_labels(urban, label_column="classID")
