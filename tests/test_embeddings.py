"""embed_clips / embed_prompts: the cache gives back exactly what a cold run computes, and misses
whenever a key changes; DataLoader workers give exactly what the main process does."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script
from data import audio as audio_rules
from data.audio import Segmenting, load_waveform, segmenting_from
from data.audioset import SkipLog, iter_clips
from data.labels import LabelMatcher
from data.synthetic import encode_audio, write_parquet_shard
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.clap import FrozenClap
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, prompt_name, prompts_for
from hyperbolic.embedding.tiny_clap import build_tiny_clap
from tests.helpers import _eval_argv, _train_argv, corrupt_audio_page, run_main

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs

CLASSES = ["Speech", "Dog", "Music", "Sine wave", "Beep, bleep", "Mains hum"]


def tone(freq: float, sr: int = 16000, seconds: float = 0.25) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def cell(wave: np.ndarray, sr: int = 16000, fmt: str = "wav") -> dict:
    return {"bytes": encode_audio(wave, sr, fmt), "path": None}


def row(vid: str, audio: dict, labels) -> dict:
    return {"video_id": vid, "audio": audio, "human_labels": labels}


def write_messy(folder):
    """Two files: good clips, clips that fail to decode, unknown and missing labels; row groups of 3."""
    folder.mkdir(parents=True, exist_ok=True)
    nan_wav = encode_audio(np.array([0.0, np.nan] * 100, np.float32), 8000, "wav", subtype="FLOAT")
    write_parquet_shard(folder / "a.parquet", [
        row("a0", cell(tone(440.0)), ["Sine wave"]),
        row("a1", {"bytes": b"\x00garbage" * 50, "path": None}, ["Speech"]),
        row("a2", cell(tone(1500.0, 44100), 44100, "flac"), ["Beep, bleep", "Not a class"]),
        row("a3", {"bytes": b"", "path": None}, ["Speech"]),
        row("a4", cell(tone(700.0)), ["Not a class"]),
        row("a5", {"bytes": nan_wav, "path": None}, ["Speech"]),
        row("a6", cell(tone(300.0, 8000), 8000), []),
        row("a7", cell(tone(55.0)), ["Mains hum"]),
    ], row_group_size=3)
    write_parquet_shard(folder / "b.parquet", [
        row("b0", cell(tone(900.0)), "Speech, Beep, bleep"),
        row("b1", cell(tone(2500.0, 22050), 22050), "Dog"),
        row("b2", cell(tone(150.0)), "Music"),
    ])
    return folder


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return write_messy(tmp_path_factory.mktemp("messy"))


@pytest.fixture
def matcher():
    return LabelMatcher(CLASSES)


@pytest.fixture
def forwards(tiny_clap, monkeypatch):
    return count_forwards(tiny_clap, monkeypatch)


def count_forwards(clap, monkeypatch, *, fail_after_batches: int | None = None) -> Counter:
    """Count the clips and prompts that go through the CLAP towers (optionally fail mid-way)."""
    counts = Counter()
    audio, text = clap.model.get_audio_features, clap.model.get_text_features

    def audio_forward(**kw):
        if fail_after_batches is not None and counts["audio_batches"] >= fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        counts["audio_batches"] += 1
        counts["audio"] += len(kw["input_features"])
        return audio(**kw)

    def text_forward(**kw):
        counts["text"] += len(kw["input_ids"])
        return text(**kw)

    monkeypatch.setattr(clap.model, "get_audio_features", audio_forward)
    monkeypatch.setattr(clap.model, "get_text_features", text_forward)
    return counts


def run(clap, folder, matcher, **kw):
    kw.setdefault("batch_size", 2)  # several units per row group, so batches are cut by units
    kw.setdefault("require_labels", False)
    skips = SkipLog()
    clips = embed_clips(clap, folder, matcher=matcher, skips=skips, **kw)
    return clips, skips


def skip_counts(skips: SkipLog) -> dict:
    """``skips.to_dict()`` without object addresses: soundfile's message names the BytesIO it was
    given ("<_io.BytesIO object at 0x...>"), which differs between any two reads."""
    return json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(skips.to_dict())))


def assert_same(a, b, *, exact_details: bool = False, bits: bool = True):
    """Two embed_clips results are the same: bit-identical embeddings (``bits``; else within 1e-6,
    what a forward batch of another size changes), same clips, same counts."""
    (ca, sa), (cb, sb) = a, b
    assert torch.equal(ca.audio, cb.audio) if bits else torch.allclose(ca.audio, cb.audio, rtol=0, atol=1e-6)
    assert ca.metas == cb.metas
    assert ca.label_indices == cb.label_indices and ca.raw_labels == cb.raw_labels
    assert ca.first_label == cb.first_label
    assert (sa.to_dict() == sb.to_dict()) if exact_details else (skip_counts(sa) == skip_counts(sb))
    assert sa.unknown_labels == sb.unknown_labels


def reference(folder, matcher, **kw):
    """What a plain decoding iter_clips reads: the clips (with waveforms) and the skip counts."""
    skips = SkipLog()
    clips = list(iter_clips(folder, matcher=matcher, skips=skips, decode=True, **kw))
    return clips, skips


# ------------------------------------------------------------------ shared runs


@pytest.fixture(scope="module")
def baseline(tiny_clap, messy):
    """The messy folder embedded without a cache, in this process."""
    return run(tiny_clap, messy, LabelMatcher(CLASSES))


@pytest.fixture(scope="module")
def warm(tiny_clap, messy, tmp_path_factory):
    """A cache that holds the messy folder and the default prompts: (folder, cold result, counts)."""
    folder = tmp_path_factory.mktemp("cache")
    cache = EmbeddingCache(folder)
    with pytest.MonkeyPatch.context() as mp:
        counts = count_forwards(tiny_clap, mp)
        cold = run(tiny_clap, messy, LabelMatcher(CLASSES), cache=cache)
        text = embed_prompts(tiny_clap, PROMPTS, cache=cache)
    return folder, cold, text, counts


PROMPTS = prompts_for(CLASSES, "This is a sound of {label}.")


def warm_copy(warm, tmp_path) -> EmbeddingCache:
    return EmbeddingCache(shutil.copytree(warm[0], tmp_path / "cache"))


# ------------------------------------------------------------------ warm runs


def test_warm_run_reuses_everything_and_is_bit_identical(tiny_clap, messy, matcher, warm, baseline,
                                                         tmp_path, forwards, caplog):
    _, cold, text_cold, cold_counts = warm
    assert cold_counts["audio"] == len(cold[0]) == 8 and cold_counts["text"] == len(CLASSES)
    cache = warm_copy(warm, tmp_path)
    with caplog.at_level(logging.INFO, logger="hyperbolic.embedding.embeddings"):
        again = run(tiny_clap, messy, matcher, cache=cache)
        text_again = embed_prompts(tiny_clap, PROMPTS, cache=cache)
    assert forwards["audio"] == forwards["text"] == 0
    assert_same(cold, again, exact_details=True)  # replayed from the cache, details and all
    assert torch.equal(text_cold, text_again)
    assert "audio embeddings: 8 reused, 0 computed" in caplog.text
    assert f"text embeddings: {len(CLASSES)} reused, 0 computed" in caplog.text

    # the cache changes nothing: without it the same clips are read, counted and embedded
    assert_same(cold, baseline)
    ref_clips, ref_skips = reference(messy, matcher, require_labels=False)
    assert cold[0].metas == [c.meta for c in ref_clips]
    assert skip_counts(cold[1]) == skip_counts(ref_skips)
    assert {"decode_error", "empty_audio", "non_finite"} <= set(cold[1].reasons)
    assert cold[1].unknown_labels == ref_skips.unknown_labels
    # every embedding belongs to its clip (the batch a clip sits in moves only the last bits)
    direct = tiny_clap.embed_audio([c.waveform for c in ref_clips])
    torch.testing.assert_close(cold[0].audio, direct, atol=1e-5, rtol=0)


def test_non_finite_embeddings_are_remembered_as_skips(tiny_clap, messy, matcher, tmp_path, monkeypatch):
    real = tiny_clap.embed_features
    calls = []

    def first_clip_nan(features):
        out = real(features).clone()
        if not calls:
            out[0] = float("nan")
        calls.append(len(out))
        return out

    monkeypatch.setattr(tiny_clap, "embed_features", first_clip_nan)
    cache = EmbeddingCache(tmp_path / "cache")
    cold = run(tiny_clap, messy, matcher, cache=cache, batch_size=4)
    assert cold[1].count("non_finite_embedding") == 1 and len(cold[0]) == 7
    monkeypatch.setattr(tiny_clap, "embed_features", None)  # a warm run must not call it
    assert_same(cold, run(tiny_clap, messy, matcher, cache=cache, batch_size=4), exact_details=True)


def test_labels_are_matched_again_on_every_run(tiny_clap, messy, warm, baseline, tmp_path, forwards):
    cache = warm_copy(warm, tmp_path)
    fewer = LabelMatcher(["Dog", "Sine wave", "Speech"])
    clips, skips = run(tiny_clap, messy, fewer, cache=cache)
    assert forwards["audio"] == 0
    ref_clips, ref_skips = reference(messy, fewer, require_labels=False)
    assert clips.metas == [c.meta for c in ref_clips] == baseline[0].metas
    assert clips.label_indices == [c.label_indices for c in ref_clips]
    assert clips.label_indices[0] == [1]  # a0 "Sine wave"
    assert skips.unknown_labels == ref_skips.unknown_labels and skips.unknown_labels["Music"] == 1
    assert torch.equal(clips.audio, baseline[0].audio)


def test_limit_and_require_labels_share_the_cache(tiny_clap, messy, matcher, baseline, tmp_path, forwards):
    cache = EmbeddingCache(tmp_path / "cache")
    first = run(tiny_clap, messy, matcher, cache=cache, limit=6, require_labels=True)
    ref_clips, ref_skips = reference(messy, matcher, limit=6, require_labels=True)
    assert first[0].metas == [c.meta for c in ref_clips]
    assert [m.video_id for m in first[0].metas] == ["a0", "a2"]
    assert skip_counts(first[1]) == skip_counts(ref_skips)
    forwards.clear()
    # all rows, unlabelled ones too: only what the first run did not embed is computed
    second = run(tiny_clap, messy, matcher, cache=cache)
    assert forwards["audio"] == len(second[0]) - len(first[0]) == 6
    assert_same(second, baseline)


# ------------------------------------------------------------------ misses


def test_prompt_template_change_recomputes_text_only(tiny_clap, messy, matcher, warm, tmp_path, forwards):
    cache = warm_copy(warm, tmp_path)
    other = prompts_for(CLASSES, "A recording of {label}.")
    run(tiny_clap, messy, matcher, cache=cache)
    text = embed_prompts(tiny_clap, other, cache=cache)
    assert forwards["audio"] == 0 and forwards["text"] == len(CLASSES)
    assert not torch.allclose(text, warm[2])
    assert torch.equal(text, tiny_clap.embed_text(other))
    forwards.clear()
    assert torch.equal(embed_prompts(tiny_clap, other, cache=cache), text) and forwards["text"] == 0


@pytest.fixture(scope="module")
def other_clap(tmp_path_factory):
    return FrozenClap.load(str(build_tiny_clap(tmp_path_factory.mktemp("clap_seed1"), seed=1)), "cpu")


def test_other_model_recomputes_everything(tiny_clap, other_clap, messy, matcher, warm, tmp_path,
                                           monkeypatch):
    cache = warm_copy(warm, tmp_path)
    counts = count_forwards(other_clap, monkeypatch)
    other = run(other_clap, messy, matcher, cache=cache, batch_size=4)
    text = embed_prompts(other_clap, PROMPTS, cache=cache)
    assert counts["audio"] == 8 and counts["text"] == len(CLASSES)
    assert not torch.allclose(other[0].audio, warm[1][0].audio)
    assert torch.equal(text, other_clap.embed_text(PROMPTS))
    counts.clear()
    assert_same(other, run(other_clap, messy, matcher, cache=cache, batch_size=4), exact_details=True)
    assert counts["audio"] == 0


@pytest.mark.parametrize("change", ["preprocessing_version", "feature_extractor"])
def test_preprocessing_change_recomputes_audio_only(tiny_clap, messy, matcher, warm, tmp_path, forwards,
                                                    monkeypatch, change):
    cache = warm_copy(warm, tmp_path)
    if change == "preprocessing_version":
        monkeypatch.setitem(audio_rules.PREPROCESSING, "version", audio_rules.PREPROCESSING["version"] + 1)
    else:  # zero-padding short clips instead of repeating them: other features
        monkeypatch.setattr(tiny_clap.processor.feature_extractor, "padding", "pad")
    changed = run(tiny_clap, messy, matcher, cache=cache)
    embed_prompts(tiny_clap, PROMPTS, cache=cache)
    assert forwards["audio"] == 8 and forwards["text"] == 0
    # the version bump changes no rule, so the recomputed embeddings are the same bits
    assert torch.equal(changed[0].audio, warm[1][0].audio) == (change == "preprocessing_version")


def test_modified_parquet_file_recomputes_that_file_only(tiny_clap, messy, matcher, warm, tmp_path, forwards):
    folder = shutil.copytree(messy, tmp_path / "data")  # same bytes elsewhere: still hits
    cache = warm_copy(warm, tmp_path)
    write_parquet_shard(folder / "b.parquet", [
        row("b0", cell(tone(900.0)), "Speech, Beep, bleep"),
        row("b1", cell(tone(2600.0, 22050), 22050), "Dog"),   # another sound
        row("b2", cell(tone(150.0)), "Music"),
    ])
    second = run(tiny_clap, folder, matcher, cache=cache)
    assert forwards["audio"] == 3
    assert torch.equal(second[0].audio[:5], warm[1][0].audio[:5])  # a.parquet's five clips
    assert not torch.equal(second[0].audio[5:], warm[1][0].audio[5:])
    forwards.clear()
    # b's rows were forwarded in other batches than in a cold run (full batches cross files), so
    # their last bits may differ; --no-full-batches keeps them equal (test_full_batches.py)
    assert_same(second, run(tiny_clap, folder, matcher), bits=False)
    # renamed (and so touched): the same bytes, still a hit
    (folder / "a.parquet").rename(folder / "a_moved.parquet")
    forwards.clear()
    moved = run(tiny_clap, folder, matcher, cache=cache)
    assert forwards["audio"] == 0
    assert moved[0].metas[0].file == "a_moved.parquet"


# ------------------------------------------------------------------ interruption and damage


def test_interrupted_extraction_resumes(tiny_clap, messy, matcher, baseline, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    counts = count_forwards(tiny_clap, monkeypatch, fail_after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_clap, messy, matcher, cache=cache)
    done = counts["audio"]
    assert 0 < done < 8
    monkeypatch.undo()
    counts = count_forwards(tiny_clap, monkeypatch)
    resumed = run(tiny_clap, messy, matcher, cache=cache)
    assert counts["audio"] == 8 - done
    assert_same(resumed, baseline)
    assert len(list(cache.root.glob("*/*/audio/*/*.npz"))) == 2  # a finished file's chunks are merged


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_file_is_detected_and_rebuilt(tiny_clap, messy, matcher, warm, tmp_path, forwards,
                                                    caplog, damage):
    cache = warm_copy(warm, tmp_path)
    cold = warm[1]
    store = cache.audio(tiny_clap)
    chunk = next((store.folder / cache.file_digest(messy / "b.parquet")[:32]).glob("*.npz"))
    data = bytearray(chunk.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        i = data.index(np.float32(cold[0].audio[-1, 0]).tobytes())  # inside b2's embedding
        data[i] ^= 0x01
    chunk.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hyperbolic.embedding.cache"):
        again = run(tiny_clap, messy, matcher, cache=cache)
    assert "damaged" in caplog.text and str(chunk) in caplog.text
    assert forwards["audio"] == 3  # b.parquet only
    assert torch.equal(again[0].audio[:5], cold[0].audio[:5])  # a.parquet, reused
    assert_same(cold, again, bits=False)  # b.parquet in other batches than cold (full batches cross files)
    forwards.clear()
    run(tiny_clap, messy, matcher, cache=cache)
    assert forwards["audio"] == 0


@pytest.fixture(scope="module")
def torn(tmp_path_factory):
    """A good file, one whose second row group has a corrupt audio page, another good file."""
    folder = tmp_path_factory.mktemp("torn")
    write_parquet_shard(folder / "a.parquet", [row(f"a{i}", cell(tone(300.0 + 100 * i)), ["Speech"])
                                               for i in range(2)])
    path = write_parquet_shard(folder / "b.parquet", [row(f"b{i}", cell(tone(500.0 + 50 * i)), ["Dog"])
                                                      for i in range(4)], row_group_size=2)
    corrupt_audio_page(path)
    write_parquet_shard(folder / "c.parquet", [row(f"c{i}", cell(tone(800.0 + 100 * i)), ["Music"])
                                               for i in range(3)])
    return folder


@pytest.mark.parametrize("limit, workers", [(None, 0), (6, 2)])
def test_file_with_a_damaged_audio_page_reads_as_without_cache(tiny_clap, torn, matcher, tmp_path, forwards,
                                                              limit, workers):
    # limit 6: the label pass sees 4 rows in b.parquet, the decoding read 2, so c.parquet gets 2
    ref_clips, ref_skips = reference(torn, matcher, limit=limit)
    assert ref_skips.count("unreadable_file") == 1
    cache = EmbeddingCache(tmp_path / "cache")
    cold = run(tiny_clap, torn, matcher, cache=cache, limit=limit, num_workers=workers)
    assert cold[0].metas == [c.meta for c in ref_clips]
    assert skip_counts(cold[1]) == skip_counts(ref_skips)
    torch.testing.assert_close(cold[0].audio, tiny_clap.embed_audio([c.waveform for c in ref_clips]),
                               atol=1e-5, rtol=0)
    forwards.clear()
    assert_same(cold, run(tiny_clap, torn, matcher, cache=cache, limit=limit), exact_details=True)
    assert forwards["audio"] == 0


# ------------------------------------------------------------------ workers


@pytest.mark.parametrize("limit", [None, 7])
def test_workers_give_what_the_main_process_gives(tiny_clap, messy, matcher, baseline, tmp_path, forwards,
                                                 limit):
    single = baseline if limit is None else run(tiny_clap, messy, matcher, limit=limit)
    forwards.clear()
    cache = EmbeddingCache(tmp_path / "cache")
    workers = run(tiny_clap, messy, matcher, limit=limit, num_workers=2, cache=cache)
    assert forwards["audio"] == len(single[0])
    assert_same(single, workers)
    forwards.clear()
    assert_same(single, run(tiny_clap, messy, matcher, limit=limit, num_workers=2, cache=cache))
    assert forwards["audio"] == 0


def test_bad_arguments(tiny_clap, messy, matcher):
    for kw in ({"batch_size": 0}, {"num_workers": -1}, {"limit": -1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            run(tiny_clap, messy, matcher, **kw)


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Six 1 s clips and three longer ones (12 s at 44.1 kHz, 10.5 s and exactly 10 s at 48 kHz)."""
    import numpy as np

    from data.synthetic import encode_audio, write_parquet_shard
    folder = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    lengths = [(1.0, 48000)] * 6 + [(12.0, 44100), (10.5, 48000), (10.0, 48000)]
    rows = [{"audio": {"bytes": encode_audio(0.1 * rng.standard_normal(int(s * sr)).astype(np.float32), sr, "flac"),
                       "path": f"{i}.flac"},
             "human_labels": ["White noise" if i % 2 else "Sine wave"], "video_id": f"v{i}"}
            for i, (s, sr) in enumerate(lengths)]
    write_parquet_shard(folder / "a.parquet", rows)
    return folder


@pytest.mark.slow
def test_truncated_clips_are_counted_and_logged(tmp_path, long_clips, tiny_clap_dir):
    cache = tmp_path / "cache"
    for attempt in ("cold", "warm"):  # the counts come back from the embedding cache too
        out = tmp_path / f"{attempt}.json"
        code, err = run_main(eval_script, _eval_argv(long_clips, tiny_clap_dir, out, "--cache-dir", cache))
        assert code == 0, err
        info = json.loads(out.read_text())["test_info"]
        assert info["clips_truncated"] == 2  # 12 s and 10.5 s; exactly 10 s is not cut
        assert info["longest_seconds"] == pytest.approx(12.0)
        assert info["clips_length_unknown"] == 0
        told = [line for line in err.splitlines() if "--segment" in line]
        assert len(told) == 1 and "2 of 9 clips are longer than 10 s (longest 12.0 s)" in told[0]
    code, err = run_main(train_script, _train_argv(long_clips, tiny_clap_dir, tmp_path / "run", "--no-cache"))
    assert code == 0, err
    data = json.loads((tmp_path / "run" / "setup.json").read_text())["data"]
    assert (data["clips_truncated"], data["longest_seconds"]) == (2, pytest.approx(12.0))
    out = tmp_path / "seg.json"
    code, err = run_main(eval_script, _eval_argv(long_clips, tiny_clap_dir, out, "--no-cache", "--segment", "5"))
    assert code == 0, err
    assert json.loads(out.read_text())["test_info"]["clips_truncated"] == 0


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory):
    """A 31 s clip at 44.1 kHz (resampled), a 4 s and a 10 s clip at 48 kHz."""
    folder = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(3)
    t = np.arange(31 * 44100) / 44100
    sweep = (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    rows = [{"video_id": "long31", "audio": {"bytes": encode_audio(sweep, 44100, "flac"), "path": None},
             "human_labels": ["Sine wave"]}]
    for k, seconds in enumerate((4, 10)):
        wave = (0.1 * rng.standard_normal(seconds * 48000)).astype(np.float32)
        rows.append({"video_id": f"c{k}", "audio": {"bytes": encode_audio(wave, 48000, "wav"), "path": None},
                     "human_labels": ["Speech"]})
    write_parquet_shard(folder / "long.parquet", rows)
    return folder


def _manual(clap, cell, seg):
    """Decode the whole clip, embed each window on its own forward, average, normalise."""
    wave = load_waveform(cell, max_samples=None)
    windows = seg.windows(wave)
    emb = clap.embed_audio(windows)
    return F.normalize(emb.mean(0), dim=-1), len(windows), windows


@pytest.mark.slow
def test_window_starts_cover_the_recording_and_end_on_it():
    seg = Segmenting(10, 5)
    n = 31 * 48000
    starts = seg.starts(n)
    assert [s / 48000 for s in starts] == [0, 5, 10, 15, 20, 21]
    assert starts[-1] + seg.samples == n  # the last window is aligned to the end
    assert Segmenting(10, 5).starts(30 * 48000) == [s * 48000 for s in (0, 5, 10, 15, 20)]  # no duplicate
    assert seg.starts(4 * 48000) == [0] and seg.starts(10 * 48000) == [0]
    assert segmenting_from(None, None) is None and segmenting_from(10, None) == Segmenting(10, 10)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [8, 2])  # 2: the 31 s clip's 6 windows go in 3 forwards
def test_segment_embedding_is_the_mean_of_its_windows(tiny_clap, long_folder, batch_size):
    import pyarrow.parquet as pq
    cells = pq.read_table(long_folder / "long.parquet").column("audio").to_pylist()
    seg = Segmenting(10, 5)
    clips = embed_clips(tiny_clap, long_folder, matcher=LabelMatcher(CLASSES), skips=SkipLog(),
                        batch_size=batch_size, segmenting=seg)
    assert [m.video_id for m in clips.metas] == ["long31", "c0", "c1"]
    manual, count, windows = _manual(tiny_clap, cells[0], seg)
    assert count == 6
    full = load_waveform(cells[0], max_samples=None)
    assert len(full) == 31 * 48000 and np.array_equal(windows[-1], full[-seg.samples:])
    torch.testing.assert_close(clips.audio[0], manual, atol=1e-6, rtol=0)
    for i in (1, 2):  # no longer than a window: one window, the clip itself, as without --segment
        one, count, _ = _manual(tiny_clap, cells[i], seg)
        assert count == 1
        torch.testing.assert_close(clips.audio[i], one, atol=1e-6, rtol=0)
    plain = embed_clips(tiny_clap, long_folder, matcher=LabelMatcher(CLASSES), skips=SkipLog(),
                        batch_size=batch_size)
    torch.testing.assert_close(plain.audio[1:], clips.audio[1:], atol=1e-6, rtol=0)
    assert (plain.audio[0] - clips.audio[0]).abs().max() > 1e-4  # the first 10 s are not the 31 s


@pytest.mark.slow
def test_segments_are_worker_independent_and_keyed_in_the_cache(tiny_clap, long_folder, tmp_path, monkeypatch):
    seg, matcher = Segmenting(10, 5), LabelMatcher(CLASSES)
    cache = EmbeddingCache(tmp_path / "cache")
    default = embed_clips(tiny_clap, long_folder, matcher=matcher, skips=SkipLog(), batch_size=2, cache=cache)
    counts = count_forwards(tiny_clap, monkeypatch)
    in_process = embed_clips(tiny_clap, long_folder, matcher=matcher, skips=SkipLog(), batch_size=2,
                             cache=cache, segmenting=seg)
    assert counts["audio"] == 6 + 1 + 1  # the default entries were not taken for segmented ones
    workers = embed_clips(tiny_clap, long_folder, matcher=matcher, skips=SkipLog(), batch_size=2,
                          num_workers=2, segmenting=seg)
    assert torch.equal(in_process.audio, workers.audio)
    again = embed_clips(tiny_clap, long_folder, matcher=matcher, skips=SkipLog(), batch_size=2,
                        cache=cache, segmenting=seg)
    assert counts["audio"] == 8 + 8 and torch.equal(again.audio, in_process.audio)  # workers: 8, cache: 0
    assert not torch.equal(default.audio[0], in_process.audio[0])


@pytest.mark.slow
def test_prompt_names():
    assert prompt_name("dog_bark") == "dog bark"
    assert prompt_name("Beep, bleep") == "Beep, bleep"
    assert prompt_name("air__conditioner ") == "air conditioner"
