"""Shared offline fixtures: a tiny CLAP built once per session and small generated parquet folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.synthetic import DEMO_CLASSES, write_demo_dataset
from hyperbolic.embedding.tiny_clap import build_tiny_clap


@pytest.fixture(scope="session", autouse=True)
def isolated_embedding_cache(tmp_path_factory):
    """The scripts' default embedding cache lives in a temporary folder, never in ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HYPERBOLIC_CLAP_CACHE", str(tmp_path_factory.mktemp("embedding_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """Every run in the tests (and the scripts they start) trains on one intra-op thread. A run
    measures the faster of 1 and N threads before its first epoch (hyperbolic.training.threads),
    and on a loaded machine two runs can pick differently; the count changes the last bits of a
    step's reductions, and the tests compare runs bit for bit. tests/test_training_threads.py
    tests the probe itself."""
    import torch
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("tiny_clap"), seed=0)


@pytest.fixture(scope="session")
def tiny_clap(tiny_clap_dir):
    from hyperbolic.embedding.clap import FrozenClap
    return FrozenClap.load(str(tiny_clap_dir), "cpu")


@pytest.fixture(scope="session")
def demo_train_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_train")
    write_demo_dataset(folder, clips_per_class=4, seed=1, seconds=2.0)
    return folder


@pytest.fixture(scope="session")
def demo_eval_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_eval")
    write_demo_dataset(folder, clips_per_class=2, seed=2, seconds=2.0)
    return folder


@pytest.fixture(scope="session")
def classes_file(tmp_path_factory) -> Path:
    """The demo classes as a text class list, one name per line."""
    path = tmp_path_factory.mktemp("classes") / "demo_classes.txt"
    path.write_text("\n".join(DEMO_CLASSES) + "\n")
    return path
