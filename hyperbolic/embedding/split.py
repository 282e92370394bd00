"""The decoding split of the embedding stage: how many worker processes decode while the main
process runs the CLAP forward, and on how many threads that forward runs. ``choose_split`` is the
cost model ``hyperbolic.embedding.extraction`` feeds with the first batch's measurements when
``--num-workers`` is not given (docs/performance.md, "The decoding split, chosen per run")."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: ``taskset`` and containers narrow it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


MAX_AUTO_WORKERS = 8


def split_costs(decode_s: float, forward_s: float, cores: int, *, threads: int | None = None,
                one_less: float | None = None, max_workers: int = MAX_AUTO_WORKERS,
                decode_cpu_s: float | None = None) -> list[float]:
    """Estimated seconds per clip with W = 0, 1, ... decoding workers, for a run whose clips take
    ``decode_s`` seconds each to decode in this process (parquet, resampling, mel features;
    ``decode_cpu_s`` seconds of CPU, default ``decode_s``: a worker decodes on one thread, this
    process decodes a unit on every thread) and ``forward_s`` seconds each to forward on
    ``threads`` intra-op threads (default ``cores``); with W workers the forward runs on
    ``T_W = min(threads, cores - W)`` threads (``forward_threads``).

    With no worker, decoding and forward take turns, ``forward_s + decode_s``; with W workers they
    overlap, ``max(forward_s * slow(W), decode_cpu_s / W)``. ``one_less``: the measured ratio of
    the forward's time on ``threads - 1`` threads to that on ``threads``; the forward is taken to
    lose the same share per thread lost, ``slow(W) = 1 + (one_less - 1) (threads - 1) (threads -
    T_W) / T_W`` (``threads / T_W`` when the forward scales perfectly, 1 when threads do not help
    it). Without a measurement, perfect scaling: the pessimistic case for workers."""
    threads = cores if threads is None else threads
    decode_cpu_s = decode_s if decode_cpu_s is None else decode_cpu_s
    scaling = threads / max(threads - 1, 1) if one_less is None else max(one_less, 1.0)
    costs = [forward_s + decode_s]
    for w in range(1, min(max_workers, cores - 1) + 1):
        left = min(threads, cores - w)
        slow = 1 + (scaling - 1) * (threads - 1) * (threads - left) / left
        costs.append(max(forward_s * slow, decode_cpu_s / w))
    return costs


def choose_split(decode_s: float, forward_s: float, cores: int, **kw) -> int:
    """Decoding workers for a run (``split_costs``, same arguments): the smallest estimate wins,
    ties to fewer workers. On 2 cores the base-size CLAP (90-160 ms of forward vs 10-20 ms of
    decoding per clip) gets no worker; a decode-bound model, or a machine with many cores, gets
    workers."""
    costs = split_costs(decode_s, forward_s, cores, **kw)
    return costs.index(min(costs))


def worth_measuring(decode_s: float, forward_s: float, cores: int, clips_left: int, *, threads: int,
                    decode_cpu_s: float | None = None, pairs: int = 3) -> bool:
    """Whether to time the forward on one thread less (``pairs`` interleaved pairs of one-clip
    forwards and one untimed, about ``(1 + 3 * pairs) * forward_s``, 1.1-1.2 s for the base-size
    CLAP on 2 cores): only if a worker could save at least three times that over ``clips_left``
    clips, reckoned for a forward that threads do not speed up at all (``one_less`` = 1, the case
    most favourable to workers; a run on the base-size CLAP on 2 cores saves nothing in fact).
    Otherwise the cost model assumes perfect scaling, the choice that never loses a thread."""
    best = split_costs(decode_s, forward_s, cores, threads=threads, one_less=1.0, decode_cpu_s=decode_cpu_s)
    return (best[0] - min(best)) * clips_left > 3 * (1 + 3 * pairs) * forward_s


def forward_threads(num_workers: int, current: int) -> int:
    """Intra-op threads for the forward while ``num_workers`` processes decode: the cores they
    leave (at least 1, at most ``current``). On 2 cores with 1 worker, 2 forward threads made the
    pipeline half as fast (37 vs 18 clips/s, tiny CLAP): the threads wait on each other while the
    worker holds a core. (On the CPUs tested, the forward's result does not depend on the thread
    count; tests check that embeddings do not depend on the number of workers.)"""
    if num_workers == 0:
        return current
    return max(1, min(current, usable_cores() - num_workers))
