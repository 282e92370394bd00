"""The epoch loop's thread count, chosen by timing the run's own step (hyperbolic.training.threads)."""

import time

import pytest
import torch

from hyperbolic.config import TrainConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.training.threads import probe_threads, trainer_step
from hyperbolic.training.trainer import Trainer


def sleeper(seconds_at: dict[int, float], calls: list[int]):
    def step():
        calls.append(torch.get_num_threads())
        time.sleep(seconds_at[torch.get_num_threads()])
    return step


@pytest.mark.parametrize("one,two,want,rounds", [
    (0.008, 0.002, 2, 1),    # 4x apart: settled after the first round
    (0.002, 0.008, 1, 1),
    (0.003, 0.002, 2, 3),    # 1.5x: every round runs
])
def test_the_faster_count_wins_and_the_count_is_restored(one, two, want, rounds):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls = []
        threads, per_step = probe_threads(sleeper({1: one, 2: two}, calls), 2, rounds=3, steps=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert threads == want
    assert per_step[1] >= one and per_step[2] >= two  # a sleep never ends early
    # One untimed step each, then interleaved timings; a clear case stops after its first round
    # (a close one may too on a loaded machine, when a sleep overruns, so only its start is fixed).
    assert calls[:4] == [1, 2, 1, 2] and (calls == [1, 2] + [1, 2] * rounds or rounds > 1)


def test_one_core_runs_nothing():
    calls = []
    assert probe_threads(sleeper({1: 0.0}, calls), 1) == (1, {})
    assert calls == []


def test_probing_leaves_the_run_untouched():
    torch.manual_seed(0)
    d, c = 16, 6
    clips = ClipEmbeddings(torch.nn.functional.normalize(torch.randn(10, d), dim=-1), [[i % c] for i in range(10)],
                           [i % c for i in range(10)], [["x"]] * 10, [None] * 10)
    trainer = Trainer(TrainConfig(parquet_dir="x", batch_size=4), d, torch.randn(c, d), list(range(c)))
    weights = {k: v.clone() for k, v in trainer.projector.state_dict().items()}
    rng = torch.get_rng_state()
    step = trainer_step(trainer, clips, 4)
    step()
    step()
    assert all(torch.equal(weights[k], v) for k, v in trainer.projector.state_dict().items())
    assert not trainer.optimizer.state  # the copy's optimizer took the steps
    assert torch.equal(torch.get_rng_state(), rng)
