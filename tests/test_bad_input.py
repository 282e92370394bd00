"""Bad input end to end: both entry scripts (``main([...])``) on the tiny offline CLAP.

One test group per row of the table "What the tools do with bad data" in docs/data.md. The big fixture is
one parquet folder that holds every kind of bad and awkward row among good ones; each script reads
it once (module scope) and the tests check the exit code, the messages and the JSON it wrote:
what was embedded, what was skipped (reason -> count, examples naming file, row and video_id), and
that the two add up to the rows in the readable files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data.synthetic import DEMO_CLASSES, encode_audio, synthesize, write_parquet_shard
from hyperbolic.model.projector import Projector
from tests.helpers import corrupt_audio_page, eval_argv, run_main, train_argv

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs

SR = 48000
MAX_SAMPLES = 480000  # 10 s at 48 kHz: the README's crop


# ------------------------------------------------------------------ the messy folder

def _tone(name: str, sr: int, seconds: float, seed: int, channels: int = 1) -> np.ndarray:
    """(channels, samples) float32 of class ``name``; channels differ (own random parameters)."""
    return np.stack([synthesize(name, np.random.default_rng([seed, ch]), sr, seconds) for ch in range(channels)])


def _wav(wave: np.ndarray, sr: int) -> dict:
    # FLOAT WAV round-trips the samples exactly, so the reference below sees what the reader sees.
    return {"bytes": encode_audio(wave.T, sr, "wav", subtype="FLOAT"), "path": None}


def _row(vid, audio, labels):
    return {"video_id": vid, "audio": audio, "human_labels": labels}


# The 31 s clip: a 10 s sine, then 21 s of noise. A crop that keeps the first 10 s sees only the sine.
_LONG = np.concatenate([_tone("Sine wave", SR, 10.0, 3), _tone("White noise", SR, 21.0, 4)], axis=1)

# video_id -> (channels, samples) source and its rate, for every row that must be processed.
SOURCES: dict[str, tuple[np.ndarray, int]] = {
    "a_ok": (_tone("Sine wave", SR, 2.0, 1), SR),
    "a_silent": (np.zeros((1, SR), np.float32), SR),
    "a_short": (_tone("Sine wave", SR, 0.05, 2), SR),  # a keyed beep could be off for 0.05 s
    "a_long": (_LONG, SR),
    "a_8k": (_tone("Dial tone", 8000, 2.0, 5), 8000),
    "a_22k": (_tone("Mains hum", 22050, 2.0, 6), 22050),
    "a_44k_stereo": (_tone("Chirp tone", 44100, 2.0, 7, channels=2), 44100),
    "a_96k": (_tone("Clicking", 96000, 2.0, 8), 96000),
    "a_6ch": (_tone("Buzz", SR, 2.0, 9, channels=6), SR),
    "a_unknown": (_tone("Pink noise", 16000, 1.0, 10), 16000),
    "a_nolabel": (_tone("White noise", 16000, 1.0, 11), 16000),
    "a_mixed": (_tone("Pink noise", 16000, 1.0, 12), 16000),
    "b_plain": (_tone("Sine wave", 16000, 1.0, 13), 16000),
    "b_commas": (_tone("Beep, bleep", 16000, 1.0, 14), 16000),
    "b_literal": (_tone("Buzz", 16000, 1.0, 15), 16000),
    "b_unknown": (_tone("Silence", 16000, 1.0, 16), 16000),
    "c_96k_array": (_tone("Mains hum", 96000, 1.0, 17), 96000),
    "c_16k_array": (_tone("White noise", 16000, 1.0, 18), 16000),
    "f_ok0": (_tone("Sine wave", 16000, 0.5, 19), 16000),
    "f_ok1": (_tone("Sine wave", 16000, 0.5, 20), 16000),
}
NAN_WAV = {"bytes": encode_audio(np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, "wav", subtype="FLOAT"),
           "path": None}
INF_WAV = {"bytes": encode_audio(np.array([0.1, np.inf, 0.2] * 100, np.float32), 16000, "wav", subtype="FLOAT"),
           "path": None}

# (file, row, video_id): what each script must do with the row.
PROCESSED = [
    ("a_lists.parquet", r, v) for r, v in enumerate(
        ["a_ok", "a_silent", "a_short", "a_long", "a_8k", "a_22k", "a_44k_stereo", "a_96k", "a_6ch"])
] + [
    ("a_lists.parquet", 14, "a_unknown"), ("a_lists.parquet", 15, "a_nolabel"), ("a_lists.parquet", 16, "a_mixed"),
    ("b_strings.parquet", 0, "b_plain"), ("b_strings.parquet", 1, "b_commas"), ("b_strings.parquet", 2, "b_literal"),
    ("b_strings.parquet", 3, "b_unknown"),
    ("c_arrays.parquet", 0, "c_96k_array"), ("c_arrays.parquet", 3, "c_16k_array"),
    ("f_badpage.parquet", 0, "f_ok0"), ("f_badpage.parquet", 1, "f_ok1"),
]
NO_KNOWN_LABEL = [("a_lists.parquet", 14, "a_unknown"), ("a_lists.parquet", 15, "a_nolabel"),
                  ("b_strings.parquet", 3, "b_unknown")]
BAD_AUDIO = {
    "decode_error": [("a_lists.parquet", 9, "a_corrupt")],
    "empty_audio": [("a_lists.parquet", 10, "a_empty_bytes"), ("a_lists.parquet", 11, "a_zero_samples"),
                    ("c_arrays.parquet", 2, "c_empty_array")],
    "non_finite": [("a_lists.parquet", 12, "a_nan"), ("a_lists.parquet", 13, "a_inf"),
                   ("c_arrays.parquet", 1, "c_inf_array")],
}
UNREADABLE = ["d_notes.parquet", "e_torn.parquet", "f_badpage.parquet"]
ROWS_IN_READABLE_PART = 17 + 4 + 4 + 2  # f_badpage: its first row group (2 rows) is readable
LABELS = {  # video_id -> known labels, as matched (class-list order)
    "a_ok": ["Sine wave"], "a_silent": ["Silence"], "a_short": ["Sine wave"], "a_long": ["Sine wave"],
    "a_8k": ["Dial tone"], "a_22k": ["Mains hum"], "a_44k_stereo": ["Chirp tone"], "a_96k": ["Clicking"],
    "a_6ch": ["Buzz"], "a_unknown": [], "a_nolabel": [], "a_mixed": ["Pink noise"],
    "b_plain": ["Sine wave"], "b_commas": ["Beep, bleep"], "b_literal": ["Dial tone", "Buzz"], "b_unknown": [],
    "c_96k_array": ["Mains hum"], "c_16k_array": ["White noise"], "f_ok0": ["Sine wave"], "f_ok1": ["Sine wave"],
}
UNKNOWN_LABELS = [{"label": "Not a class", "count": 4}, {"label": "Also unknown", "count": 1}]


def write_messy_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = {vid: _wav(*SOURCES[vid]) for vid in SOURCES if not vid.startswith("c_")}
    write_parquet_shard(folder / "a_lists.parquet", [
        _row("a_ok", w["a_ok"], ["Sine wave"]),
        _row("a_silent", w["a_silent"], ["Silence"]),
        _row("a_short", w["a_short"], ["Sine wave"]),
        _row("a_long", w["a_long"], ["Sine wave"]),
        _row("a_8k", w["a_8k"], ["Dial tone"]),
        _row("a_22k", w["a_22k"], ["Mains hum"]),
        _row("a_44k_stereo", w["a_44k_stereo"], ["Chirp tone"]),
        _row("a_96k", w["a_96k"], ["Clicking"]),
        _row("a_6ch", w["a_6ch"], ["Buzz"]),
        _row("a_corrupt", {"bytes": b"RIFF\x00garbage" * 40, "path": None}, ["Sine wave"]),
        _row("a_empty_bytes", {"bytes": b"", "path": None}, ["Sine wave"]),
        _row("a_zero_samples", {"bytes": encode_audio(np.zeros(0, np.float32), 16000, "wav"), "path": None},
             ["Sine wave"]),
        _row("a_nan", NAN_WAV, ["Sine wave"]),
        _row("a_inf", INF_WAV, ["Pink noise"]),
        _row("a_unknown", w["a_unknown"], ["Not a class"]),
        _row("a_nolabel", w["a_nolabel"], []),
        _row("a_mixed", w["a_mixed"], ["Pink noise", "Not a class", "Also unknown"]),
    ])
    write_parquet_shard(folder / "b_strings.parquet", [  # labels as strings in this shard
        _row("b_plain", w["b_plain"], "Sine wave"),
        _row("b_commas", w["b_commas"], "Beep, bleep, Not a class"),
        _row("b_literal", w["b_literal"], '["Buzz", "Dial tone"]'),
        _row("b_unknown", w["b_unknown"], "Not a class"),
    ])

    def array_cell(vid):
        wave, sr = SOURCES[vid]
        return {"array": wave[0], "sampling_rate": sr}

    write_parquet_shard(folder / "c_arrays.parquet", [
        _row("c_96k_array", array_cell("c_96k_array"), ["Mains hum"]),
        _row("c_inf_array", {"array": np.array([0.0, np.inf, 0.0]), "sampling_rate": 16000}, ["Buzz"]),
        _row("c_empty_array", {"array": np.zeros(0), "sampling_rate": 16000}, ["Buzz"]),
        _row("c_16k_array", array_cell("c_16k_array"), ["White noise"]),
    ])
    (folder / "d_notes.parquet").write_text("my notes, not a parquet file\n")
    whole = (folder / "b_strings.parquet").read_bytes()
    (folder / "e_torn.parquet").write_bytes(whole[:len(whole) // 2])  # a copy cut short: no footer
    filler = [_row(f"f_lost{i}", w["f_ok0"], ["Sine wave"]) for i in range(2)]
    write_parquet_shard(folder / "f_badpage.parquet", [
        _row("f_ok0", w["f_ok0"], ["Sine wave"]), _row("f_ok1", w["f_ok1"], ["Sine wave"]), *filler,
    ], row_group_size=2)
    corrupt_audio_page(folder / "f_badpage.parquet")
    (folder / "zz_readme.txt").write_text("not .parquet: ignored, not counted")
    return folder


# ------------------------------------------------------------------ running the scripts

@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return write_messy_folder(tmp_path_factory.mktemp("messy"))


def _eval_argv(folder, clap_dir, classes, out_json, *extra):
    return eval_argv(folder, clap_dir, out_json, *extra, class_labels=classes, top_k=3, num_samples=1000)


def _train_argv(folder, clap_dir, classes, out_dir, *extra):
    return train_argv(folder, clap_dir, out_dir, *extra, batch_size=4, class_labels=classes, seed=5)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, messy, tiny_clap_dir, classes_file):
    out = tmp_path_factory.mktemp("eval")
    code, err = run_main(eval_script, _eval_argv(messy, tiny_clap_dir, classes_file, out / "results.json",
                                                 "--save-scores", out / "scores.npz"))
    assert code == 0, err
    return json.loads((out / "results.json").read_text()), np.load(out / "scores.npz"), err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, messy, tiny_clap_dir, classes_file):
    out = tmp_path_factory.mktemp("train") / "run"
    code, err = run_main(train_script, _train_argv(messy, tiny_clap_dir, classes_file, out))
    assert code == 0, err
    return json.loads((out / "setup.json").read_text()), out, err


def _triples(examples):
    return {(e["file"], e["row"], e["video_id"]) for e in examples}


# ------------------------------------------------------------------ --parquet-dir itself

def _folder_case(tmp_path, case):
    if case == "missing":
        return tmp_path / "absent", ["does not exist"]
    folder = tmp_path / case
    folder.mkdir()
    if case == "no_parquet_file":
        (folder / "clips.parq").write_bytes(b"x")
        (folder / "notes.txt").write_text("x")
        (folder / "nested").mkdir()
        (folder / "nested" / "part.parquet").write_bytes(b"x")
        return folder, ["holds no .parquet file", "one level down", "nested"]
    if case == "a_file":
        path = tmp_path / "one.parquet"
        path.write_bytes(b"x")
        return path, ["not a folder"]
    return folder, ["holds no .parquet file"]  # empty


@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("case", ["missing", "empty", "no_parquet_file", "a_file"])
def test_parquet_dir_that_is_not_a_dataset_exits_2(tmp_path, tiny_clap_dir, classes_file, script, case):
    folder, expected = _folder_case(tmp_path, case)
    if script == "train":
        code, err = run_main(train_script, _train_argv(folder, tiny_clap_dir, classes_file, tmp_path / "out"))
        assert not list((tmp_path / "out").glob("*")), "a failed run leaves no files"
    else:
        code, err = run_main(eval_script, _eval_argv(folder, tiny_clap_dir, classes_file, tmp_path / "r.json"))
        assert not (tmp_path / "r.json").exists()
    assert code == 2
    assert str(folder) in err
    for text in expected:
        assert text in err


@pytest.mark.parametrize("script", ["train", "eval"])
def test_folder_with_only_unreadable_files_exits_2(tmp_path, tiny_clap_dir, classes_file, script):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "notes.parquet").write_text("not parquet")
    (folder / "torn.parquet").write_bytes(b"PAR1" + b"\x00" * 100)
    if script == "train":
        code, err = run_main(train_script, _train_argv(folder, tiny_clap_dir, classes_file, tmp_path / "out"))
        assert "only 0 usable clips" in err
    else:
        code, err = run_main(eval_script, _eval_argv(folder, tiny_clap_dir, classes_file, tmp_path / "r.json"))
        assert "no clip" in err and not (tmp_path / "r.json").exists()
    assert code == 2
    assert "notes.parquet" in err and "torn.parquet" in err and "unreadable_file" in err


# ------------------------------------------------------------------ unreadable files among good ones

@pytest.mark.parametrize("script", ["train", "eval"])
def test_unreadable_files_are_skipped_with_a_warning_and_counted(evaluated, trained, script):
    results, _, err = evaluated if script == "eval" else trained
    skipped = results["skipped"] if script == "eval" else results["data"]["skipped"]
    unreadable = skipped["reasons"]["unreadable_file"]
    assert unreadable["count"] == len(UNREADABLE)
    assert sorted(e["file"] for e in unreadable["examples"]) == UNREADABLE
    assert all(e["row"] is None for e in unreadable["examples"])
    lost = next(e for e in unreadable["examples"] if e["file"] == "f_badpage.parquet")
    assert "2 later rows" in lost["detail"]  # the rows a torn file loses are said, not hidden
    for name in UNREADABLE:
        assert name in err and "WARNING" in err
    assert "zz_readme.txt" not in json.dumps(results)


# ------------------------------------------------------------------ missing columns

def _one_row(folder: Path, name: str, drop: str | None = None, **extra) -> None:
    row = _row("v0", _wav(*SOURCES["b_plain"]), ["Sine wave"])
    if drop:
        del row[drop]
    row.update(extra)
    write_parquet_shard(folder / name, [row])


@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("missing, flag", [("audio", []), ("human_labels", []),
                                           ("my_labels", ["--label-column", "my_labels"])])
def test_missing_column_names_the_file_and_the_column(tmp_path, tiny_clap_dir, classes_file, script, missing, flag):
    folder = tmp_path / "data"
    folder.mkdir()
    _one_row(folder, "a_good.parquet", my_labels="Sine wave")
    _one_row(folder, "b_without.parquet", drop=None if missing == "my_labels" else missing)  # the second file
    if script == "train":
        code, err = run_main(train_script, [*_train_argv(folder, tiny_clap_dir, classes_file, tmp_path / "o"), *flag])
    else:
        code, err = run_main(eval_script, [*_eval_argv(folder, tiny_clap_dir, classes_file, tmp_path / "r.json"),
                                           *flag])
        assert not (tmp_path / "r.json").exists()
    assert code == 2
    assert str(folder / "b_without.parquet") in err
    assert f"no column {missing!r}" in err


@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("column, value, expected", [
    ("human_labels", 7, "label cell has type int"),
    ("audio", "clip.wav", "audio cell has type str"),
])
def test_column_of_the_wrong_type_names_file_row_and_column(tmp_path, tiny_clap_dir, classes_file, script,
                                                            column, value, expected):
    folder = tmp_path / "data"
    folder.mkdir()
    _one_row(folder, "a_good.parquet")
    rows = [_row("w0", _wav(*SOURCES["b_plain"]), ["Sine wave"]), _row("w1", _wav(*SOURCES["b_plain"]), ["Sine wave"])]
    rows = [{**r, column: value} for r in rows]
    write_parquet_shard(folder / "b_wrong.parquet", rows)
    if script == "train":
        code, err = run_main(train_script, _train_argv(folder, tiny_clap_dir, classes_file, tmp_path / "o"))
    else:
        code, err = run_main(eval_script, _eval_argv(folder, tiny_clap_dir, classes_file, tmp_path / "r.json"))
        assert not (tmp_path / "r.json").exists()
    assert code == 2
    assert f"parquet file {folder / 'b_wrong.parquet'}, row 0, column {column!r}" in err and expected in err


# ------------------------------------------------------------------ bad audio rows

@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("reason", sorted(BAD_AUDIO))
def test_bad_audio_rows_are_skipped_and_counted_by_reason(evaluated, trained, script, reason):
    results = evaluated[0] if script == "eval" else trained[0]
    skipped = results["skipped"] if script == "eval" else results["data"]["skipped"]
    block = skipped["reasons"][reason]
    assert block["count"] == len(BAD_AUDIO[reason])
    assert _triples(block["examples"]) == set(BAD_AUDIO[reason])
    assert all(e["detail"] for e in block["examples"])


@pytest.mark.parametrize("script", ["train", "eval"])
def test_skipped_block_is_exact_and_rows_add_up(evaluated, trained, script):
    """Nothing is dropped uncounted: rows read = rows embedded + rows skipped (per reason)."""
    expected = {r: len(rows) for r, rows in BAD_AUDIO.items()} | {"unreadable_file": len(UNREADABLE)}
    if script == "eval":
        results = evaluated[0]
        skipped, embedded = results["skipped"], results["test_info"]["clips_embedded"]
        assert results["test_info"]["clips_read"] == ROWS_IN_READABLE_PART
        assert embedded == len(PROCESSED) == len(results["predictions"])
    else:
        results = trained[0]
        skipped, embedded = results["data"]["skipped"], results["data"]["clips"]
        expected["no_known_label"] = len(NO_KNOWN_LABEL)
        assert embedded == len(PROCESSED) - len(NO_KNOWN_LABEL)
    assert {r: b["count"] for r, b in skipped["reasons"].items()} == expected
    assert skipped["total"] == sum(expected.values())
    rows_skipped = skipped["total"] - len(UNREADABLE)
    assert embedded + rows_skipped == ROWS_IN_READABLE_PART


# ------------------------------------------------------------------ awkward audio that must be processed

def test_every_processed_clip_is_in_the_results_in_reading_order(evaluated):
    results, scores, _ = evaluated
    got = [(p["file"], p["row"], p["video_id"]) for p in results["predictions"]]
    assert got == PROCESSED
    assert [(f, int(r), v) for f, r, v in zip(scores["clip_file"], scores["clip_row"], scores["clip_video_id"])] \
        == PROCESSED


def _reference_waveform(vid: str) -> np.ndarray:
    """The README's rule, written out independently: channel mean, soxr HQ to 48 kHz, first 10 s."""
    wave, sr = SOURCES[vid]
    x = wave.astype(np.float64).mean(axis=0).astype(np.float32)
    if sr != SR:
        x = soxr.resample(x, sr, SR, quality="HQ")
    return np.ascontiguousarray(x[:MAX_SAMPLES], dtype=np.float32)


@pytest.fixture(scope="module")
def reference_scores(tiny_clap, evaluated):
    """Cosine scores of each processed clip embedded alone from its source, and of silence."""
    from hyperbolic.embedding.embeddings import embed_prompts, prompts_for
    results = evaluated[0]
    template = results["model_info"]["prompt_template"]
    text = embed_prompts(tiny_clap, prompts_for(list(DEMO_CLASSES), template))
    audio = torch.cat([tiny_clap.embed_audio([_reference_waveform(v)]) for _, _, v in PROCESSED])
    zero = tiny_clap.embed_audio([np.zeros(MAX_SAMPLES, np.float32)])
    first_10s = tiny_clap.embed_audio([_LONG.mean(axis=0)[:MAX_SAMPLES]])
    last_10s = tiny_clap.embed_audio([_LONG.mean(axis=0)[-MAX_SAMPLES:]])
    return {"clips": (audio @ text.T).numpy(), "zero": (zero @ text.T).numpy()[0],
            "first_10s": (first_10s @ text.T).numpy()[0], "last_10s": (last_10s @ text.T).numpy()[0]}


@pytest.mark.parametrize("vid", ["a_ok", "a_silent", "a_short", "a_long", "a_8k", "a_22k", "a_44k_stereo",
                                 "a_96k", "a_6ch", "c_96k_array", "c_16k_array"])
def test_awkward_audio_is_processed_as_the_readme_says(evaluated, reference_scores, vid):
    """Silent, 0.05 s, 31 s, 8-96 kHz, stereo and 6 channels: each embeds as its downmixed,
    resampled, first-10-s waveform does on its own (pad / deterministic crop / resample / downmix)."""
    _, scores, _ = evaluated
    i = [v for _, _, v in PROCESSED].index(vid)
    got = scores["scores_clap_cosine"][i]
    np.testing.assert_allclose(got, reference_scores["clips"][i], atol=1e-4, rtol=0)
    if vid == "a_long":  # the crop keeps the start, every run
        np.testing.assert_allclose(got, reference_scores["first_10s"], atol=1e-4, rtol=0)
        assert np.abs(got - reference_scores["last_10s"]).max() > 1e-2


def test_no_clip_is_replaced_by_a_zero_vector(evaluated, reference_scores):
    """A zero embedding scores exactly 0 against every prompt; an all-zero waveform has its own
    embedding. Only the silent clip may score like the all-zero waveform."""
    _, scores, _ = evaluated
    s = scores["scores_clap_cosine"]
    assert (np.abs(s).max(axis=1) > 1e-3).all()
    like_zero = np.abs(s - reference_scores["zero"]).max(axis=1) < 1e-4
    assert [v for (_, _, v), z in zip(PROCESSED, like_zero) if z] == ["a_silent"]
    # and no two clips got the same embedding (each clip is different audio)
    gaps = np.abs(s[:, None, :] - s[None, :, :]).max(axis=2) + np.eye(len(s))
    assert gaps.min() > 1e-4


def test_warm_rerun_gives_the_same_numbers(tmp_path, evaluated, messy, tiny_clap_dir, classes_file):
    """The second read comes from the embedding cache, skipped rows included: same clips, same
    scores bit for bit, same skip counts (a cached skip never turns into a zero embedding)."""
    results, scores, _ = evaluated
    code, err = run_main(eval_script, _eval_argv(messy, tiny_clap_dir, classes_file, tmp_path / "again.json",
                                                 "--save-scores", tmp_path / "again.npz"))
    assert code == 0, err
    assert f"audio embeddings: {len(PROCESSED)} reused, 0 computed" in err
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["skipped"]["total"] == results["skipped"]["total"]
    assert {r: b["count"] for r, b in again["skipped"]["reasons"].items()} == \
        {r: b["count"] for r, b in results["skipped"]["reasons"].items()}
    assert np.array_equal(np.load(tmp_path / "again.npz")["scores_clap_cosine"], scores["scores_clap_cosine"])


def test_training_uses_exactly_the_usable_clips(trained):
    """The train/val split stored in the checkpoints holds every usable clip once, and no skipped row."""
    setup, out, _ = trained
    ckpt = torch.load(out / "projection_epoch_2.pth", map_location="cpu", weights_only=False)
    ids = ckpt["split"]["train"] + ckpt["split"]["val"]
    usable = [t for t in PROCESSED if t not in NO_KNOWN_LABEL]
    assert sorted(ids) == sorted(f"{f}:{r}:{v}" for f, r, v in usable)
    assert setup["data"]["train_clips"] + setup["data"]["val_clips"] == len(usable)


# ------------------------------------------------------------------ labels

def test_string_and_list_label_shards_are_both_read(evaluated):
    results = evaluated[0]
    targets = {p["video_id"]: p["ground_truth_human_labels"] for p in results["predictions"]}
    assert targets["a_mixed"] == ["Pink noise", "Not a class", "Also unknown"]  # list shard, as written
    assert targets["b_commas"] == ["Beep, bleep", "Not a class"]  # string shard: comma-split, names kept whole
    assert targets["b_literal"] == ["Buzz", "Dial tone"]  # string holding a list literal
    _, scores, _ = evaluated
    y = scores["targets"]
    for i, (_, _, vid) in enumerate(PROCESSED):
        assert [DEMO_CLASSES[k] for k in np.flatnonzero(y[i])] == sorted(LABELS[vid], key=DEMO_CLASSES.index)


@pytest.mark.parametrize("script", ["train", "eval"])
def test_unknown_labels_are_counted_most_frequent_first(evaluated, trained, script):
    results = evaluated[0] if script == "eval" else trained[0]["data"]
    assert results["unknown_labels"] == UNKNOWN_LABELS


def test_clips_without_a_known_label_are_scored_but_left_out_of_metrics(evaluated):
    results, scores, _ = evaluated
    excluded = results["excluded_from_metrics"]
    assert excluded["count"] == len(NO_KNOWN_LABEL)
    assert _triples(excluded["examples"]) == set(NO_KNOWN_LABEL)
    labelled = len(PROCESSED) - len(NO_KNOWN_LABEL)
    assert results["test_info"]["clips_with_known_label"] == labelled
    assert results["metrics"]["valid_samples"] == labelled
    assert scores["labelled"].sum() == labelled
    predicted = {p["video_id"] for p in results["predictions"]}
    assert {v for _, _, v in NO_KNOWN_LABEL} <= predicted


def test_no_known_label_at_all_gives_null_metrics_not_zeros(tmp_path, small, tiny_clap_dir):
    classes = tmp_path / "other_classes.txt"
    classes.write_text("Speech\nDog\nMusic\n")
    out = tmp_path / "r.json"
    code, err = run_main(eval_script, _eval_argv(small, tiny_clap_dir, classes, out))
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["metrics"] is None and results["per_class"] == []
    assert results["excluded_from_metrics"]["count"] == len(results["predictions"]) == 4
    assert "no clip has a label among the 3 classes" in err
    code, err = run_main(train_script, _train_argv(small, tiny_clap_dir, classes, tmp_path / "run"))
    assert code == 2 and "only 0 usable clips" in err and "no_known_label" in err


def test_training_counts_clips_without_a_known_label(trained):
    block = trained[0]["data"]["skipped"]["reasons"]["no_known_label"]
    assert block["count"] == len(NO_KNOWN_LABEL)
    assert _triples(block["examples"]) == set(NO_KNOWN_LABEL)


# ------------------------------------------------------------------ invalid flags

TRAIN_FLAG_CASES = [
    (["--c", "0"], "--c must be > 0"), (["--c", "-1"], "--c must be > 0"), (["--c", "nan"], "--c must be > 0"),
    (["--c", "1", "0"], "--c must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"), (["--temperature", "-0.5"], "--temperature must be > 0"),
    (["--train-ratio", "0"], "--train-ratio"), (["--train-ratio", "1"], "--train-ratio"),
    (["--train-ratio", "1.5"], "--train-ratio"), (["--train-ratio", "-0.2"], "--train-ratio"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-3"], "--batch-size"),
    (["--epochs", "0"], "--epochs"), (["--learning-rate", "0"], "--learning-rate"),
    (["--num-samples", "-1"], "--num-samples"), (["--embed-batch-size", "0"], "--embed-batch-size"),
    (["--c", "inf"], "--c must be"), (["--temperature", "inf"], "--temperature must be"),
    (["--learning-rate", "inf"], "--learning-rate must be"), (["--learning-rate", "nan"], "--learning-rate must be"),
]


@pytest.mark.parametrize("argv, message", TRAIN_FLAG_CASES)
def test_invalid_train_flags_exit_2_naming_the_flag(tmp_path, argv, message):
    code, err = run_main(train_script, ["--parquet-dir", tmp_path / "absent", "--output-dir", tmp_path / "o",
                                        "--device", "cpu", *argv])
    assert code == 2
    assert message in err


@pytest.mark.parametrize("argv, message", [
    (["--c", "0"], "--c must be > 0"), (["--c", "-1"], "--c must be > 0"),
    (["--c", "inf"], "--c must be > 0"), (["--c", "nan"], "--c must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"), (["--temperature", "-2"], "--temperature must be > 0"),
    (["--temperature", "inf"], "--temperature must be > 0"),
    (["--top-k", "0"], "--top-k must be >= 1"), (["--top-k", "-1"], "--top-k must be >= 1"),
    (["--top-k", "11"], "--top-k must be <= the number of classes"),  # the class list has 10
    (["--num-samples", "-1"], "--num-samples"), (["--set-k", "0"], "--set-k"),
    (["--embed-batch-size", "0"], "--embed-batch-size"), (["--bootstrap", "-1"], "--bootstrap"),
])
def test_invalid_eval_flags_exit_2_naming_the_flag(tmp_path, messy, tiny_clap_dir, classes_file, argv, message):
    out = tmp_path / "r.json"
    code, err = run_main(eval_script, [*_eval_argv(messy, tiny_clap_dir, classes_file, out), *argv])
    assert code == 2
    assert message in err
    assert not out.exists()


# ------------------------------------------------------------------ projection checkpoints

def _legacy_checkpoint(dim: int) -> dict:
    """A checkpoint as the earlier public scripts wrote it."""
    torch.manual_seed(0)
    return {"epoch": 1, "projection_state_dict": Projector(dim).state_dict(), "optimizer_state_dict": {},
            "train_loss": 1.0, "val_loss": 1.0, "c": 1.0, "temperature": 1.0, "embed_dim": dim}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    good = d / "good.pth"
    torch.save(_legacy_checkpoint(32), good)
    (d / "notes.pth").write_text("not a checkpoint")
    data = good.read_bytes()
    (d / "torn.pth").write_bytes(data[:len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, d / "other_dict.pth")
    torch.save(_legacy_checkpoint(64), d / "dim64.pth")
    return {"good": good, "missing": d / "absent.pth", "notes": d / "notes.pth", "torn": d / "torn.pth",
            "other_dict": d / "other_dict.pth", "dim64": d / "dim64.pth"}


@pytest.mark.parametrize("use_hyperbolic", [True, False])
@pytest.mark.parametrize("case, expected", [
    ("missing", ["does not exist"]),
    ("notes", ["is not a readable torch checkpoint"]),
    ("torn", ["is not a readable torch checkpoint"]),
    ("other_dict", ["has no 'projection_state_dict'"]),
    ("dim64", ["64-d", "32-d"]),
])
def test_bad_projection_checkpoint_exits_2_naming_the_file(tmp_path, messy, tiny_clap_dir, classes_file,
                                                           checkpoints, case, expected, use_hyperbolic):
    out = tmp_path / "r.json"
    extra = ["--projection-checkpoint", checkpoints["good"], checkpoints[case]]
    if use_hyperbolic:
        extra = ["--use-hyperbolic", "--projection-checkpoint", checkpoints[case]]
    code, err = run_main(eval_script, [*_eval_argv(messy, tiny_clap_dir, classes_file, out), *extra])
    assert code == 2
    assert str(checkpoints[case]) in err
    for text in expected:
        assert text in err
    assert not out.exists() and not list(tmp_path.glob("*.json"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Four good clips, one per class, in one shard."""
    folder = tmp_path_factory.mktemp("small")
    rows = [_row(f"s{i}", _wav(_tone(name, 16000, 0.5, 100 + i), 16000), [name])
            for i, name in enumerate(["Sine wave", "White noise", "Buzz", "Mains hum"])]
    write_parquet_shard(folder / "s.parquet", rows)
    return folder


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("notes", "is not a readable checkpoint"),
    ("torn", "is not a readable checkpoint"),
    ("good", "is not a resumable checkpoint"),  # the earlier scripts' format: no optimizer schedule, no split
])
def test_train_resume_from_a_bad_checkpoint_exits_2_naming_the_file(tmp_path, small, tiny_clap_dir, classes_file,
                                                                    checkpoints, case, expected):
    path = tmp_path / "run" / "projection_epoch_1.pth"
    path.parent.mkdir()
    if case != "missing":
        path.write_bytes(checkpoints[case].read_bytes())
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, path.parent),
                                        "--resume", path])
    assert code == 2
    assert f"--resume {path} {expected}" in err
    assert sorted(p.name for p in path.parent.iterdir()) == ([] if case == "missing" else [path.name])


def test_train_resume_with_another_embedding_size_exits_2(tmp_path, small, tiny_clap_dir, classes_file):
    from hyperbolic.embedding.tiny_clap import build_tiny_clap
    clap64 = build_tiny_clap(tmp_path / "clap64", seed=0, projection_dim=64)
    run = tmp_path / "run"
    code, err = run_main(train_script, [*_train_argv(small, clap64, classes_file, run), "--epochs", "1"])
    assert code == 0, err
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, run), "--resume", run])
    assert code == 2
    assert str(run / "projection_epoch_1.pth") in err and "64-d" in err and "32-d" in err
    assert not (run / "projection_epoch_2.pth").exists()


# ------------------------------------------------------------------ tiny datasets

def test_fewer_clips_than_a_batch_trains(tmp_path, small, tiny_clap_dir, classes_file):
    out = tmp_path / "run"
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, out),
                                        "--batch-size", "16", "--train-ratio", "0.5", "--epochs", "3"])
    assert code == 0, err
    history = json.loads((out / "setup.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in history)
    assert all(np.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in history)


@pytest.mark.parametrize("ratio", ["0.9", "0.1"])
def test_split_without_a_validation_or_training_clip_exits_2(tmp_path, small, tiny_clap_dir, classes_file, ratio):
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, tmp_path / "o"),
                                        "--train-ratio", ratio])
    assert code == 2
    assert "--train-ratio" in err and "4 usable clips" in err
    assert not list((tmp_path / "o").glob("*.pth"))


def test_single_validation_clip_never_gives_a_fake_zero_loss(tmp_path, small, tiny_clap_dir, classes_file):
    """One validation clip: an in-batch loss over the classes present would be exactly 0 (every class
    positive) every epoch, and --select-metric val_loss would keep epoch 1. The other classes must
    count as negatives, so the loss is > 0 and moves as the projector trains."""
    out = tmp_path / "run"
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, out),
                                        "--train-ratio", "0.75", "--epochs", "3", "--select-metric", "val_loss"])
    assert code == 0, err
    setup = json.loads((out / "setup.json").read_text())
    assert setup["data"]["val_clips"] == 1
    losses = [r["val_loss"] for r in setup["history"]]
    assert all(np.isfinite(v) and v > 0 for v in losses)
    assert len(set(losses)) == len(losses)
    assert setup["summary"]["best_epoch"] == int(np.argmin(losses)) + 1


def test_single_validation_clip_is_not_a_silent_perfect_map(tmp_path, small, tiny_clap_dir, classes_file):
    out = tmp_path / "run"
    code, err = run_main(train_script, [*_train_argv(small, tiny_clap_dir, classes_file, out),
                                        "--train-ratio", "0.75", "--epochs", "3"])
    if code == 2:  # a clear refusal is acceptable
        assert "validation" in err
        return
    assert code == 0, err
    maps = [r["val_mAP"] for r in json.loads((out / "setup.json").read_text())["history"]]
    warned = any("WARNING" in line and "validation" in line for line in err.splitlines())
    assert warned or len(set(maps)) > 1, f"val_mAP {maps}, no warning"


def _drop_column(path, column):
    import io

    import pyarrow.parquet as pq
    buffer = io.BytesIO()
    pq.write_table(pq.read_table(path).drop_columns([column]), buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_an_unreadable_file_is_warned_once_and_summed_up_at_the_end(tmp_path, tiny_clap_dir, demo_eval_dir,
                                                                    classes_file, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for f in demo_eval_dir.glob("*.parquet"):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "zz_broken.parquet").write_text("not parquet")
    argv = ["--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--class-labels", classes_file,
            "--num-samples", "all", "--output-json", tmp_path / "r.json", "--num-workers", "0"]
    for run in (1, 2):  # the second run reads the damaged flag from the cache
        assert eval_script.main([str(a) for a in argv]) == 0
        printed = capsys.readouterr()
        assert printed.err.count("zz_broken.parquet") == 1, run  # the log goes to stderr
        assert "skipped in all: 0 rows, 1 file" in printed.err
        assert "skipped: 1 file (1 unreadable_file)" in printed.out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["skipped"]["files_skipped"] == 1 and results["skipped"]["rows_skipped"] == 0


def test_caption_data_without_text_column_points_to_text_column(tmp_path, tiny_clap_dir):
    from tests.benchmark_folders import write_caption_training_folder
    folder = tmp_path / "caps"
    write_caption_training_folder(folder, clips=2)
    (folder / "train.parquet").write_bytes(_drop_column(folder / "train.parquet", "human_labels"))
    code, err = run_main(train_script, ["--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu",
                                        "--output-dir", tmp_path / "o"])
    assert code == 2
    assert "no column 'human_labels'" in err and "--text-column caption" in err and "--label-column" in err
