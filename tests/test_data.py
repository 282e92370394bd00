"""data/: decoding, resampling, label matching, parquet streaming, synthetic datasets.

Every fixture is generated here with data.synthetic; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from data.audio import (
    MAX_SAMPLES,
    PREPROCESSING,
    TARGET_SR,
    AudioDecodeError,
    decode_audio_cell,
    load_waveform,
    to_mono_48k,
)
from data.audioset import (
    ClipMeta,
    DatasetError,
    SkipLog,
    combine_shards,
    describe_skipped,
    iter_clips,
    list_parquet_files,
)
from data.labels import LabelMatcher, load_class_labels
from data.synthetic import (
    DEMO_CLASSES,
    encode_audio,
    synthesize,
    write_demo_dataset,
    write_parquet_shard,
)
from tests.helpers import corrupt_audio_page

REPO = Path(__file__).resolve().parents[1]
CLAP_LABELS = REPO / "CLAP" / "class_labels" / "audioset_class_labels_indices.json"


@pytest.fixture(scope="module")
def class_names() -> list[str]:
    return load_class_labels(CLAP_LABELS)


@pytest.fixture(scope="module")
def matcher(class_names) -> LabelMatcher:
    return LabelMatcher(class_names)


def sine(freq: float, sr: int, seconds: float = 0.0, *, n: int | None = None, amp: float = 0.5) -> np.ndarray:
    n = int(round(sr * seconds)) if n is None else n
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def bytes_cell(wave: np.ndarray, sr: int, fmt: str, **kw) -> dict:
    return {"bytes": encode_audio(wave, sr, fmt, **kw), "path": None}


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# ------------------------------------------------------------------ audio


@pytest.mark.parametrize(
    "sr, n, expected",
    [
        (44100, 441000, 480000),  # 10 s at 44.1 kHz
        (44100, 441001, 480000),  # soxr gives 480001; cropped to the start
        (8000, 8000, 48000),  # 1 s at 8 kHz
        (16000, 800, 2400),  # 0.05 s
        (22050, 1102, 2399),  # 0.05 s rounds down to 1102 input samples
        (96000, 96000 * 31, MAX_SAMPLES),  # 31 s
        (48000, 48000 * 12, MAX_SAMPLES),  # no resampling, still cropped
        (48000, 1234, 1234),  # short clips are not padded
    ],
)
def test_to_mono_48k_lengths(sr, n, expected):
    x = sine(440.0, sr, n=n)
    y = to_mono_48k(x, sr)
    assert y.shape == (expected,)
    assert y.dtype == np.float32 and y.flags.c_contiguous


def test_crop_keeps_the_start_of_the_resampled_clip():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 441001).astype(np.float32)
    full = soxr.resample(x, 44100, TARGET_SR, quality="HQ")
    assert full.shape == (480001,)  # the case that made the CLAP extractor random-crop
    np.testing.assert_array_equal(to_mono_48k(x, 44100), full[:MAX_SAMPLES])


@settings(max_examples=40, deadline=None)
@given(sr=st.integers(4000, 192000), n=st.integers(1, 60000))
def test_output_length_is_soxr_rounding(sr, n):
    # soxr rounds n * 48000 / sr half up; we crop only above MAX_SAMPLES.
    expected = math.floor(Fraction(n * TARGET_SR, sr) + Fraction(1, 2)) if sr != TARGET_SR else n
    assert to_mono_48k(np.zeros(n, np.float32), sr).shape == (min(expected, MAX_SAMPLES),)


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_downmix_is_the_channel_mean(channels):
    rng = np.random.default_rng(channels)
    x = rng.uniform(-0.5, 0.5, (channels, 4800)).astype(np.float32)
    np.testing.assert_allclose(to_mono_48k(x, TARGET_SR), x.mean(axis=0), rtol=0, atol=1e-7)
    # Resampling is linear, so downmix-then-resample equals the resampled mean.
    y = to_mono_48k(x, 16000)
    np.testing.assert_allclose(y, soxr.resample(x.mean(axis=0), 16000, TARGET_SR, quality="HQ"), atol=1e-6)


def test_downmix_of_opposite_channels_is_silent():
    s = sine(1000.0, 16000, 0.5)
    assert np.max(np.abs(to_mono_48k(np.stack([s, -s]), 16000))) < 1e-6


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000, 96000])
def test_sine_frequency_survives_resampling(sr):
    f = 1234.5
    y = to_mono_48k(sine(f, sr, 1.0), sr)
    assert abs(peak_hz(y, TARGET_SR) - f) <= 1.0  # 1 Hz bins for 1 s at 48 kHz
    # and the level is kept (an HQ resampler loses < 0.1 dB in the passband)
    assert np.sqrt(np.mean(y[4800:-4800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_silent_clip_stays_silent():
    y = to_mono_48k(np.zeros((2, 16000), np.float32), 16000)
    assert y.shape == (48000,) and not np.any(y)


@pytest.mark.parametrize(
    "fmt, sr, channels",
    [("flac", 44100, 2), ("wav", 8000, 1), ("ogg", 96000, 3), ("mp3", 16000, 1), ("mp3", 44100, 2)],
)
def test_decode_bytes_roundtrip(fmt, sr, channels):
    n = sr // 2
    wave = np.stack([sine(500.0 * (c + 1), sr, n=n) for c in range(channels)], axis=1)  # (samples, channels)
    got, got_sr = decode_audio_cell(bytes_cell(wave, sr, fmt))
    assert got_sr == sr
    assert got.dtype == np.float32 and got.shape == (channels, n)  # MP3 too: libsndfile trims encoder delay
    if fmt in ("flac", "wav"):
        np.testing.assert_allclose(got, wave.T, atol=1.0 / 32768)
    else:
        for c in range(channels):
            assert np.corrcoef(got[c], wave[:, c])[0, 1] > 0.95


def test_decode_array_cells():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 300))
    wave, sr = decode_audio_cell({"array": x.tolist(), "sampling_rate": 22050})
    assert sr == 22050 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, x, atol=1e-7)
    wave, sr = decode_audio_cell(x[0], default_sr=8000)
    assert sr == 8000 and wave.shape == (1, 300)
    assert load_waveform(list(x[0]), default_sr=8000).shape == (1800,)


def test_decode_bare_array_needs_sample_rate():
    with pytest.raises(ValueError, match="default_sr"):
        decode_audio_cell(np.zeros(100, np.float32))


def test_decode_rejects_ambiguous_layouts():
    with pytest.raises(ValueError, match=r"\(samples, channels\)"):
        decode_audio_cell({"array": np.zeros((300, 2)).tolist(), "sampling_rate": 8000})
    with pytest.raises(TypeError, match="int16"):
        decode_audio_cell(np.zeros(100, np.int16), default_sr=8000)
    with pytest.raises(ValueError, match="path='x.wav'"):
        decode_audio_cell({"bytes": None, "path": "x.wav"})


def _truncated_mp3() -> bytes:
    b = encode_audio(sine(440.0, 16000, 2.0), 16000, "mp3")
    return b[: len(b) // 2]


@pytest.mark.parametrize(
    "cell, reason",
    [
        ({"bytes": b"this is not audio" * 20, "path": None}, "decode_error"),
        ({"bytes": _truncated_mp3(), "path": None}, "decode_error"),
        ({"bytes": b"", "path": None}, "empty_audio"),
        (None, "empty_audio"),
        ({"bytes": None, "path": None}, "empty_audio"),
        ({"bytes": encode_audio(np.zeros(0, np.float32), 16000, "wav"), "path": None}, "empty_audio"),
        ({"array": [], "sampling_rate": 16000}, "empty_audio"),
        (
            {"bytes": encode_audio(np.array([0.1, np.nan, 0.2], np.float32), 16000, "wav", subtype="FLOAT")},
            "non_finite",
        ),
        ({"array": [0.0, np.inf, 0.0], "sampling_rate": 16000}, "non_finite"),
    ],
)
def test_decode_errors_have_reasons(cell, reason):
    with pytest.raises(AudioDecodeError) as e:
        load_waveform(cell)
    assert e.value.reason == reason


def test_encode_refuses_to_clip_silently():
    with pytest.raises(ValueError, match="clip"):
        encode_audio(np.array([0.0, 1.5], np.float32), 16000, "flac")


def test_preprocessing_describes_the_rules():
    assert PREPROCESSING["sample_rate"] == TARGET_SR == 48000
    assert PREPROCESSING["max_samples"] == MAX_SAMPLES == 480000
    json.dumps(PREPROCESSING)  # usable as a cache key


# ------------------------------------------------------------------ labels


def test_class_label_formats_agree(tmp_path, class_names):
    assert len(class_names) == 527 and class_names[0] == "Speech"
    # AudioSet's class_labels_indices.csv layout (index,mid,display_name; names with commas quoted),
    # written here from the repository's list, rows out of order so the index column must be used.
    with open(tmp_path / "indices.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        for i in reversed(range(len(class_names))):
            writer.writerow([i, f"/m/{i:05d}", class_names[i]])
    assert '"Male speech, man speaking"' in (tmp_path / "indices.csv").read_text()
    assert load_class_labels(tmp_path / "indices.csv") == class_names
    (tmp_path / "names.txt").write_text("\n".join(class_names) + "\n\n")
    assert load_class_labels(tmp_path / "names.txt") == class_names
    (tmp_path / "inv.json").write_text(json.dumps({n: i for i, n in reversed(list(enumerate(class_names)))}))
    assert load_class_labels(tmp_path / "inv.json") == class_names
    (tmp_path / "list.json").write_text(json.dumps(class_names))
    assert load_class_labels(tmp_path / "list.json") == class_names


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("dup.json", json.dumps({"0": "Speech", "1": "speech "}), "same name"),
        ("gap.json", json.dumps({"0": "Speech", "2": "Music"}), r"missing \[1\]"),
        ("gap.csv", "index,mid,display_name\n0,/m/a,Speech\n2,/m/b,Music\n", r"missing \[1\]"),
        ("nocol.csv", "idx,name\n0,Speech\n", "display_name"),
        ("blank.txt", "Speech\n\nMusic\n", "line 2 is blank"),
        ("bad.json", "{not json", "JSON"),
    ],
)
def test_class_label_errors_name_the_file(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DatasetError, match=match) as e:
        load_class_labels(p)
    assert str(p) in str(e.value)


def test_missing_class_label_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.json"):
        load_class_labels(tmp_path / "nope.json")


def idx(class_names, *names):
    return sorted(class_names.index(n) for n in names)


@pytest.mark.parametrize(
    "cell, known, unknown",
    [
        ("Beep, bleep", ["Beep, bleep"], []),
        ("  beep,bleep ", ["Beep, bleep"], []),
        ("Speech, Beep, bleep, Dog", ["Speech", "Beep, bleep", "Dog"], []),
        ("Child speech, kid speaking,Music", ["Child speech, kid speaking", "Music"], []),
        ("Hubbub, speech noise, speech babble, Speech", ["Hubbub, speech noise, speech babble", "Speech"], []),
        ("Speech, Flux capacitor, Music,", ["Speech", "Music"], ["Flux capacitor"]),
        ('["Speech", "Beep, bleep"]', ["Speech", "Beep, bleep"], []),
        ("['Child speech, kid speaking', 'dog']", ["Child speech, kid speaking", "Dog"], []),
        ("[Speech", [], ["[Speech"]),  # not a literal: split on commas as usual
        (["Speech", "Beep, bleep", "speech"], ["Speech", "Beep, bleep"], []),
        (("Music",), ["Music"], []),
        (np.array(["Dog", "Nope"]), ["Dog"], ["Nope"]),
        (["Beep", "bleep"], [], ["Beep", "bleep"]),  # list items are whole labels, never joined
        (None, [], []),
        (float("nan"), [], []),
        ("", [], []),
        ("   ", [], []),
        ([], [], []),
    ],
)
def test_label_matcher(matcher, class_names, cell, known, unknown):
    got, got_unknown = matcher.match(cell)
    assert got == idx(class_names, *known)
    assert got_unknown == unknown


@pytest.mark.parametrize(
    "cell, labels",
    [
        ("Speech, beep,bleep, Foo, speech, foo", ["Speech", "beep,bleep", "Foo"]),
        ('["Dog", " Speech "]', ["Dog", "Speech"]),
        ("Child speech, kid speaking", ["Child speech, kid speaking"]),
        (None, []),
    ],
)
def test_label_matcher_split_keeps_written_order(matcher, cell, labels):
    assert matcher.split(cell) == labels


def test_label_matcher_prefers_the_longest_name():
    m = LabelMatcher(["A", "A, b", "A, b, c", "b", "c"])
    assert m.match("A, b, c, A") == ([0, 2], [])
    assert m.match("A, c") == ([0, 4], [])
    assert m.match("A, b, x") == ([1], ["x"])


# ------------------------------------------------------------------ parquet folders


def _row(vid, audio, labels):
    return {"video_id": vid, "audio": audio, "human_labels": labels}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Three good shards (list labels, string labels, array cells) plus two bad files."""
    d = tmp_path_factory.mktemp("mixed")
    stereo_44k = np.stack([sine(1000.0, 44100, 10.0), sine(1000.0, 44100, 10.0, amp=0.1)], axis=1)
    three_96k = np.stack([sine(f, 96000, 0.5) for f in (300.0, 600.0, 900.0)], axis=1)
    nan_wav = encode_audio(np.array([0.0, np.nan] * 100, np.float32), 8000, "wav", subtype="FLOAT")
    write_parquet_shard(
        d / "a.parquet",
        [
            _row("a0", bytes_cell(stereo_44k, 44100, "flac"), ["Sine wave"]),
            _row("a1", bytes_cell(sine(700.0, 8000, 1.0), 8000, "wav"), ["Beep, bleep", "Speech"]),
            _row("a2", bytes_cell(three_96k, 96000, "ogg"), ["Child speech, kid speaking"]),
            _row("a3", {"bytes": b"\x00garbage" * 50, "path": None}, ["Speech"]),
            _row("a4", {"bytes": b"", "path": None}, ["Speech"]),
            _row("a5", {"bytes": nan_wav, "path": None}, ["Speech"]),
            _row("a6", bytes_cell(sine(700.0, 8000, 1.0), 8000, "wav"), ["Not a class"]),
            _row("a7", bytes_cell(sine(700.0, 8000, 1.0), 8000, "wav"), []),
            _row("a8", bytes_cell(np.zeros(0, np.float32), 8000, "wav"), ["Speech"]),
        ],
    )
    stereo_44k_1s = np.stack([sine(440.0, 44100, 1.0)] * 2, axis=1)
    write_parquet_shard(
        d / "b.parquet",
        [
            _row("b0", bytes_cell(sine(440.0, 16000, 2.0), 16000, "mp3"), "Speech, Beep, bleep"),
            _row("b1", bytes_cell(stereo_44k_1s, 44100, "mp3"), "Beep, bleep,Unknown thing"),
            _row("b2", {"bytes": _truncated_mp3(), "path": None}, "Mains hum"),
        ],
    )
    write_parquet_shard(
        d / "c.parquet",
        [
            _row("c0", {"array": sine(440.0, 22050, n=1102), "sampling_rate": 22050}, '["Music", "Dog"]'),
            _row("c1", {"array": sine(440.0, 32000, 12.0), "sampling_rate": 32000}, "Music"),
            _row("c2", {"array": np.array([0.0, np.inf, 0.0]), "sampling_rate": 32000}, "Music"),
            _row("c3", {"array": sine(440.0, 32000, 0.1), "sampling_rate": 32000}, None),
        ],
    )
    # 2-D (channels, samples) arrays need their own shard: parquet has one type per column
    two_ch = np.stack([sine(440.0, 16000, 1.0), sine(880.0, 16000, 1.0)])
    write_parquet_shard(d / "c_stereo.parquet", [_row("cs0", {"array": two_ch, "sampling_rate": 16000}, ["Music"])])
    (d / "d_notes.parquet").write_text("these are my notes, not a parquet file\n")
    good = (d / "a.parquet").read_bytes()
    (d / "e_torn.parquet").write_bytes(good[: len(good) // 2])
    (d / "readme.txt").write_text("ignored: not .parquet")
    return d


EXPECTED_YIELD = {
    # video_id: (file, row, labels, samples)
    "a0": ("a.parquet", 0, ["Sine wave"], 480000),
    "a1": ("a.parquet", 1, ["Speech", "Beep, bleep"], 48000),
    "a2": ("a.parquet", 2, ["Child speech, kid speaking"], 24000),
    "b0": ("b.parquet", 0, ["Speech", "Beep, bleep"], 96000),
    "b1": ("b.parquet", 1, ["Beep, bleep"], 48000),
    "c0": ("c.parquet", 0, ["Music", "Dog"], 2399),
    "c1": ("c.parquet", 1, ["Music"], 480000),
    "cs0": ("c_stereo.parquet", 0, ["Music"], 48000),
}
EXPECTED_SKIPS = {"decode_error": 2, "empty_audio": 2, "non_finite": 2, "no_known_label": 3, "unreadable_file": 2}
ROWS_IN_GOOD_FILES = 9 + 3 + 4 + 1


def test_iter_clips_yields_good_rows_and_counts_every_bad_one(mixed_folder, matcher, class_names, caplog):
    skips = SkipLog()
    with caplog.at_level(logging.WARNING, logger="data.audioset"):
        clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips))
    got = {c.meta.video_id: c for c in clips}
    assert list(got) == list(EXPECTED_YIELD)  # file order, then row order
    for vid, (file, row, labels, n) in EXPECTED_YIELD.items():
        c = got[vid]
        assert c.meta == ClipMeta(file, row, vid)
        assert c.label_indices == idx(class_names, *labels)
        assert c.waveform.shape == (n,) and c.waveform.dtype == np.float32
    assert got["a1"].raw_labels == ["Beep, bleep", "Speech"]  # as written, not by class index
    assert got["b0"].raw_labels == ["Speech", "Beep, bleep"]
    assert got["b1"].raw_labels == ["Beep, bleep", "Unknown thing"]
    # the FLAC clip: 1 kHz on both channels at 0.5 and 0.1 -> mean amplitude 0.3
    a0 = got["a0"].waveform
    assert abs(peak_hz(a0[:48000], TARGET_SR) - 1000.0) <= 1.0
    assert np.max(np.abs(a0)) == pytest.approx(0.3, abs=0.01)

    assert {r: skips.count(r) for r in EXPECTED_SKIPS} == EXPECTED_SKIPS
    assert skips.total == sum(EXPECTED_SKIPS.values())
    # every row of the readable files is either yielded or skipped, exactly once
    assert skips.rows_skipped() == skips.total - skips.count("unreadable_file")
    assert len(clips) + skips.rows_skipped() == ROWS_IN_GOOD_FILES
    d = skips.to_dict()
    assert {e["video_id"] for e in d["reasons"]["decode_error"]["examples"]} == {"a3", "b2"}
    assert {e["video_id"] for e in d["reasons"]["non_finite"]["examples"]} == {"a5", "c2"}
    assert {e["file"] for e in d["reasons"]["unreadable_file"]["examples"]} == {"d_notes.parquet", "e_torn.parquet"}
    assert skips.unknown_labels.to_dict() == [
        {"label": "Not a class", "count": 1},
        {"label": "Unknown thing", "count": 1},
    ]
    assert "d_notes.parquet" in caplog.text and "e_torn.parquet" in caplog.text


def test_iter_clips_without_decoding_reads_labels_only(mixed_folder, matcher):
    skips = SkipLog()
    clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips, decode=False))
    assert all(c.waveform is None for c in clips)
    # bad audio goes unnoticed without decoding; rows without a known label do not
    assert len(clips) == ROWS_IN_GOOD_FILES - 3
    assert skips.count("no_known_label") == 3 and skips.total == 3 + 2


def test_iter_clips_can_keep_unlabelled_rows(mixed_folder, matcher):
    skips = SkipLog()
    clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips, require_labels=False))
    assert {"a6", "a7", "c3"} <= {c.meta.video_id for c in clips}
    assert skips.count("no_known_label") == 0


@pytest.mark.parametrize(
    "limit, expected_ids, expected_skipped",
    [
        (0, [], 0),
        (2, ["a0", "a1"], 0),
        (5, ["a0", "a1", "a2"], 2),  # rows a3 (decode_error) and a4 (empty_audio) use up the limit
        (10, ["a0", "a1", "a2", "b0"], 6),  # a3..a8 skipped, then b0
        (1000, list(EXPECTED_YIELD), ROWS_IN_GOOD_FILES - len(EXPECTED_YIELD)),
    ],
)
def test_limit_counts_rows_considered(mixed_folder, matcher, limit, expected_ids, expected_skipped):
    skips = SkipLog()
    clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips, limit=limit))
    assert [c.meta.video_id for c in clips] == expected_ids
    assert skips.total - skips.count("unreadable_file") == expected_skipped


def test_only_rows_are_processed_and_the_others_still_count_towards_the_limit(mixed_folder, matcher, monkeypatch):
    import data.audioset as audioset
    decoded = []
    real = audioset.decode_audio_cell
    monkeypatch.setattr(audioset, "decode_audio_cell", lambda cell, **kw: decoded.append(1) or real(cell, **kw))
    skips = SkipLog()
    # a.parquet rows 0, 2 and 3 (3 fails to decode); rows 1 and 4..8 are not decoded, yielded or counted
    clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips, limit=9, only_rows={0, 2, 3}.__contains__))
    assert [c.meta.video_id for c in clips] == ["a0", "a2"]
    assert len(decoded) == 3 and skips.total == skips.count("decode_error") == 1
    assert not skips.unknown_labels  # a6's "Not a class" was never matched
    # the limit counts the rows passed over: 9 rows considered end in a.parquet, 10 reach b0
    ten = list(iter_clips(mixed_folder, matcher=matcher, skips=SkipLog(), limit=10, only_rows=lambda r: r == 0))
    assert [c.meta.video_id for c in ten] == ["a0", "b0"]


@pytest.mark.parametrize("limit", [None, 5, 10])
def test_decoding_on_threads_reads_what_one_thread_reads(mixed_folder, matcher, limit):
    """decode_threads decodes a unit's rows at once; clips, waveforms, skips and their order
    (decode failures among them, a limit inside a unit) are those of a read on one thread."""
    reads = {}
    for threads in (1, 3):
        skips = SkipLog()
        clips = list(iter_clips(mixed_folder, matcher=matcher, skips=skips, limit=limit, read_batch_rows=4,
                                decode_threads=threads))
        reads[threads] = clips, skips
    (one, skips_one), (three, skips_three) = reads[1], reads[3]
    assert [c.meta for c in three] == [c.meta for c in one] and len(one) > 0
    assert all(np.array_equal(a.waveform, b.waveform) and a.seconds == b.seconds for a, b in zip(one, three))
    assert skips_three.to_dict() == skips_one.to_dict()  # counts, and the examples in the same order


def test_a_bad_audio_cell_stops_a_threaded_read_at_its_row(tmp_path, matcher):
    rows = [_row(f"v{i}", bytes_cell(sine(440.0 + i, 8000, 0.1), 8000, "wav"), ["Speech"]) for i in range(5)]
    rows[3]["audio"] = {"array": np.zeros((300, 2)).tolist(), "sampling_rate": 8000}  # ambiguous layout
    write_parquet_shard(tmp_path / "s.parquet", rows)
    got = []
    with pytest.raises(DatasetError, match=r"s.parquet, row 3, column 'audio'"):
        for clip in iter_clips(tmp_path, matcher=matcher, skips=SkipLog(), decode_threads=2):
            got.append(clip.meta.video_id)
    assert got == ["v0", "v1", "v2"]  # the rows before it, as a read on one thread gives them


@pytest.fixture(scope="module")
def many_row_groups(tmp_path_factory):
    """Files with several row groups of uneven size, for sharding."""
    d = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(3)
    k = 0
    for f, (n_rows, group) in enumerate([(7, 3), (1, 1), (10, 4), (5, 5)]):
        rows = []
        for _ in range(n_rows):
            audio = {"array": rng.uniform(-0.1, 0.1, 80), "sampling_rate": 8000}
            rows.append(_row(f"v{k}", audio if k % 6 else {"array": [], "sampling_rate": 8000}, ["Speech"]))
            k += 1
        write_parquet_shard(d / f"part{f}.parquet", rows, row_group_size=group)
    assert pq.ParquetFile(d / "part2.parquet").num_row_groups == 3
    return d


@pytest.mark.parametrize("read_batch_rows", [1, 2, 64])
@pytest.mark.parametrize("count", [2, 3, 7])
def test_shards_partition_the_stream(many_row_groups, matcher, count, read_batch_rows):
    def metas(skips, shard=None):
        clips = iter_clips(many_row_groups, matcher=matcher, skips=skips, shard=shard, read_batch_rows=read_batch_rows)
        return [c.meta for c in clips]

    whole_skips = SkipLog()
    whole = metas(whole_skips)
    assert len(whole) + whole_skips.total == 23 and whole_skips.count("empty_audio") == 4
    merged = SkipLog()
    parts = []
    for i in range(count):
        s = SkipLog()
        parts.append(metas(s, (i, count)))
        merged.merge(s)
    flat = [m for p in parts for m in p]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat, key=lambda m: (m.file, m.row)) == whole  # union is the whole stream
    assert merged.to_dict()["total"] == whole_skips.total
    assert merged.count("empty_audio") == whole_skips.count("empty_audio")
    if read_batch_rows == 1:
        assert all(parts)  # with 23 units every shard gets work


def test_combine_shards():
    pairs = {combine_shards(rank=r, world_size=2, worker_id=w, num_workers=3) for r in range(2) for w in range(3)}
    assert pairs == {(i, 6) for i in range(6)}
    with pytest.raises(ValueError):
        combine_shards(rank=2, world_size=2)


def test_corrupt_page_mid_file_is_counted_and_earlier_rows_kept(tmp_path, matcher):
    rows = [_row(f"v{i}", bytes_cell(sine(440.0, 16000, 0.5), 16000, "wav"), ["Speech"]) for i in range(4)]
    path = write_parquet_shard(tmp_path / "x.parquet", rows, row_group_size=2)
    corrupt_audio_page(path)
    skips = SkipLog()
    clips = list(iter_clips(tmp_path, matcher=matcher, skips=skips))
    assert [c.meta.video_id for c in clips] == ["v0", "v1"]
    assert skips.total == skips.count("unreadable_file") == 1
    assert "2 later rows" in skips.to_dict()["reasons"]["unreadable_file"]["examples"][0]["detail"]


@pytest.mark.parametrize("missing", ["audio", "human_labels"])
def test_missing_column_names_file_and_column(tmp_path, matcher, missing):
    row = _row("v", bytes_cell(sine(440.0, 8000, 0.1), 8000, "wav"), ["Speech"])
    del row[missing]
    write_parquet_shard(tmp_path / "good_name.parquet", [row])
    with pytest.raises(DatasetError) as e:
        list(iter_clips(tmp_path, matcher=matcher, skips=SkipLog()))
    msg = str(e.value)
    assert "good_name.parquet" in msg and repr(missing) in msg and "video_id" in msg


def test_other_label_column(tmp_path, matcher, class_names):
    row = _row("v", bytes_cell(sine(440.0, 8000, 0.1), 8000, "wav"), ["Speech"])
    row["my_labels"] = "Dog"
    write_parquet_shard(tmp_path / "s.parquet", [row])
    (clip,) = iter_clips(tmp_path, matcher=matcher, skips=SkipLog(), label_column="my_labels")
    assert clip.label_indices == idx(class_names, "Dog")


def test_bad_folders_name_the_folder(tmp_path, matcher):
    for folder in [tmp_path / "absent", tmp_path]:
        with pytest.raises(DatasetError, match=str(folder)):
            list_parquet_files(folder)
    (tmp_path / "f.parquet").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        list(iter_clips(tmp_path / "f.parquet", matcher=matcher, skips=SkipLog()))
    nested = tmp_path / "outer"
    (nested / "data").mkdir(parents=True)
    (nested / "data" / "train.parquet").write_text("x")
    with pytest.raises(DatasetError, match="one level down"):
        list_parquet_files(nested)


def test_skiplog_caps_examples_and_merges():
    a, b = SkipLog(), SkipLog()
    for i in range(7):
        a.add("decode_error", ClipMeta("f", i, f"v{i}"), detail="bad")
    b.add("decode_error", ClipMeta("g", 0, "w"))
    b.add("unreadable_file", file="h.parquet", detail="torn")
    a.unknown_labels.update(["x", "y", "x"])
    b.unknown_labels.update(["y", "y", "z"])
    d = a.merge(b).to_dict()
    assert d["total"] == 9 and a.rows_skipped() == 8
    assert d["reasons"]["decode_error"]["count"] == 8 and len(d["reasons"]["decode_error"]["examples"]) == 5
    assert d["reasons"]["unreadable_file"]["examples"] == [
        {"file": "h.parquet", "row": None, "video_id": None, "detail": "torn"}
    ]
    assert a.unknown_labels.to_dict() == [
        {"label": "y", "count": 3},
        {"label": "x", "count": 2},
        {"label": "z", "count": 1},
    ]


# ------------------------------------------------------------------ synthetic


def test_demo_classes_are_audioset_classes(class_names):
    assert len(DEMO_CLASSES) >= 8
    for name in DEMO_CLASSES:
        assert name in class_names  # exact spelling


def test_demo_dataset_is_deterministic(tmp_path, matcher, class_names):
    kw = dict(clips_per_class=2, seed=5, sr=16000, seconds=0.5, shards=3, mixtures=2)
    s1 = write_demo_dataset(tmp_path / "one", **kw)
    s2 = write_demo_dataset(tmp_path / "two", **kw)
    write_demo_dataset(tmp_path / "other", **{**kw, "seed": 6})
    assert s1["files"] == s2["files"] and len(s1["files"]) == 3
    for name in s1["files"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
        assert (tmp_path / "one" / name).read_bytes() != (tmp_path / "other" / name).read_bytes()
    assert s1["clips"] == 2 * len(DEMO_CLASSES) + 2
    assert sum(s1["per_class"].values()) == 2 * len(DEMO_CLASSES) + 2 * 2
    skips = SkipLog()
    clips = list(iter_clips(tmp_path / "one", matcher=matcher, skips=skips))
    assert skips.total == 0 and len(clips) == s1["clips"]
    assert sum(len(c.label_indices) == 2 for c in clips) == 2
    assert {class_names[i] for c in clips for i in c.label_indices} == set(DEMO_CLASSES)
    assert all(c.waveform.shape == (24000,) for c in clips)
    with pytest.raises(FileExistsError):
        write_demo_dataset(tmp_path / "one", **kw)


def _spectral_features(x: np.ndarray, sr: int) -> np.ndarray:
    """Share of energy per 1/6-octave band (log), level, and envelope variation."""
    f = np.fft.rfftfreq(len(x), 1 / sr)
    power = np.abs(np.fft.rfft(x)) ** 2
    edges = np.geomspace(40.0, sr / 2, int(np.log2(sr / 2 / 40.0) * 6) + 1)
    bands = np.array([power[(f >= lo) & (f < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    share = np.log10(np.maximum(bands / max(bands.sum(), 1e-30), 1e-6))
    env = np.sqrt((x[: len(x) // 400 * 400].reshape(-1, 400) ** 2).mean(axis=1)) + 1e-12
    return np.concatenate([share, [np.log10(np.mean(x**2) + 1e-30) / 2, 3 * np.std(env) / np.mean(env)]])


def test_demo_classes_vary_and_are_distinguishable_by_spectrum():
    sr, per_class = 48000, 6
    feats, labels = [], []
    for ci, name in enumerate(DEMO_CLASSES):
        clips = [synthesize(name, np.random.default_rng([0, ci, k]), sr, 1.0) for k in range(per_class)]
        assert clips[0].shape == (sr,) and clips[0].dtype == np.float32
        assert not np.array_equal(clips[0], clips[1])  # random parameters
        np.testing.assert_array_equal(clips[0], synthesize(name, np.random.default_rng([0, ci, 0]), sr, 1.0))
        feats += [_spectral_features(c.astype(np.float64), sr) for c in clips]
        labels += [ci] * per_class
    x, y = np.array(feats), np.array(labels)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.array_equal(y[d.argmin(axis=1)], y)  # leave-one-out nearest neighbour is always right


def test_write_parquet_shard_is_atomic_and_checks_rows(tmp_path):
    good = [_row("v", {"bytes": b"x", "path": None}, ["Speech"])]
    write_parquet_shard(tmp_path / "s.parquet", good)
    with pytest.raises(ValueError, match="same keys"):
        write_parquet_shard(tmp_path / "t.parquet", good + [{"video_id": "w"}])
    with pytest.raises(ValueError, match="'human_labels'"):
        write_parquet_shard(tmp_path / "t.parquet", good + [_row("w", {"bytes": b"y", "path": None}, "Speech")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]  # no temp files left behind


def test_skip_summary_counts_files_apart_from_rows():
    from data.audioset import ClipMeta
    skips, other = SkipLog(), SkipLog()
    skips.add("unreadable_file", file="a.parquet", detail="x")
    other.add("decode_error", ClipMeta("b.parquet", 3, "v"))
    other.add("decode_error", ClipMeta("b.parquet", 4, "w"))
    other.add("unreadable_file", file="c.parquet")
    skips.merge(other)
    assert (skips.files_skipped(), skips.rows_skipped(), skips.total) == (2, 2, 4)
    assert skips.summary() == "skipped: 2 files (2 unreadable_file), 2 rows (2 decode_error)"
    assert describe_skipped(None) == "skipped: nothing"
    old = {"total": 1, "reasons": {"decode_error": {"count": 1, "examples": []}}}  # written before "files"
    assert describe_skipped(old) == "skipped: 1 row (1 decode_error)"
