"""Intra-op threads of the epoch loop, chosen by timing the run's own step.

The epoch loop's matrices are small (16 clips x 512-d against up to 527 prompts at the
defaults), so whether a second intra-op thread pays depends on the step's shape, the machine
and what else runs on it: on the shared 2-core VM one thread was 5-16x faster under load, two
were 13% faster on the idle machine (18,000 clips, batch 16). A rule tuned once cannot know
which; a short probe at the start of the run can. ``probe_threads`` times the step at 1 and at
N threads, interleaved, and keeps the faster one; the figures go to the log and setup.json.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch

PROBE_ROUNDS = 5        # timings per thread count, interleaved (1, N, 1, N, ...): load moves both alike
PROBE_STEPS = 2         # steps per timing
CLEAR_RATIO = 2.0       # after a round, one count this much faster than the other settles it ...
PROBE_BUDGET_S = 1.0    # ... as does this much probing: under load, N threads took 140 ms a step (1: 13 ms)


def probe_threads(step: Callable[[], None], available: int, *, rounds: int = PROBE_ROUNDS,
                  steps: int = PROBE_STEPS) -> tuple[int, dict[int, float]]:
    """The faster of 1 and ``available`` intra-op threads for ``step`` and the measured seconds
    per step of each (median over up to ``rounds`` interleaved timings of ``steps`` steps, after
    one untimed step each: the first call at a thread count allocates). It stops early once one
    count is ``CLEAR_RATIO`` times faster or ``PROBE_BUDGET_S`` is spent. Ties go to 1 thread.
    ``available <= 1``: ``(1, {})``, nothing run. Restores the thread count it found."""
    if available <= 1:
        return 1, {}
    before = torch.get_num_threads()
    counts = (1, available)
    times: dict[int, list[float]] = {n: [] for n in counts}
    begun = time.perf_counter()
    try:
        for n in counts:
            torch.set_num_threads(n)
            step()
        for _ in range(rounds):
            for n in counts:
                torch.set_num_threads(n)
                started = time.perf_counter()
                for _ in range(steps):
                    step()
                times[n].append((time.perf_counter() - started) / steps)
            fast, slow = sorted(statistics.median(v) for v in times.values())
            if slow > CLEAR_RATIO * fast or time.perf_counter() - begun > PROBE_BUDGET_S:
                break
    finally:
        torch.set_num_threads(before)
    per_step = {n: statistics.median(v) for n, v in times.items()}
    return (available if per_step[available] < per_step[1] else 1), per_step


def trainer_step(trainer, clips, batch_size: int) -> Callable[[], None]:
    """One training step (loss, backward, optimizer step) of a copy of ``trainer`` on the first
    ``batch_size`` of ``clips``: the run's own step shape, leaving the run itself untouched.
    The global RNG is restored after every call, so probing never changes the run's numbers."""
    probe = copy.deepcopy(trainer)
    audio, labels, first = next(probe.batches(clips, list(range(min(batch_size, len(clips))))))
    probe.projector.train()

    def step() -> None:
        rng = torch.get_rng_state()
        try:
            loss = probe.batch_loss(audio, labels, first)
            probe.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            probe.optimizer.step()
        finally:
            torch.set_rng_state(rng)

    return step
