"""The features behind the performance work, checked for what they compute (timings live in
benchmarks/run.py): reduced-precision CLAP forwards, windows over long recordings, the torchrun
embedding entry and its merged cache, and the ONNX export of the similarity head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import test_clap_modelscope as test_script
import train_hyperbolic_clap as train_script
from data.audio import Segmenting, load_waveform, segmenting_from
from data.audioset import SkipLog
from data.labels import LabelMatcher
from data.synthetic import encode_audio, write_parquet_shard
from hyperbolic.embedding.cache import EmbeddingCache, audio_preprocessing, text_preprocessing
from hyperbolic.embedding.clap import ClapPrecisionError, FrozenClap
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, embed_shard, prompts_for
from hyperbolic.evaluation.scoring import load_projection
from hyperbolic.model.projector import Projector
from hyperbolic.embedding.tiny_clap import _configs
from tests.test_embeddings import CLASSES, count_forwards, skip_counts, write_messy

pytestmark = pytest.mark.slow  # end to end: the tiny CLAP, generated parquet, whole runs

REPO = Path(__file__).resolve().parents[1]


def waves(seed: int = 0, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(48000 * (k + 1))).astype(np.float32) for k in range(n)]


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


# ------------------------------------------------------------------ precision


@pytest.fixture(scope="module")
def tiny_bf16(tiny_clap_dir):
    return FrozenClap.load(str(tiny_clap_dir), "cpu", precision="bf16")


def test_bf16_forward_is_close_to_fp32_and_returns_float32(tiny_clap, tiny_bf16):
    clips = waves()
    a32, a16 = tiny_clap.embed_audio(clips), tiny_bf16.embed_audio(clips)
    assert a16.dtype == torch.float32 and a16.shape == a32.shape
    assert not torch.equal(a16, a32)  # autocast did run the forward in bfloat16
    assert cosines(a16, a32).min() >= 0.999
    torch.testing.assert_close(a16.norm(dim=-1), torch.ones(len(clips)), atol=1e-5, rtol=0)
    prompts = prompts_for(CLASSES, "This is a sound of {label}.")
    t32, t16 = tiny_clap.embed_text(prompts), tiny_bf16.embed_text(prompts)
    assert t16.dtype == torch.float32 and not torch.equal(t16, t32)
    assert cosines(t16, t32).min() >= 0.999


def test_precisions_the_device_cannot_run_are_refused(tiny_clap_dir):
    with pytest.raises(ClapPrecisionError, match="--precision fp16 runs only on CUDA"):
        FrozenClap.load(str(tiny_clap_dir), "cpu", precision="fp16")
    with pytest.raises(ClapPrecisionError, match="fp32, bf16, fp16"):
        FrozenClap.load(str(tiny_clap_dir), "cpu", precision="fp8")


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


@pytest.mark.parametrize("script", [train_script, test_script])
@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA --device"),
    (["--segment", "12"], "--segment must be in (0, 10]"),
    (["--segment", "5", "--hop", "6"], "--hop must be in (0, --segment]"),
    (["--hop", "5"], "--hop needs --segment"),
])
def test_flags_are_checked(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--parquet-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ mel features


@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_fast_mel_features_are_the_extractors_bit_for_bit(tiny_clap, padding):
    from threadpoolctl import threadpool_limits

    from hyperbolic.embedding.clap import _fast_features
    fe = type(tiny_clap.processor.feature_extractor).from_dict(tiny_clap.processor.feature_extractor.to_dict())
    fe.padding = padding
    rng = np.random.default_rng(4)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (480000, 479999, 48000, 1001, 7)]
    with threadpool_limits(limits=1, user_api="blas"):  # as audio_features runs both
        want = dict(fe(clips, sampling_rate=48000, return_tensors="pt"))
        got = _fast_features(fe, clips)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


# ------------------------------------------------------------------ a warm cache never loads the weights


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


# ------------------------------------------------------------------ windows over long recordings


def test_window_starts_cover_the_recording_and_end_on_it():
    seg = Segmenting(10, 5)
    n = 31 * 48000
    starts = seg.starts(n)
    assert [s / 48000 for s in starts] == [0, 5, 10, 15, 20, 21]
    assert starts[-1] + seg.samples == n  # the last window is aligned to the end
    assert Segmenting(10, 5).starts(30 * 48000) == [s * 48000 for s in (0, 5, 10, 15, 20)]  # no duplicate
    assert seg.starts(4 * 48000) == [0] and seg.starts(10 * 48000) == [0]
    assert segmenting_from(None, None) is None and segmenting_from(10, None) == Segmenting(10, 10)


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


# ------------------------------------------------------------------ many processes


def test_ranks_split_the_rows_between_them(tiny_clap, tmp_path, monkeypatch):
    folder = write_messy(tmp_path / "messy")
    cache, matcher = EmbeddingCache(tmp_path / "cache"), LabelMatcher(CLASSES)
    counts = count_forwards(tiny_clap, monkeypatch)
    done = [embed_shard(tiny_clap, folder, rank=r, world_size=2, matcher=matcher, cache=cache, batch_size=2,
                        require_labels=False) for r in (0, 1)]
    assert [d["computed"] for d in done] == [7, 4] and counts["audio"] == 8  # 3 rows fail to decode
    stats = {}
    embed_clips(tiny_clap, folder, matcher=matcher, skips=SkipLog(), cache=cache, batch_size=2,
                require_labels=False, stats=stats)
    assert stats == {"reused": 8, "computed": 0} and counts["audio"] == 8


def test_torchrun_cache_equals_one_process(tiny_clap, tiny_clap_dir, tmp_path, monkeypatch):
    folder = write_messy(tmp_path / "messy")
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hyperbolic.distributed", "--parquet-dir", str(folder), "--checkpoint", str(tiny_clap_dir),
           "--cache-dir", str(tmp_path / "cache"), "--class-labels", str(labels), "--embed-batch-size", "2",
           "--num-workers", "0", "--device", "cpu", "--summary-json", str(summary)]
    # The same thread count as this process (torchrun would set 1): float sums split across threads
    # differently round differently, and the embeddings are compared bit for bit.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(summary.read_text())
    assert info["world_size"] == 2 and [r["computed"] for r in info["ranks"]] == [7, 4]
    assert info["merge_computed"] == 0 and info["merge_reused"] == 8

    matcher = LabelMatcher(CLASSES)
    cold_skips = SkipLog()
    cold = embed_clips(tiny_clap, folder, matcher=matcher, skips=cold_skips, batch_size=2, require_labels=False)
    counts = count_forwards(tiny_clap, monkeypatch)
    cache = EmbeddingCache(tmp_path / "cache")
    for require_labels in (False, True):  # evaluation and training read the same entries
        skips, stats = SkipLog(), {}
        merged = embed_clips(tiny_clap, folder, matcher=matcher, skips=skips, batch_size=2, cache=cache,
                             require_labels=require_labels, stats=stats)
        assert stats["computed"] == 0
    merged_skips = SkipLog()
    merged = embed_clips(tiny_clap, folder, matcher=matcher, skips=merged_skips, batch_size=2, cache=cache,
                         require_labels=False)
    text = embed_prompts(tiny_clap, prompts_for(CLASSES, "This is a sound of {label}."), cache=cache)
    assert counts["audio"] == counts["text"] == 0
    assert torch.equal(merged.audio, cold.audio) and merged.metas == cold.metas
    assert skip_counts(merged_skips) == skip_counts(cold_skips)
    assert merged_skips.unknown_labels == cold_skips.unknown_labels
    assert torch.equal(text, tiny_clap.embed_text(prompts_for(CLASSES, "This is a sound of {label}.")))
    store = cache.audio(tiny_clap)
    assert all(len(list(d.glob("*.npz"))) == 1 for d in store.folder.iterdir())  # compacted by the merge


# ------------------------------------------------------------------ ONNX


def _checkpoint(path: Path, *, geometry: str, c: float, temperature: float, dim: int = 32, scale: float = 1.0):
    torch.manual_seed(0)
    projector = Projector(dim, geometry=geometry, clip_r=0.9)
    with torch.no_grad():
        projector.linear.weight.mul_(scale)  # scale 20: most points land on the clip radius
        projector.linear.bias.normal_(0, 0.1)
    torch.save({"epoch": 3, "projection_state_dict": projector.state_dict(), "c": c, "temperature": temperature,
                "embed_dim": dim, "geometry": geometry, "clip_r": 0.9, "prompt_template": "A {label} sound.",
                "config": {}}, path)
    return path


@pytest.mark.parametrize("geometry, c, temperature, scale", [
    ("hyperbolic", 1.0, 1.0, 1.0), ("hyperbolic", 0.3, 0.07, 20.0), ("euclidean", 1.0, 0.1, 1.0)])
def test_onnx_scores_match_evaluation(tmp_path, geometry, c, temperature, scale):
    import onnx
    import onnxruntime as ort

    from hyperbolic.export import main as export_main
    ckpt = _checkpoint(tmp_path / "best.pth", geometry=geometry, c=c, temperature=temperature, scale=scale)
    out = tmp_path / "head.onnx"
    assert export_main([str(ckpt), str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["geometry"] == geometry and float(meta["c"]) == c and meta["prompt_template"] == "A {label} sound."
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_projection(ckpt)
    g = torch.Generator().manual_seed(5)
    for n, m in ((1, 527), (64, 3)):  # dynamic sizes, none of them the traced ones
        a = F.normalize(torch.randn(n, 32, generator=g), dim=-1)
        t = F.normalize(torch.randn(m, 32, generator=g), dim=-1)
        got = session.run(["scores"], {"audio_emb": a.numpy(), "text_emb": t.numpy()})[0]
        want = model.scores(a, t)  # exactly what test_clap_modelscope.py scores with
        assert got.shape == (n, m)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_train_script_exports_the_best_checkpoint(tmp_path, tiny_clap_dir, demo_train_dir):
    import onnx
    out = tmp_path / "run"
    argv = ["--parquet-dir", str(demo_train_dir), "--checkpoint", str(tiny_clap_dir), "--device", "cpu",
            "--output-dir", str(out), "--epochs", "2", "--num-workers", "0", "--export-onnx", str(tmp_path / "p.onnx")]
    assert train_script.main(argv) == 0
    best = json.loads((out / "setup.json").read_text())["summary"]["best_checkpoint"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    assert meta["source_checkpoint"] == str(Path(best).resolve())


# ------------------------------------------------------------------ the base-size builder


def test_base_size_is_larger_clap_general():
    audio, text = _configs("base", None)
    assert (tuple(audio.depths), tuple(audio.num_attention_heads)) == ((2, 2, 6, 2), (4, 8, 16, 32))
    assert (audio.patch_embeds_hidden_size, audio.hidden_size, audio.projection_dim) == (96, 768, 512)
    assert (audio.spec_size, audio.num_mel_bins, audio.enable_fusion) == (256, 64, False)
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.vocab_size) == (12, 768, 12, 50265)
    with pytest.raises(ValueError, match="size must be one of"):
        _configs("huge", None)
