"""The epoch loop's thread count, chosen by timing the run's own step (hyperbolic.training.threads)."""

import json
import time

import pytest
import torch

import train_hyperbolic_clap as train_script
from hyperbolic.config import TrainConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.training.threads import probe_threads, trainer_step
from hyperbolic.training.trainer import Trainer
from tests.helpers import _train_argv, run_main


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


def test_epoch_loop_runs_on_the_measured_thread_count_and_restores_the_count(
        tmp_path, tiny_clap_dir, demo_train_dir, monkeypatch):
    import re

    import torch

    from hyperbolic.training.trainer import Trainer
    seen_threads, original = [], Trainer.batch_loss

    def spy(self, *args):
        seen_threads.append((id(self), torch.get_num_threads()))
        return original(self, *args)

    monkeypatch.setattr(Trainer, "batch_loss", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, err = run_main(train_script, _train_argv(demo_train_dir, tiny_clap_dir, tmp_path / "run"))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    setup = json.loads((tmp_path / "run" / "setup.json").read_text())
    chosen = setup["training_threads"]
    per_step = chosen["seconds_per_step"]
    # The probe ran on a copy of the trainer at 1 and 2 threads; the run's own steps all ran on
    # the faster count, which the log and setup.json report with the measured figures.
    assert set(per_step) == {"1", "2"} and chosen["available"] == 2
    assert chosen["threads"] == (2 if per_step["2"] < per_step["1"] else 1)
    run_trainer = seen_threads[-1][0]
    assert {n for who, n in seen_threads if who == run_trainer} == {chosen["threads"]}
    assert {n for who, n in seen_threads if who != run_trainer} == {1, 2}
    assert after == 2
    seconds = setup["history"][0]["seconds"]
    line = next(line for line in err.splitlines() if "epoch 1/2" in line)
    assert re.search(rf"\b{seconds:.2f}s\b", line), line
    plural = "" if chosen["threads"] == 1 else "s"
    assert f"training on {chosen['threads']} intra-op thread{plural} (of 2)" in err
    assert f"1 thread: {1000 * per_step['1']:.2f} ms" in err


def test_training_threads_grow_with_the_step():
    from hyperbolic.training.train import training_threads
    # 6 (B + P) D^2 flops per step, one thread per 1e9: hand-computed
    assert training_threads(16, 527, 512, 16) == 1          # 0.85e9
    assert training_threads(4096, 527, 512, 16) == 7        # 7.27e9
    assert training_threads(4096, 527, 512, 4) == 4         # capped by what is available
    assert training_threads(1, 1, 8, 16) == 1
