"""Full forward batches: the extraction engine forwards ``batch_size`` clips at a time, in reading
order, except the run's last batch, whatever the number of decoding workers; the embeddings are
then bit-identical across worker counts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher
from data.synthetic import write_parquet_shard
from hyperbolic.embedding.batches import FullBatches
from hyperbolic.embedding.embeddings import embed_clips
from tests.test_embeddings import CLASSES, cell, row, tone


def _feed(order, arrivals, size):
    """Run FullBatches over ``arrivals`` (("add", file, rows) / ("skip", file, row) / ("done", file))."""
    sent, finished = [], []
    fb = FullBatches(order, size, forward=lambda b: sent.append([(p[0], p[1]) for p in b]),
                     finished=finished.append)
    for event in arrivals:
        if event[0] == "add":
            rows = event[2]
            fb.add(event[1], rows, [f"v{r}" for r in rows], {"x": torch.arange(len(rows)).float()[:, None]})
        elif event[0] == "skip":
            fb.resolve(event[1], event[2])
        else:
            fb.file_done(event[1])
    fb.flush()
    return sent, finished, fb


@pytest.mark.parametrize("seed", range(20))
def test_batches_are_the_reading_order_cut_in_full_batches(seed):
    """Units arrive shuffled (within a file: workers take turns), some rows fail to decode, one
    file's read stops part-way; the batches are brute-force chunks of the rows that came, in order."""
    rng = random.Random(seed)
    size = rng.randint(1, 6)
    order, arrivals, expected = [], [], []
    for file in range(rng.randint(1, 4)):
        needed = sorted(rng.sample(range(40), rng.randint(1, 25)))
        order.append((file, needed))
        cuts = sorted(set(rng.sample(range(1, len(needed)), min(len(needed) - 1, rng.randint(0, 5)))))
        units = [needed[a:b] for a, b in zip([0] + cuts, cuts + [len(needed)])]
        lost = rng.random() < 0.3  # a damaged read: its last units never come
        kept = units[:max(1, len(units) - 2)] if lost else units
        events = []
        for unit in kept:
            failed = {r for r in unit if rng.random() < 0.2}
            events += [("skip", file, r) for r in sorted(failed)]
            if len(failed) < len(unit):
                events.append(("add", file, [r for r in unit if r not in failed]))
            expected += [(file, r) for r in unit if r not in failed]
        rng.shuffle(events)
        arrivals += events + [("done", file)]
    sent, finished, fb = _feed(order, arrivals, size)
    assert sent == [expected[i:i + size] for i in range(0, len(expected), size)]
    assert finished == [f for f, _ in order]
    assert not fb.waiting and not fb.batch


def test_a_file_finishes_only_when_its_last_rows_are_forwarded():
    finished_at = []
    sent = []
    fb = FullBatches([(0, [0, 1, 2]), (1, [0, 1])], 4, forward=sent.append,
                     finished=lambda f: finished_at.append((f, len(sent))))
    fb.add(0, [0, 1, 2], list("abc"), {"x": torch.zeros(3, 1)})
    fb.file_done(0)
    assert finished_at == []  # its rows wait in the batch being filled
    fb.add(1, [0, 1], list("de"), {"x": torch.zeros(2, 1)})
    assert finished_at == [(0, 1)] and [len(b) for b in sent] == [4]
    fb.file_done(1)
    fb.flush()
    assert finished_at == [(0, 1), (1, 2)] and [len(b) for b in sent] == [4, 1]


def _awkward(folder):
    """Three files whose row groups (7, 5, 3 rows) make units of awkward sizes; two rows fail to decode."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"bytes": b"\x00garbage" * 50, "path": None}
    for name, n, group in (("a", 17, 7), ("b", 11, 5), ("c", 4, 3)):
        write_parquet_shard(folder / f"{name}.parquet", [
            row(f"{name}{i}", bad if (name, i) in {("a", 3), ("b", 9)} else cell(tone(100.0 + 37 * i + len(name))),
                [CLASSES[i % len(CLASSES)]]) for i in range(n)], row_group_size=group)
    return folder


def _record_batch_sizes(clap, monkeypatch) -> list[int]:
    """The size of every audio forward of ``clap`` from here on, in order."""
    sizes: list[int] = []
    forward = clap.model.get_audio_features

    def recording(**kw):
        sizes.append(len(kw["input_features"]))
        return forward(**kw)

    monkeypatch.setattr(clap.model, "get_audio_features", recording)
    return sizes


@pytest.mark.slow
def test_forward_batches_are_full_and_worker_independent(tiny_clap, tmp_path, monkeypatch):
    folder = _awkward(tmp_path / "awkward")
    sizes = _record_batch_sizes(tiny_clap, monkeypatch)
    results = {}
    for workers in (0, 1, 2):
        sizes.clear()
        skips = SkipLog()
        clips = embed_clips(tiny_clap, folder, matcher=LabelMatcher(CLASSES), skips=skips, batch_size=4,
                            num_workers=workers, require_labels=False, full_batches=True)
        assert sizes == [4] * 7 + [2], (workers, sizes)  # 30 decodable clips
        assert skips.rows_skipped() == 2
        results[workers] = clips
    sizes.clear()
    per_unit = embed_clips(tiny_clap, folder, matcher=LabelMatcher(CLASSES), skips=SkipLog(), batch_size=4,
                           num_workers=0, require_labels=False, full_batches=False)
    assert sizes == [3, 3, 4, 3, 3, 4, 1, 4, 1, 3, 1]  # --no-full-batches: one unit's needed rows
    # the same clips, equal up to the last bits that a batch's size moves
    assert torch.allclose(per_unit.audio, results[0].audio, atol=1e-6, rtol=0)
    ids = [m.video_id for m in results[0].metas]
    assert ids == [f"{n}{i}" for n, k in (("a", 17), ("b", 11), ("c", 4)) for i in range(k)
                   if (n, i) not in {("a", 3), ("b", 9)}]
    for workers in (1, 2):
        assert [m.video_id for m in results[workers].metas] == ids
        assert np.array_equal(results[workers].audio.numpy(), results[0].audio.numpy())



@pytest.mark.slow
@pytest.mark.parametrize("batch", [4, 3])
def test_the_split_probe_decodes_into_the_runs_own_batches(tiny_clap, tmp_path, monkeypatch, batch):
    """--num-workers unset: the probe decodes here, into the run's full batches, until the first
    is forwarded. In batches of 4 the first unit holds 3 clips (row a3 fails to decode), so the
    probe decodes two units for that batch; in batches of 3 the first unit is the first batch.
    Either way no row is decoded twice and no forward is spent outside the run's batches (before,
    the probe forwarded its unit alone, and then decoded it again)."""
    import data.audioset as audioset
    folder = _awkward(tmp_path / "awkward")
    sizes = _record_batch_sizes(tiny_clap, monkeypatch)
    decoded = []
    real = audioset.decode_audio_cell
    monkeypatch.setattr(audioset, "decode_audio_cell", lambda cell, **kw: decoded.append(1) or real(cell, **kw))
    kw = dict(matcher=LabelMatcher(CLASSES), batch_size=batch, require_labels=False, full_batches=True)
    fixed = embed_clips(tiny_clap, folder, skips=SkipLog(), num_workers=0, **kw)
    run_batches = list(sizes)
    assert run_batches == ([4] * 7 + [2] if batch == 4 else [3] * 10)  # 30 decodable clips
    assert len(decoded) == 32  # and the two that fail
    sizes.clear()
    decoded.clear()
    monkeypatch.setattr("hyperbolic.embedding.extraction.usable_cores", lambda: 4)  # so the probe runs
    monkeypatch.setattr("hyperbolic.embedding.extraction.choose_split", lambda *a, **k: 0)  # decoded here: counted
    probed = embed_clips(tiny_clap, folder, skips=SkipLog(), num_workers=None, **kw)
    assert sizes == run_batches and len(decoded) == 32
    assert np.array_equal(probed.audio.numpy(), fixed.audio.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_full_batches_run_resumes_from_its_cache(tiny_clap, tmp_path, monkeypatch, workers):
    """Killed after 3 forwards, the run kept what it had computed; the rerun forwards only the rest
    and gives the clips of a cold run (equal up to the last bits of its short batch)."""
    from hyperbolic.embedding.cache import EmbeddingCache
    from tests.test_embeddings import count_forwards

    folder = _awkward(tmp_path / "awkward")
    kw = dict(matcher=LabelMatcher(CLASSES), batch_size=4, require_labels=False, full_batches=True)
    cold = embed_clips(tiny_clap, folder, skips=SkipLog(), num_workers=0, **kw)
    cache = EmbeddingCache(tmp_path / "cache")
    counts = count_forwards(tiny_clap, monkeypatch, fail_after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        embed_clips(tiny_clap, folder, skips=SkipLog(), cache=cache, num_workers=workers, **kw)
    assert counts["audio"] == 12
    monkeypatch.undo()
    counts = count_forwards(tiny_clap, monkeypatch)
    stats = {}
    resumed = embed_clips(tiny_clap, folder, skips=SkipLog(), cache=cache, num_workers=workers, stats=stats, **kw)
    assert stats == {"reused": 12, "computed": 18} and counts["audio"] == 18
    assert [m.video_id for m in resumed.metas] == [m.video_id for m in cold.metas]
    assert torch.equal(resumed.audio[:12], cold.audio[:12])  # the saved clips, bit for bit
    assert torch.allclose(resumed.audio, cold.audio, atol=1e-6, rtol=0)
    assert len(list(cache.root.glob("*/*/audio/*/*.npz"))) == 3  # each finished file's chunks merged


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True])
def test_a_partly_cached_run_against_a_cold_one(tiny_clap, tmp_path, full):
    """One file rewritten after a cached run: only its rows are computed again. With
    --no-full-batches they sit in the batches a cold run gives them (one unit's rows), so the run
    equals a cold one bit for bit; with full batches they are batched on their own, not with the
    previous file's last rows as in a cold run, and agree with it to the last bits."""
    from hyperbolic.embedding.cache import EmbeddingCache

    folder = _awkward(tmp_path / "awkward")
    kw = dict(matcher=LabelMatcher(CLASSES), batch_size=4, require_labels=False, full_batches=full, num_workers=0)
    cache = EmbeddingCache(tmp_path / "cache")
    embed_clips(tiny_clap, folder, skips=SkipLog(), cache=cache, **kw)
    write_parquet_shard(folder / "c.parquet", [row(f"c{i}", cell(tone(900.0 + 41 * i)), [CLASSES[i]])
                                               for i in range(4)], row_group_size=3)
    stats = {}
    partly = embed_clips(tiny_clap, folder, skips=SkipLog(), cache=cache, stats=stats, **kw)
    cold = embed_clips(tiny_clap, folder, skips=SkipLog(), **kw)
    assert stats == {"reused": 26, "computed": 4}
    assert [m.video_id for m in partly.metas] == [m.video_id for m in cold.metas]
    assert torch.equal(partly.audio[:26], cold.audio[:26])  # the reused files
    if full:
        assert torch.allclose(partly.audio, cold.audio, atol=1e-6, rtol=0)
    else:
        assert torch.equal(partly.audio, cold.audio)
