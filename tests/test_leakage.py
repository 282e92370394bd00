"""The leakage guard: audio digests, identical audio kept on one side of the train/validation split
(``duplicate_audio_groups``), the checkpoint's record of its clips and ``overlap_with_training`` at
evaluation. Digests are checked against hashlib on the parquet bytes; splits against sets."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data.audioset import ClipMeta, audio_digests
from hyperbolic.report import build_report, to_markdown
from hyperbolic.training.data import Split, keep_duplicates_together


def test_keep_duplicates_together_moves_groups_to_one_side():
    split = Split(train=[0, 2, 4, 5], val=[1, 3, 6])
    same = keep_duplicates_together(split, ["a", "b", "c", "d", "e", "f", "g"])
    assert same[0] == split and same[1]["duplicate_audio_groups"] == 0
    digests = ["x", "x", "y", "z", "y", None, "x"]  # x: 0 (train), 1 (val), 6 (val); y: 2, 4 (train)
    new, counts = keep_duplicates_together(split, digests)
    assert set(new.train) == {0, 1, 2, 4, 5, 6} and new.val == [3]
    assert counts == {"duplicate_audio_groups": 2, "duplicate_audio_clips": 5, "duplicate_clips_moved": 2,
                      "clips_without_digest": 1}
    for d in ("x", "y"):
        sides = {i in new.train for i, g in enumerate(digests) if g == d}
        assert len(sides) == 1


def _tripled(src, dst):
    """The demo training folder with every clip written three times, the copies under new video ids."""
    dst.mkdir()
    for f in sorted(src.glob("*.parquet")):
        t = pq.read_table(f)
        ids = t.column("video_id").to_pylist()
        copies = [t.set_column(t.schema.get_field_index("video_id"), "video_id",
                               pa.array([f"{v}_copy{k}" for v in ids])) for k in (1, 2)]
        pq.write_table(pa.concat_tables([t, *copies]), dst / f.name)
    return dst


def test_audio_digests_match_hashlib(tmp_path, demo_train_dir):
    folder = _tripled(demo_train_dir, tmp_path / "tripled")
    name = sorted(p.name for p in folder.glob("*.parquet"))[0]
    table = pq.read_table(folder / name)
    n = table.num_rows // 3
    metas = [ClipMeta(name, r, "") for r in (0, n, 2 * n, 1)]
    got = audio_digests(folder, metas)
    first = hashlib.sha256(table.column("audio")[0].as_py()["bytes"]).hexdigest()[:32]
    assert got[:3] == [first] * 3 and got[3] != first
    assert audio_digests(folder, [ClipMeta("missing.parquet", 0, "")]) == [None]


@pytest.mark.slow
def test_duplicates_stay_on_one_side_and_evaluation_reports_the_overlap(tmp_path, tiny_clap_dir, demo_train_dir,
                                                                        demo_eval_dir):
    folder = _tripled(demo_train_dir, tmp_path / "tripled")
    out = tmp_path / "run"
    assert train_script.main(["--parquet-dir", str(folder), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
                              "--output-dir", str(out), "--epochs", "1", "--batch-size", "8", "--num-workers", "0"]) == 0
    setup = json.loads((out / "setup.json").read_text())
    clips = setup["data"]["clips"]
    assert setup["data"]["duplicate_audio_groups"] == clips // 3 and setup["data"]["duplicate_audio_clips"] == clips
    ckpt = torch.load(next(out.glob("best_projection_epoch_*.pth")), weights_only=False)
    train, val = (set(ckpt["training_clips"][p]["audio_digests"]) for p in ("train", "val"))
    assert train and val and not train & val  # no audio on both sides
    assert len(ckpt["training_clips"]["train"]["video_ids"]) + len(ckpt["training_clips"]["val"]["video_ids"]) == clips

    base = ["--checkpoint", str(tiny_clap_dir), "--device", "cpu", "--num-workers", "0", "--num-samples", "all",
            "--projection-checkpoint", str(out)]
    leak = tmp_path / "leak.json"
    assert eval_script.main(["--parquet-dir", str(demo_train_dir), *base, "--output-json", str(leak)]) == 0
    block = next(b for n, b in json.loads(leak.read_text())["models"].items() if n != "clap_cosine")
    rows = pq.ParquetFile(next(demo_train_dir.glob("*.parquet"))).metadata.num_rows
    assert block["overlap_with_training"]["fraction"] == 1.0 and block["overlap_with_training"]["clips"] >= rows
    assert block["overlap_with_training"]["by_audio"] == block["overlap_with_training"]["evaluated"]
    assert "train_overlap" in to_markdown(build_report([leak]))
    clean = tmp_path / "clean.json"
    assert eval_script.main(["--parquet-dir", str(demo_eval_dir), *base, "--output-json", str(clean)]) == 0
    block = next(b for n, b in json.loads(clean.read_text())["models"].items() if n != "clap_cosine")
    assert block["overlap_with_training"]["clips"] == 0


def test_a_checkpoint_trained_from_stored_embeddings_is_guarded_by_video_id():
    """A run from --embeddings records video ids without audio digests; evaluated clips read from
    parquet have digests. The id decides where either side has no digest: 2 of 3 clips overlap."""
    from types import SimpleNamespace

    from hyperbolic.evaluation.scoring import training_overlap
    model = SimpleNamespace(projector=object(), training_clips={
        "train": {"video_ids": ["a", "b"], "audio_digests": [None, None]},
        "val": {"video_ids": ["c"], "audio_digests": ["d-c"]}})
    got = training_overlap(model, ["a", "c", "z"], ["d-a", "other", "d-z"])
    # "a": trained without a digest, so its id decides; "c": both have digests and they differ.
    assert (got["clips"], got["by_audio"], got["by_video_id"], got["evaluated"]) == (1, 0, 2, 3)
    got = training_overlap(model, ["a", "c", "z"], ["d-a", "d-c", None])
    assert (got["clips"], got["by_audio"]) == (2, 1)
