"""Finding and running the frozen CLAP offline."""

import shutil

import numpy as np
import pytest
import torch

from hyperbolic.embedding.clap import ClapNotFoundError, resolve_clap_path


def test_local_folder_is_used_as_is(tiny_clap_dir):
    assert resolve_clap_path(str(tiny_clap_dir)) == tiny_clap_dir


@pytest.mark.parametrize("layout", ["hub/models/laion/larger_clap_general",
                                    "models/laion--larger_clap_general/snapshots/abc123"])
def test_model_id_found_in_modelscope_cache(tmp_path, monkeypatch, tiny_clap_dir, layout):
    target = tmp_path / "cache" / layout
    shutil.copytree(tiny_clap_dir, target)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    assert resolve_clap_path("laion/larger_clap_general") == target


def test_not_found_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    with pytest.raises(ClapNotFoundError) as err:
        resolve_clap_path("laion/larger_clap_general")
    message = str(err.value)
    assert str(tmp_path / "hub" / "models" / "laion" / "larger_clap_general") in message
    assert "modelscope download --model laion/larger_clap_general" in message
    with pytest.raises(ClapNotFoundError, match="no/such/folder/at/all"):
        resolve_clap_path(str(tmp_path / "no/such/folder/at/all"))


def test_model_is_frozen_and_in_eval_mode(tiny_clap):
    assert not any(p.requires_grad for p in tiny_clap.model.parameters())
    assert not tiny_clap.model.training
    assert tiny_clap.embed_dim == tiny_clap.model.config.projection_dim == 32
    assert len(tiny_clap.fingerprint()) == 64


def test_audio_embeddings_are_deterministic_and_normalised(tiny_clap):
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(480000).astype(np.float32) * 0.1, rng.standard_normal(4800).astype(np.float32)]
    a, b = tiny_clap.embed_audio(waves), tiny_clap.embed_audio(waves)
    assert torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == (2, 32)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(a[0], a[1])
    # batching does not change a clip's embedding
    assert torch.allclose(tiny_clap.embed_audio(waves[:1])[0], a[0], atol=1e-5)


def test_text_embeddings_depend_on_the_prompt(tiny_clap):
    e = tiny_clap.embed_text(["This is a sound of Speech.", "A recording of Speech.", "This is a sound of Speech."])
    assert torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])
