"""Finding and running the frozen CLAP offline."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperbolic.embedding.clap import ClapNotFoundError, ClapPrecisionError, FrozenClap, resolve_clap_path
from hyperbolic.embedding.embeddings import prompts_for
from hyperbolic.embedding.tiny_clap import _configs
from tests.helpers import waves
from tests.test_embeddings import CLASSES


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


def test_random_clap_command_builds_a_loadable_folder_and_refuses_a_full_one(tmp_path, capsys):
    from hyperbolic.embedding import tiny_clap
    from hyperbolic.embedding.clap import FrozenClap
    out = tmp_path / "random_clap"
    assert tiny_clap.main([str(out), "--seed", "3"]) == 0
    assert "mean nothing" in capsys.readouterr().err
    assert FrozenClap.load(str(out), "cpu").embed_dim == 32
    with pytest.raises(SystemExit) as stop:
        tiny_clap.main([str(out)])
    assert stop.value.code == 2 and "not an empty folder" in capsys.readouterr().err


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


@pytest.mark.slow
def test_bf16_forward_is_close_to_fp32_and_returns_float32(tiny_clap, tiny_bf16):
    clips = waves()
    a32, a16 = tiny_clap.embed_audio(clips), tiny_bf16.embed_audio(clips)
    assert a16.dtype == torch.float32 and a16.shape == a32.shape
    assert not torch.equal(a16, a32)  # autocast did run the forward in bfloat16
    assert cosines(a16, a32).min() >= 0.999
    torch.testing.assert_close(a16.norm(dim=-1), torch.ones(len(clips)), atol=1e-5, rtol=0)
    prompts = prompts_for(CLASSES, "This is a sound of {label}.")
    t32, t16 = tiny_clap.embed_text(prompts), tiny_bf16.embed_text(prompts)
    assert t16.dtype == torch.float32 and not torch.equal(t16, t32)
    assert cosines(t16, t32).min() >= 0.999


@pytest.mark.slow
def test_precisions_the_device_cannot_run_are_refused(tiny_clap_dir):
    with pytest.raises(ClapPrecisionError, match="--precision fp16 runs only on CUDA"):
        FrozenClap.load(str(tiny_clap_dir), "cpu", precision="fp16")
    with pytest.raises(ClapPrecisionError, match="fp32, bf16, fp16"):
        FrozenClap.load(str(tiny_clap_dir), "cpu", precision="fp8")


@pytest.mark.slow
@pytest.mark.parametrize("padding,threads", [("repeatpad", 1), ("repeat", 1), ("pad", 1), ("repeatpad", 3)])
def test_fast_mel_features_are_the_extractors_bit_for_bit(tiny_clap, padding, threads):
    from threadpoolctl import threadpool_limits

    from hyperbolic.embedding.clap import _fast_features
    fe = type(tiny_clap.processor.feature_extractor).from_dict(tiny_clap.processor.feature_extractor.to_dict())
    fe.padding = padding
    rng = np.random.default_rng(4)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (480000, 479999, 48000, 1001, 7)]
    with threadpool_limits(limits=1, user_api="blas"):  # as audio_features runs both
        want = dict(fe(clips, sampling_rate=48000, return_tensors="pt"))
        got = _fast_features(fe, clips, threads=threads)  # threads: clips computed at once, one per thread
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


@pytest.mark.slow
def test_base_size_is_larger_clap_general():
    audio, text = _configs("base", None)
    assert (tuple(audio.depths), tuple(audio.num_attention_heads)) == ((2, 2, 6, 2), (4, 8, 16, 32))
    assert (audio.patch_embeds_hidden_size, audio.hidden_size, audio.projection_dim) == (96, 768, 512)
    assert (audio.spec_size, audio.num_mel_bins, audio.enable_fusion) == (256, 64, False)
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.vocab_size) == (12, 768, 12, 50265)
    with pytest.raises(ValueError, match="size must be one of"):
        _configs("huge", None)
