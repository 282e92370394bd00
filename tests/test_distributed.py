"""``torchrun -m hyperbolic.distributed``: ranks split the rows, and their cache equals one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, embed_shard, prompts_for
from tests.test_embeddings import CLASSES, count_forwards, skip_counts, write_messy

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True])
def test_torchrun_cache_equals_one_process(tiny_clap, tiny_clap_dir, tmp_path, monkeypatch, full):
    """Two ranks fill the cache; the merge reuses all of it. With --no-full-batches each forward
    is one unit's rows wherever it runs, so the merged cache holds a single process's embeddings
    bit for bit; with full batches (the default) each rank batches its own clips, so clips can
    sit in batches of other sizes than in one process, which moves their last bits only."""
    folder = write_messy(tmp_path / "messy")
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hyperbolic.distributed", "--parquet-dir", str(folder), "--checkpoint", str(tiny_clap_dir),
           "--cache-dir", str(tmp_path / "cache"), "--class-labels", str(labels), "--embed-batch-size", "2",
           "--num-workers", "0", "--device", "cpu", "--summary-json", str(summary)] + ([] if full else ["--no-full-batches"])
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
    cold = embed_clips(tiny_clap, folder, matcher=matcher, skips=cold_skips, batch_size=2, require_labels=False,
                       full_batches=full)
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
    assert merged.metas == cold.metas
    if full:
        assert torch.allclose(merged.audio, cold.audio, atol=1e-6, rtol=0)
    else:
        assert torch.equal(merged.audio, cold.audio)
    assert skip_counts(merged_skips) == skip_counts(cold_skips)
    assert merged_skips.unknown_labels == cold_skips.unknown_labels
    assert torch.equal(text, tiny_clap.embed_text(prompts_for(CLASSES, "This is a sound of {label}.")))
    store = cache.audio(tiny_clap)
    assert all(len(list(d.glob("*.npz"))) == 1 for d in store.folder.iterdir())  # compacted by the merge


def test_workers_per_rank_count_the_cores_this_process_may_use(monkeypatch):
    """taskset (or a container's CPU set) narrows the cores: 3 usable of 64, 1 rank -> 2 workers."""
    import hyperbolic.embedding.split as split
    from hyperbolic.distributed import default_workers
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(split.os, "cpu_count", lambda: 64)
    assert split.usable_cores() == 3
    assert default_workers(1) == 2 and default_workers(2) == 0 and default_workers(3) == 0
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda pid: set(range(40)), raising=False)
    assert default_workers(1) == 8 and default_workers(4) == 8  # (40 - 4) // 4 = 9, at most 8
