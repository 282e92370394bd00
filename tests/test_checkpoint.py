"""hyperbolic/model/checkpoint.py: the one home of the checkpoint format (write, read, check, resume)."""

import subprocess
import sys

import pytest
import torch

from hyperbolic.model import checkpoint
from hyperbolic.model.checkpoint import CheckpointError, read_projection, read_resume, save_epoch
from hyperbolic.model.projector import Projector

EARLIER_KEYS = {"epoch", "projection_state_dict", "optimizer_state_dict", "train_loss", "val_loss", "c",
                "temperature", "embed_dim"}


def _earlier_scripts_checkpoint(path, dim=8):
    """A checkpoint as the earlier public scripts wrote it: eight keys, no config."""
    torch.manual_seed(0)
    projector = Projector(dim)
    torch.save({"epoch": 3, "projection_state_dict": projector.state_dict(), "optimizer_state_dict": {},
                "train_loss": 1.0, "val_loss": 1.1, "c": 0.5, "temperature": 0.07, "embed_dim": dim}, path)
    return projector


def test_earlier_scripts_checkpoint_reads_as_it_is(tmp_path):
    path = tmp_path / "best_projection_epoch_3.pth"
    projector = _earlier_scripts_checkpoint(path)
    read = read_projection(path, embed_dim=8)
    assert read.legacy_format and read.format == "legacy (no config)" and read.raw.keys() == EARLIER_KEYS
    assert (read.c, read.temperature, read.geometry, read.embed_dim) == (0.5, 0.07, "hyperbolic", 8)
    assert read.prompt_template is None and read.entailment_k is None and read.config == {}
    assert not read.projector.training
    assert all(torch.equal(read.projector.state_dict()[k], v) for k, v in projector.state_dict().items())
    with pytest.raises(CheckpointError, match="16-d"):
        read_projection(path, embed_dim=16)
    with pytest.raises(CheckpointError, match=f"--resume {path} is not a resumable checkpoint"):
        read_resume(path, {}, {}, 8)


def test_resume_lists_every_setting_that_differs(tmp_path):
    path = tmp_path / "projection_epoch_1.pth"
    torch.save({"generator_state": torch.Generator().get_state(), "embed_dim": 8, "split": {"train": ["a"]},
                "config": {"learning_rate": 0.01, "epochs": 5, "device": "cpu"}}, path)
    same = {"learning_rate": 0.01, "epochs": 5, "device": "cuda:0"}  # where it runs may differ
    assert read_resume(path, same, {"train": ["a"]}, 8)["embed_dim"] == 8
    with pytest.raises(CheckpointError, match=r"--learning-rate 0\.05 \(run: 0\.01\), --epochs 7 \(run: 5\)"):
        read_resume(path, {**same, "learning_rate": 0.05, "epochs": 7}, {"train": ["a"]}, 8)
    with pytest.raises(CheckpointError, match="split differs"):
        read_resume(path, same, {"train": ["b"]}, 8)


def test_save_epoch_writes_the_best_file_before_the_epoch_file(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(checkpoint, "atomic_torch_save", lambda path, obj: written.append(path.name))
    save_epoch(tmp_path, 4, {}, best=True)
    save_epoch(tmp_path, 5, {}, best=False)
    assert written == ["best_projection_epoch_4.pth", "projection_epoch_4.pth", "projection_epoch_5.pth"]
    for epoch in (2, 10, 9):
        (tmp_path / f"projection_epoch_{epoch}.pth").touch()
    assert checkpoint.latest_epoch_file(tmp_path).name == "projection_epoch_10.pth"  # numeric, not text order


@pytest.mark.slow
def test_export_reads_checkpoints_without_the_evaluation_module():
    code = "import sys, hyperbolic.export; print('hyperbolic.evaluation.evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
