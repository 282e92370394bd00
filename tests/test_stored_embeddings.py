"""``--embeddings DIR`` and ``--export-embeddings DIR`` (hyperbolic.embedding.stored): the layout read
and written, every bad file's error or counted skip, abstract parents linked past, and the round
trip (train and evaluate from an export = from the parquet folder and its cache)."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data.synthetic import DEMO_CLASSES, demo_ontology
from hyperbolic.embedding.stored import (
    CLASSES_FILE,
    CLIPS_FILE,
    EmbeddingsError,
    read_class_names,
    read_embeddings,
    write_embeddings,
)
from hyperbolic.hierarchy.cones import Hierarchy
from hyperbolic.hierarchy.ontology import Ontology
from tests.helpers import run_main

D = 8


def _folder(tmp_path, clips=None, classes=None, name="emb"):
    """An --embeddings folder from column dicts (pyarrow infers the types unless given arrays)."""
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    if classes is None:
        classes = {"name": ["Dog", "Cat", "Bird"], "embedding": rng.normal(size=(3, D)).astype(np.float32).tolist()}
    if clips is None:
        clips = {"clip_id": ["a", "b", "c", "d"], "embedding": rng.normal(size=(4, D)).astype(np.float32).tolist(),
                 "labels": [["Dog"], ["Cat", "Dog"], ["Bird"], ["Cat"]]}
    pq.write_table(pa.table(classes), folder / CLASSES_FILE)
    pq.write_table(pa.table(clips), folder / CLIPS_FILE)
    return folder


def test_read_normalises_matches_labels_and_keeps_order(tmp_path):
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(4, D)).astype(np.float32)
    text = rng.normal(size=(3, D)).astype(np.float32)
    folder = _folder(tmp_path, clips={"clip_id": ["a", "b", "c", "d"], "embedding": audio.tolist(),
                                      "labels": [["dog"], ["Cat", "Dog"], ["Bird"], ["Cat"]]},
                     classes={"name": ["Dog", "Cat", "Bird"], "embedding": text.tolist()})
    s = read_embeddings(folder)
    assert s.class_names == ["Dog", "Cat", "Bird"] and s.dim == D and s.parent_names == []
    ref = audio.astype(np.float64) / np.linalg.norm(audio.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(s.clips.audio.numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.class_embeddings.numpy(), text / np.linalg.norm(text, axis=1, keepdims=True),
                               atol=1e-6)
    # Labels match by name ignoring case; the first label is the first one written.
    assert s.clips.label_indices == [[0], [0, 1], [2], [1]]
    assert s.clips.first_label == [0, 1, 2, 1]
    assert [m.video_id for m in s.clips.metas] == ["a", "b", "c", "d"]
    assert s.skips.total == 0 and s.rows_in_file == s.rows_read == 4


def test_unit_rows_are_kept_bit_for_bit(tmp_path):
    x = np.random.default_rng(2).normal(size=(4, D))
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    folder = _folder(tmp_path, clips={"clip_id": list("abcd"), "embedding": unit.tolist(),
                                      "labels": [["Dog"]] * 4})
    assert np.array_equal(read_embeddings(folder).clips.audio.numpy(), unit)


@pytest.mark.parametrize("row, reason", [
    (None, "missing_embedding"),
    ([1.0] * (D - 1), "wrong_dimension"),
    ([float("nan")] + [1.0] * (D - 1), "non_finite_embedding"),
    ([float("inf")] + [1.0] * (D - 1), "non_finite_embedding"),
    ([0.0] * D, "zero_embedding"),
])
def test_bad_clip_rows_are_skipped_and_counted(tmp_path, row, reason):
    good = [1.0] * D
    folder = _folder(tmp_path, clips={"clip_id": ["a", "b", "c"],
                                      "embedding": pa.array([good, row, good], pa.list_(pa.float32())),
                                      "labels": [["Dog"], ["Cat"], ["Bird"]]})
    s = read_embeddings(folder)
    assert [m.video_id for m in s.clips.metas] == ["a", "c"]
    assert s.skips.count(reason) == 1 and s.skips.total == 1
    assert s.skips.to_dict()["reasons"][reason]["examples"][0]["row"] == 1


def test_ids_unknown_labels_and_unlabelled_clips(tmp_path):
    folder = _folder(tmp_path, clips={"clip_id": ["a", "a", None, "d", "e"], "embedding": [[1.0] * D] * 5,
                                      "labels": [["Dog"], ["Cat"], ["Cat"], ["Unicorn"], None]})
    evaluation = read_embeddings(folder)
    assert evaluation.skips.count("duplicate_clip_id") == 1 and evaluation.skips.count("missing_clip_id") == 1
    # Evaluation keeps clips without a known label (they get predictions, no metric) ...
    assert [m.video_id for m in evaluation.clips.metas] == ["a", "d", "e"]
    assert evaluation.clips.label_indices == [[0], [], []]
    assert dict(evaluation.skips.unknown_labels) == {"Unicorn": 1}
    # ... training skips them, counted as for parquet folders.
    training = read_embeddings(folder, require_labels=True)
    assert [m.video_id for m in training.clips.metas] == ["a"] and training.skips.count("no_known_label") == 2


def test_limit_reads_the_first_rows(tmp_path):
    s = read_embeddings(_folder(tmp_path), limit=2)
    assert len(s.clips) == 2 and s.rows_read == 2 and s.rows_in_file == 4


@pytest.mark.parametrize("classes, message", [
    ({"name": ["Dog", "Cat"], "embedding": [[1.0] * D, [1.0] * (D + 1)]}, "row 1 ('Cat') has a 9-d embedding"),
    ({"name": ["Dog", "Cat"], "embedding": [[1.0] * D, [float("nan")] * D]}, "non-finite"),
    ({"name": ["Dog", "Cat"], "embedding": [[1.0] * D, [0.0] * D]}, "all-zero"),
    ({"name": ["Dog", "dog"], "embedding": [[1.0] * D] * 2}, "appears twice"),
    ({"name": ["Dog", ""], "embedding": [[1.0] * D] * 2}, "not a non-empty string"),
    ({"name": ["Dog"]}, "no column 'embedding'"),
    ({"name": ["Dog"], "embedding": ["one two"]}, "must be a list of float32"),
    ({"name": ["Dog"], "embedding": [[1.0] * D], "abstract": [True]}, "no class"),
    ({"name": ["Dog"], "embedding": [[1.0] * D], "abstract": ["no"]}, "column 'abstract' has type string"),
])
def test_bad_class_table_is_an_error_naming_the_file(tmp_path, classes, message):
    folder = _folder(tmp_path, classes=classes)
    with pytest.raises(EmbeddingsError, match=re.escape(message)) as err:
        read_embeddings(folder)
    assert CLASSES_FILE in str(err.value)


def test_missing_files_and_columns(tmp_path):
    with pytest.raises(EmbeddingsError, match="does not exist"):
        read_embeddings(tmp_path / "nowhere")
    folder = _folder(tmp_path, clips={"clip_id": ["a"], "embedding": [[1.0] * D]})
    with pytest.raises(EmbeddingsError, match="no column 'labels'"):
        read_embeddings(folder)
    (folder / CLIPS_FILE).write_text("not parquet")
    with pytest.raises(EmbeddingsError, match="cannot be read as parquet"):
        read_embeddings(folder)


def test_write_then_read_and_never_overwrite(tmp_path):
    rng = np.random.default_rng(3)
    audio, text, parents = rng.normal(size=(3, D)), rng.normal(size=(2, D)), rng.normal(size=(1, D))
    folder = write_embeddings(tmp_path / "out", clip_ids=["x", "y", "z"], audio=audio,
                              labels=[["B", "A"], [], ["A"]], class_names=["A", "B"], class_embeddings=text,
                              parent_names=["Group"], parent_embeddings=parents, source={"why": "test"})
    table = pq.read_table(folder / CLASSES_FILE)
    assert table.column("abstract").to_pylist() == [False, False, True]
    assert json.loads(table.schema.metadata[b"hyperbolic_clap"]) == {"why": "test"}
    s = read_embeddings(folder)
    assert read_class_names(folder) == s.class_names == ["A", "B"] and s.parent_names == ["Group"]
    assert s.prompt_names == ["A", "B", "Group"] and s.text_embeddings.shape == (3, D)
    assert s.clips.label_indices == [[0, 1], [], [0]] and s.clips.first_label == [1, None, 0]
    np.testing.assert_allclose(s.prompt_embeddings(["Group", "a"]).numpy(),
                               np.stack([parents[0] / np.linalg.norm(parents[0]), text[0] / np.linalg.norm(text[0])]),
                               atol=1e-6)
    with pytest.raises(EmbeddingsError, match="never overwritten"):
        write_embeddings(folder, clip_ids=[], audio=np.zeros((0, D)), labels=[], class_names=["A"],
                         class_embeddings=text[:1])


def _ontology(tmp_path):
    """Top (abstract) -> Mid (abstract) -> Dog, Cat; Top -> Bird."""
    records = [{"id": "/t", "name": "Top", "child_ids": ["/m", "/b"]},
               {"id": "/m", "name": "Mid", "child_ids": ["/d", "/c"]},
               {"id": "/d", "name": "Dog", "child_ids": []}, {"id": "/c", "name": "Cat", "child_ids": []},
               {"id": "/b", "name": "Bird", "child_ids": []}]
    for r in records:
        r.update(description="", restrictions=[])
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps(records))
    return path


def test_missing_abstract_parent_is_linked_past(tmp_path):
    ontology = Ontology.load(_ontology(tmp_path))
    full = Hierarchy.build(ontology, ["Dog", "Cat", "Bird"])
    assert full.extra_names == ("Top", "Mid") and full.linked_past == ()
    names = full.prompt_names
    assert {(names[p], names[c]) for p, c in full.parent_child.tolist()} == {
        ("Top", "Mid"), ("Mid", "Dog"), ("Mid", "Cat"), ("Top", "Bird")}
    h = Hierarchy.build(ontology, ["Dog", "Cat", "Bird"], available=lambda name: name != "Mid")
    assert h.extra_names == ("Top",) and h.linked_past == ("Mid",)
    names = h.prompt_names
    assert {(names[p], names[c]) for p, c in h.parent_child.tolist()} == {
        ("Top", "Dog"), ("Top", "Cat"), ("Top", "Bird")}
    assert h.ancestors == ((3,), (3,), (3,)) and h.depth == (2, 2, 1, 0)  # ontology depths are kept


def test_training_links_past_parents_missing_from_classes_parquet(tmp_path):
    rng = np.random.default_rng(4)
    folder = _folder(tmp_path, classes={"name": ["Dog", "Cat", "Bird", "Top"],
                                        "embedding": rng.normal(size=(4, D)).tolist(),
                                        "abstract": [False, False, False, True]},
                     clips={"clip_id": [f"c{i}" for i in range(12)], "embedding": rng.normal(size=(12, D)).tolist(),
                            "labels": [[n] for n in ["Dog", "Cat", "Bird"] * 4]})
    out = tmp_path / "run"
    code, err = run_main(train_script, ["--embeddings", folder, "--ontology", _ontology(tmp_path), "--epochs", "1",
                                        "--batch-size", "4", "--device", "cpu", "--output-dir", out])
    assert code == 0, err
    setup = json.loads((out / "setup.json").read_text())
    assert setup["hierarchy"]["abstract_parents_linked_past"] == 1 and setup["hierarchy"]["linked_past"] == ["Mid"]
    assert setup["hierarchy"]["extra_prompts"] == ["Top"] and setup["hierarchy"]["parent_child_pairs"] == 3
    assert setup["clap"] == {"path": None, "embed_dim": D} and setup["embeddings"] == str(folder)
    assert setup["data"]["clips"] == 12


@pytest.mark.parametrize("script, argv, message", [
    (train_script, ["--parquet-dir", "x", "--embeddings", "y"], "give one of them"),
    (eval_script, ["--parquet-dir", "x", "--embeddings", "y"], "give one of them"),
    (eval_script, [], "--parquet-dir is required"),
    (eval_script, ["--embeddings", "y", "--export-embeddings", "z"], "--export-embeddings writes"),
    (train_script, ["--embeddings", "y", "--text-column", "caption"], "caption runs"),
    (eval_script, ["--embeddings", "y", "--class-labels", "from-data"], "--class-labels is not used with --embeddings"),
])
def test_usage_errors(script, argv, message):
    code, err = run_main(script, argv)
    assert code == 2 and message in err


def test_bad_folder_exits_2_naming_it(tmp_path):
    folder = _folder(tmp_path, clips={"clip_id": ["a"], "embedding": [[1.0] * D]})
    code, err = run_main(eval_script, ["--embeddings", folder, "--device", "cpu", "--top-k", "2",
                                       "--output-json", tmp_path / "r.json"])
    assert code == 2 and "no column 'labels'" in err and str(folder) in err


# ------------------------------------------------------------------ the round trip, end to end

def _assert_close(a, b, path="hierarchy"):
    """The same nested JSON, floats within 1e-4 (the last-bits prompt differences above)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-4), path
    else:
        assert a == b, path


def _summary(path):
    results = json.loads(path.read_text())
    return results["summary"], results["models"]


@pytest.mark.slow
@pytest.mark.parametrize("with_ontology", [False, True])
def test_export_round_trip_gives_the_same_training_and_metrics(tmp_path, tiny_clap_dir, demo_train_dir, classes_file,
                                                               with_ontology):
    ontology = []
    if with_ontology:
        (tmp_path / "ontology.json").write_text(json.dumps(demo_ontology()))
        ontology = ["--ontology", tmp_path / "ontology.json"]
    clap = ["--checkpoint", tiny_clap_dir, "--device", "cpu", "--class-labels", classes_file, "--num-workers", "0"]
    export = tmp_path / "export"
    code, err = run_main(eval_script, ["--parquet-dir", demo_train_dir, *clap, "--num-samples", "all",
                                       "--export-embeddings", export, "--output-json", tmp_path / "e0.json", *ontology])
    assert code == 0, err
    stored = read_embeddings(export)
    assert stored.class_names == list(DEMO_CLASSES) and len(stored.clips) == 4 * len(DEMO_CLASSES)
    assert len(stored.parent_names) == (8 if with_ontology else 0)
    # Exporting twice into one folder is refused, before any CLAP work.
    code, err = run_main(eval_script, ["--parquet-dir", demo_train_dir, *clap, "--export-embeddings", export,
                                       "--output-json", tmp_path / "e00.json"])
    assert code == 2 and "never overwritten" in err

    recipe = ["--epochs", "3", "--batch-size", "8", "--c", "0.5", "--seed", "7", *ontology]
    assert run_main(train_script, ["--parquet-dir", demo_train_dir, *clap, "--output-dir", tmp_path / "r1",
                                   *recipe])[0] == 0  # from the folder, its embeddings from the cache
    assert run_main(train_script, ["--embeddings", export, "--device", "cpu", "--output-dir", tmp_path / "r2",
                                   *recipe])[0] == 0
    h1, h2 = (json.loads((tmp_path / r / "setup.json").read_text()) for r in ("r1", "r2"))
    assert [row["epoch"] for row in h1["history"]] == [row["epoch"] for row in h2["history"]] == [1, 2, 3]
    assert h1["data"]["clips"] == h2["data"]["clips"] and h1["summary"]["best_epoch"] == h2["summary"]["best_epoch"]
    for a, b in zip(h1["history"], h2["history"]):
        for key in ("train_loss", "val_loss", "val_mAP"):
            # Without --ontology the prompts are the very numbers exported, so training is
            # bit-identical. With it, the parquet run embeds class and parent prompts in one
            # call and the export in two; batches of other token lengths give CLAP outputs
            # that differ in the last float32 bits, hence the tolerance.
            assert a[key] == (b[key] if not with_ontology else pytest.approx(b[key], rel=1e-4, abs=1e-6))

    best = [sorted((tmp_path / r).glob("best_projection_epoch_*.pth"))[0] for r in ("r1", "r2")]
    common = ["--num-samples", "all", "--bootstrap", "20", *ontology]
    assert run_main(eval_script, ["--parquet-dir", demo_train_dir, *clap, "--projection-checkpoint", best[0],
                                  "--output-json", tmp_path / "e1.json", *common])[0] == 0
    assert run_main(eval_script, ["--embeddings", export, "--device", "cpu", "--projection-checkpoint", best[1],
                                  "--output-json", tmp_path / "e2.json", *common])[0] == 0
    (s1, m1), (s2, m2) = _summary(tmp_path / "e1.json"), _summary(tmp_path / "e2.json")
    # Columns are named after each run's folder (r1-hyperbolic, r2-hyperbolic): compare in order.
    assert [name.replace("r1", "r2") for name in s1] == list(s2)
    for model, other in zip(s1, s2):
        for key, value in s1[model].items():
            assert value == (s2[other][key] if not with_ontology else pytest.approx(s2[other][key], abs=1e-5))
    plain = "clap_cosine"
    assert m1[plain]["metrics"] == m2[plain]["metrics"] and m1[plain]["bootstrap"] == m2[plain]["bootstrap"]
    if with_ontology:
        trained = next(k for k in m1 if k != plain)
        _assert_close(m1[trained]["hierarchy"], m2[trained.replace("r1", "r2")]["hierarchy"])
        assert json.loads((tmp_path / "e2.json").read_text())["ontology"]["abstract_parents_linked_past"] == 0
    test_info = json.loads((tmp_path / "e2.json").read_text())["test_info"]
    assert test_info["embeddings"] == str(export) and test_info["clips_embedded"] == len(stored.clips)


def test_audioset_without_any_parent_prompt_keeps_the_class_to_class_pairs():
    """Every abstract parent missing: the cone pairs are each class to its nearest class
    ancestors, which ``Hierarchy.edges(range(C))`` computes from the full hierarchy."""
    from data.labels import load_class_labels
    from hyperbolic.config import DEFAULT_CLASS_LABELS, REPO_ROOT

    ontology = Ontology.load(REPO_ROOT / "CLAP" / "class_labels" / "audioset_ontology.json")
    names = load_class_labels(DEFAULT_CLASS_LABELS)
    full = Hierarchy.build(ontology, names)
    none = Hierarchy.build(ontology, names, available=lambda name: False)
    assert none.extra_names == () and len(none.linked_past) == len(full.extra_names) == 30
    assert torch.equal(none.parent_child, full.edges(range(len(names))))
    one = Hierarchy.build(ontology, names, available=lambda name: name != "Human voice")
    pairs = {(one.prompt_names[p], one.prompt_names[c]) for p, c in one.parent_child.tolist()}
    assert ("Human sounds", "Speech") in pairs and ("Human voice", "Speech") not in pairs
