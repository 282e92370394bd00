"""The embedding cache on its own: keys follow content, files verify themselves."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hyperbolic.embedding.cache as cache_mod
import test_clap_modelscope as test_script
import train_hyperbolic_clap as train_script
from data.audioset import SkipLog
from data.labels import LabelMatcher
from hyperbolic.embedding.cache import (
    CacheFileDamaged,
    EmbeddingCache,
    RowOutcome,
    audio_preprocessing,
    decode_npz,
    default_cache_dir,
    encode_npz,
    text_preprocessing,
)
from hyperbolic.embedding.clap import FrozenClap
from hyperbolic.embedding.embeddings import embed_clips
from tests.helpers import waves
from tests.test_embeddings import CLASSES, count_forwards, write_messy


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(cache_mod.CACHE_ENV, raising=False)
    assert default_cache_dir() == Path("~/.cache/hyperbolic_clap").expanduser()
    monkeypatch.setenv(cache_mod.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert EmbeddingCache().root == tmp_path / "elsewhere"


@pytest.fixture
def hashes(monkeypatch):
    """Count the files whose bytes are hashed."""
    calls = []
    real = cache_mod._file_sha256
    monkeypatch.setattr(cache_mod, "_file_sha256", lambda path: calls.append(path) or real(path))
    return calls


def test_file_digest_follows_the_bytes_and_is_remembered(tmp_path, hashes):
    a = tmp_path / "a.parquet"
    a.write_bytes(b"some parquet bytes" * 1000)
    cache = EmbeddingCache(tmp_path / "cache")
    digest = cache.file_digest(a)
    assert len(hashes) == 1
    assert EmbeddingCache(tmp_path / "cache").file_digest(a) == digest and len(hashes) == 1  # memo on disk
    copy = shutil.copy(a, tmp_path / "b.parquet")
    assert cache.file_digest(copy) == digest and len(hashes) == 2
    os.utime(a, ns=(1, 1))  # touched: hashed again, same digest
    assert cache.file_digest(a) == digest and len(hashes) == 3
    data = bytearray(a.read_bytes())
    data[500] ^= 0x01  # same size, one bit
    a.write_bytes(bytes(data))
    assert cache.file_digest(a) != digest


def test_audio_digests_are_remembered_per_file(tmp_path, monkeypatch):
    """A warm run reads the clips' audio digests from the cache, not the audio bytes; a rewritten
    file, or a damaged note, is read again; the values are those of data.audioset.audio_digests."""
    import data.audioset as audioset
    from data.audioset import iter_clips
    from data.synthetic import write_parquet_shard
    from tests.test_embeddings import cell, row, tone

    folder = tmp_path / "data"
    folder.mkdir()
    write_parquet_shard(folder / "a.parquet", [row("a0", cell(tone(300.0)), ["Speech"]),
                                               row("a1", cell(tone(300.0)), ["Dog"]),   # same audio as a0
                                               row("a2", {"bytes": None, "path": "x.wav"}, ["Dog"])])
    write_parquet_shard(folder / "b.parquet", [row("b0", cell(tone(500.0)), ["Music"])])
    metas = [c.meta for c in iter_clips(folder, matcher=LabelMatcher(CLASSES), skips=SkipLog(), decode=False)]
    want = audioset.audio_digests(folder, metas)
    assert want[0] == want[1] and want[0] != want[3] and want[2] is None  # (a path-only cell has no bytes)
    reads = []
    real = audioset.audio_digests

    def counting(folder, metas):
        reads.append(sorted({m.file for m in metas}))
        return real(folder, metas)

    monkeypatch.setattr(audioset, "audio_digests", counting)
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.audio_digests(folder, metas) == want and reads == [["a.parquet"], ["b.parquet"]]
    reads.clear()
    assert EmbeddingCache(tmp_path / "cache").audio_digests(folder, metas) == want
    assert reads == [["a.parquet"]]  # only for a2, whose missing digest is not remembered
    reads.clear()
    write_parquet_shard(folder / "b.parquet", [row("b0", cell(tone(700.0)), ["Music"])])  # rewritten
    again = cache.audio_digests(folder, metas)
    assert reads == [["a.parquet"], ["b.parquet"]] and again[:3] == want[:3] and again[3] != want[3]
    notes = list((tmp_path / "cache" / "audio_digests").glob("*.json"))
    for note in notes:
        note.write_text("{not json")
    reads.clear()
    assert cache.audio_digests(folder, metas) == again and reads == [["a.parquet"], ["b.parquet"]]


def test_model_fingerprint_is_hashed_once(tiny_clap_dir, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_clap_dir, tmp_path / "clap")
    clap = FrozenClap(model=None, processor=None, device=torch.device("cpu"), path=folder)
    calls = []
    real = FrozenClap.fingerprint
    monkeypatch.setattr(FrozenClap, "fingerprint", lambda self: calls.append(1) or real(self))
    fp = EmbeddingCache(tmp_path / "cache").model_fingerprint(clap)
    assert fp == real(clap) and len(calls) == 1
    assert EmbeddingCache(tmp_path / "cache").model_fingerprint(clap) == fp and len(calls) == 1
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(1, 1))
    assert EmbeddingCache(tmp_path / "cache").model_fingerprint(clap) == fp and len(calls) == 2


def test_keys_separate_model_preprocessing_and_tokenizer(tiny_clap, tiny_clap_dir, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    audio, text = cache.audio(tiny_clap).folder, cache.text(tiny_clap).folder
    assert audio.relative_to(cache.root).parts[0] == text.relative_to(cache.root).parts[0]
    # the same weights elsewhere with another tokenizer setting: same model, other text key
    folder = shutil.copytree(tiny_clap_dir, tmp_path / "clap")
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"note": "edited",', 1))
    copy = FrozenClap.load(str(folder), "cpu")
    assert cache.audio(copy).folder == audio and cache.text(copy).folder != text
    monkeypatch.setitem(cache_mod.audio_rules.PREPROCESSING, "crop", "middle")
    assert cache.audio(tiny_clap).folder != audio and cache.text(tiny_clap).folder == text


def test_config_json_and_library_versions_are_in_the_keys(tiny_clap, tiny_clap_dir, tmp_path, monkeypatch, caplog):
    folder = shutil.copytree(tiny_clap_dir, tmp_path / "clap")
    clap = FrozenClap.load(str(folder), "cpu")
    cache = EmbeddingCache(tmp_path / "cache")
    audio, text = cache.audio(clap).folder, cache.text(clap).folder
    with caplog.at_level(logging.WARNING, logger="hyperbolic.embedding.cache"):
        assert cache.audio(clap).folder == audio and cache.text(clap).folder == text
    assert "changed" not in caplog.text  # the same key twice: a hit, nothing logged

    config = folder / "config.json"  # an edited architecture with the same weights
    config.write_text(config.read_text().replace("{", '{"note": "edited",', 1))
    with caplog.at_level(logging.WARNING, logger="hyperbolic.embedding.cache"):
        assert cache.audio(clap).folder != audio and cache.text(clap).folder != text
    assert "the audio key" in caplog.text and "model_config.config_json" in caplog.text
    audio, text = cache.audio(clap).folder, cache.text(clap).folder

    real = cache_mod.library_versions
    for name, what in (("transformers", "both"), ("torch", "both"), ("soxr", "audio"),
                       ("libsndfile", "audio"), ("soundfile", "audio")):
        monkeypatch.setattr(cache_mod, "library_versions",
                            lambda *, audio, _n=name: {**real(audio=audio), _n: "0.0.upgraded"}
                            if _n in real(audio=audio) else real(audio=audio))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hyperbolic.embedding.cache"):
            new_audio, new_text = cache.audio(clap).folder, cache.text(clap).folder
        assert new_audio != audio, name
        assert (new_text != text) == (what == "both"), name
        assert f"libraries.{name}" in caplog.text and "0.0.upgraded" in caplog.text
        monkeypatch.setattr(cache_mod, "library_versions", real)
        cache.audio(clap), cache.text(clap)  # back to the real versions (logged as a change too)


def _arrays():
    rng = np.random.default_rng(0)
    return {"embeddings": rng.standard_normal((5, 8)).astype(np.float32),
            "names": np.array(["a", "bb", ""], dtype=np.str_)}


def test_npz_round_trip_and_damage():
    arrays = _arrays()
    data = encode_npz({"kind": "x"}, arrays)
    meta, back = decode_npz(data, ("embeddings", "names"))
    assert meta["kind"] == "x"
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(CacheFileDamaged):
            decode_npz(data[:cut], ("embeddings", "names"))
    start = data.index(arrays["embeddings"].tobytes())
    for offset in (0, 77, 159):
        flipped = bytearray(data)
        flipped[start + offset] ^= 0x10
        with pytest.raises(CacheFileDamaged):
            decode_npz(bytes(flipped), ("embeddings", "names"))
    with pytest.raises(CacheFileDamaged):
        decode_npz(data, ("embeddings", "missing"))


def _outcome(row, seed=0, reason=""):
    emb = None if reason else np.random.default_rng([seed, row]).standard_normal(4).astype(np.float32)
    return RowOutcome(row, f"v{row}", emb, reason, "why" if reason else "")


def test_audio_chunks_merge_and_compact(tmp_path):
    store = cache_mod.AudioStore(tmp_path / "audio", model="m" * 64, prep="p" * 64, dim=4)
    digest = "f" * 64
    assert store.load(digest).outcomes == {}
    store.write(digest, [_outcome(0), _outcome(1, reason="decode_error")])
    store.write(digest, [_outcome(1, seed=1), _outcome(2)], damaged=True)
    record = store.load(digest)
    assert sorted(record.outcomes) == [0, 1, 2] and len(record.chunks) == 2 and record.damaged
    assert record.outcomes[1].reason == "" and record.outcomes[1].video_id == "v1"  # the newer chunk wins
    np.testing.assert_array_equal(record.outcomes[1].embedding, _outcome(1, seed=1).embedding)
    np.testing.assert_array_equal(record.outcomes[2].embedding, _outcome(2).embedding)
    store.compact(digest)
    again = store.load(digest)
    assert len(again.chunks) == 1 and again.damaged
    assert {r: (o.video_id, o.reason) for r, o in again.outcomes.items()} == \
        {r: (o.video_id, o.reason) for r, o in record.outcomes.items()}
    # another model's chunk in this folder is not used (and is removed)
    other = cache_mod.AudioStore(tmp_path / "audio", model="o" * 64, prep="p" * 64, dim=4)
    stray = other.write(digest, [_outcome(7)])
    assert 7 not in store.load(digest).outcomes and not stray.exists()


def test_text_store(tmp_path, caplog):
    store = cache_mod.TextStore(tmp_path / "text", model="m" * 64, prep="t" * 64)
    texts = ["a dog", "a cat"]
    emb = torch.randn(2, 4)
    assert store.get(texts) is None
    path = store.put(texts, emb)
    assert torch.equal(store.get(texts), emb)
    assert store.get(["a dog"]) is None and store.get(["a cat", "a dog"]) is None
    path.write_bytes(path.read_bytes()[:-20])
    with caplog.at_level(logging.WARNING, logger="hyperbolic.embedding.cache"):
        assert store.get(texts) is None
    assert "damaged" in caplog.text and not path.exists()


@pytest.mark.slow
def test_precision_is_part_of_the_cache_key(tiny_clap, tiny_bf16, tmp_path, monkeypatch):
    # fp32 keys are what they were before precisions existed, so old caches still hit
    assert "precision" not in audio_preprocessing(tiny_clap) and "precision" not in text_preprocessing(tiny_clap)
    assert audio_preprocessing(tiny_bf16)["precision"] == "bf16"
    folder = write_messy(tmp_path / "messy")
    cache, matcher = EmbeddingCache(tmp_path / "cache"), LabelMatcher(CLASSES)
    fp32 = embed_clips(tiny_clap, folder, matcher=matcher, skips=SkipLog(), cache=cache, batch_size=2,
                       require_labels=False)
    counts = count_forwards(tiny_bf16, monkeypatch)
    bf16 = embed_clips(tiny_bf16, folder, matcher=matcher, skips=SkipLog(), cache=cache, batch_size=2,
                       require_labels=False)
    assert counts["audio"] == len(fp32) == len(bf16) == 8  # nothing taken from the fp32 entries
    assert not torch.equal(fp32.audio, bf16.audio)
    assert cache.audio(tiny_clap).folder != cache.audio(tiny_bf16).folder


@pytest.mark.slow
def test_warm_run_does_not_load_the_clap_weights(tiny_clap_dir, demo_train_dir, tmp_path, capsys):
    argv = ["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--epochs", "1", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    assert train_script.main([*argv, "--output-dir", str(tmp_path / "cold")]) == 0
    assert "loading CLAP weights" in capsys.readouterr().err  # the scripts log to stderr
    assert train_script.main([*argv, "--output-dir", str(tmp_path / "warm")]) == 0
    assert test_script.main(["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir),
                             "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"),
                             "--num-samples", "1000", "--output-json", str(tmp_path / "r.json")]) == 0
    assert "loading CLAP weights" not in capsys.readouterr().err  # every embedding came from the cache
    clap = FrozenClap.load(str(tiny_clap_dir), "cpu")
    assert clap.embed_dim == 32 and clap._model is None
    assert clap.embed_audio(waves(n=1)).shape == (1, 32) and clap._model is not None
