"""The automatic decoding split (``--num-workers`` unset): the cost model of ``choose_split`` in
closed form, and an engine whose probe and chosen split give exactly what fixed splits give."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from data.audioset import SkipLog
from data.labels import LabelMatcher
from hyperbolic.embedding import extraction
from hyperbolic.embedding.embeddings import embed_clips
from hyperbolic.embedding.split import choose_split, split_costs, worth_measuring
from tests.test_embeddings import CLASSES, assert_same, write_messy


def cost(decode, forward, cores, threads, w):
    """Seconds per clip with w workers, written out independently of choose_split's loop."""
    if w == 0:
        return decode + forward
    return max(forward * threads / min(threads, cores - w), decode / w)


@pytest.mark.parametrize("decode,forward,cores,want", [
    (0.015, 0.160, 2, 0),   # base-size CLAP on 2 cores: the forward needs both cores
    (0.017, 0.006, 2, 1),   # tiny CLAP on 2 cores: decode-bound, a worker overlaps it
    (0.015, 0.030, 16, 1),  # many cores: one core lost costs 1/16 of the forward, decoding hides
    (0.150, 0.010, 16, 8),  # very slow decoding: as many workers as allowed (8)
    (0.001, 0.100, 1, 0),   # one core: never a worker
])
def test_closed_form_cases(decode, forward, cores, want):
    assert choose_split(decode, forward, cores) == want


def test_a_forward_that_threads_do_not_speed_gets_a_worker():
    # The tiny CLAP on the loaded 2-core VM: 68 ms of forward on 2 threads and as much on 1 (the
    # measured one_less), 60 ms of decoding: a worker hides the decoding (measured: 1.7x faster).
    assert choose_split(0.060, 0.068, 2) == 0                  # assumed perfect scaling: no worker
    assert choose_split(0.060, 0.068, 2, one_less=1.0) == 1
    # one_less = 1.5 on 4 threads: each thread lost costs half of a perfectly scaling forward's loss.
    # W=1: slow = 1 + 0.5 * 3 * 1/3 = 1.5 -> max(0.15, 0.2) = 0.2; W=2: 1 + 0.5 * 3 * 2/2 = 2.5 -> 0.25.
    assert choose_split(0.2, 0.1, 4, one_less=1.5) == 1


def test_a_worker_decodes_at_the_cpu_cost_not_the_threaded_wall_time():
    # This process computes a batch's mel features on every thread (10 ms a clip on the clock here),
    # a worker on one (17 ms of CPU): the tiny CLAP's 6 ms forward no longer gains from a worker.
    # 0 workers: 0.010 + 0.006 = 0.016; 1 worker: max(0.006 * 1.0, 0.017) = 0.017.
    assert choose_split(0.010, 0.006, 2, one_less=1.0, decode_cpu_s=0.017) == 0
    assert choose_split(0.010, 0.006, 2, one_less=1.0) == 1  # had it decoded at the clock's pace
    # 8 cores, a worker per 1/4 of the CPU cost: max(0.05 * 8/6, 0.12 / 2) = 0.067 < 0.05 + 0.03
    assert choose_split(0.030, 0.050, 8, decode_cpu_s=0.120) == 2


def test_one_thread_less_is_timed_only_where_a_worker_could_repay_it():
    # base-size CLAP on 2 cores: even if a second thread did nothing (one_less = 1), a worker saves
    # at most 0.101 - max(0.090, 0.020) = 11 ms a clip; the timing costs (1 + 3 * 3) * 90 ms = 0.9 s,
    # and is done where a worker could save 3x that, 2.7 s
    kw = dict(threads=2, decode_cpu_s=0.020)
    assert not worth_measuring(0.011, 0.090, 2, 245, **kw)   # 245 * 0.011 = 2.695 s
    assert worth_measuring(0.011, 0.090, 2, 246, **kw)       # 2.706 s
    # the tiny CLAP, decoding on every thread here: a worker (17 ms of CPU) never beats 10 + 6 ms
    assert not worth_measuring(0.010, 0.006, 2, 10**6, threads=2, decode_cpu_s=0.017)
    assert split_costs(0.010, 0.006, 2, one_less=1.0, decode_cpu_s=0.017) == pytest.approx([0.016, 0.017])


def test_the_thread_timing_is_the_median_of_interleaved_pairs(monkeypatch):
    """One pair off by 2x (a neighbour's burst) does not hand a core to a worker."""
    clock = [0.0]
    durations = iter([0.5, 0.20, 0.10, 0.10, 0.10, 0.19, 0.10])  # untimed, then (1 thread, 2 threads) x 3
    seen = []

    class Clap:
        def embed_features(self, part):
            seen.append((torch.get_num_threads(), len(part["x"])))
            clock[0] += next(durations)

    monkeypatch.setattr(extraction.time, "perf_counter", lambda: clock[0])
    before = torch.get_num_threads()
    embedder = extraction._Embedder(Clap(), None, None)
    assert embedder._one_less({"x": torch.zeros(32, 3)}, 2) == pytest.approx(1.9)  # ratios 2.0, 1.0, 1.9
    assert [n for n, _ in seen] == [2, 1, 2, 1, 2, 1, 2] and {b for _, b in seen} == {1}  # one clip each
    assert torch.get_num_threads() == before


def test_the_choice_minimises_the_stated_cost():
    rng = np.random.default_rng(0)
    for _ in range(300):
        decode, forward = rng.uniform(0.001, 0.3, 2)
        cores = int(rng.integers(1, 33))
        threads = int(rng.integers(1, cores + 1))
        got = choose_split(decode, forward, cores, threads=threads)
        options = range(0, min(8, cores - 1) + 1)
        best = min(cost(decode, forward, cores, threads, w) for w in options)
        assert cost(decode, forward, cores, threads, got) == pytest.approx(best)
        assert got == min(w for w in options if cost(decode, forward, cores, threads, w) == pytest.approx(best))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return write_messy(tmp_path_factory.mktemp("messy_split"))


def _run(clap, folder, workers):
    skips = SkipLog()
    clips = embed_clips(clap, folder, matcher=LabelMatcher(CLASSES), skips=skips, batch_size=2,
                        require_labels=False, num_workers=workers)
    return clips, skips


@pytest.mark.slow
@pytest.mark.parametrize("chosen", [0, 2])
def test_probe_then_split_gives_what_a_fixed_split_gives(tiny_clap, messy, monkeypatch, caplog, chosen):
    """One forward thread throughout (the thread count may change the last bits; the worker count
    must not). The probe decodes and forwards the first unit here, then the rest runs with the
    chosen workers: the same embeddings, clips and skip counts as workers 0 and 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(extraction, "usable_cores", lambda: 4)
        monkeypatch.setattr(extraction, "choose_split", lambda *a, **k: chosen)
        with caplog.at_level(logging.INFO, logger="hyperbolic.embedding.extraction"):
            auto = _run(tiny_clap, messy, None)
        fixed0, fixed2 = _run(tiny_clap, messy, 0), _run(tiny_clap, messy, 2)
    finally:
        torch.set_num_threads(before)
    assert f"decoding split: {chosen} worker" in caplog.text
    assert_same(auto, fixed0)
    assert_same(auto, fixed2)
    assert auto[1].rows_skipped() > 0  # the folder's decode failures went through the probe path
