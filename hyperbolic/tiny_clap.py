"""A tiny, randomly initialised CLAP that is built offline in well under a second.

It has the real architecture (HTSAT audio tower + RoBERTa text tower, ``ClapModel``) and the
real preprocessing (``ClapFeatureExtractor`` at 48 kHz with 64 mel bins and spec_size 256, so a
10 s clip is handled exactly as by laion/larger_clap_general), only with very few, very small
layers and a byte-level BPE tokenizer trained on the spot. It is saved with ``save_pretrained``
so that it is loaded through the same code path as a real checkpoint. Used by the tests and by
``train_hyperbolic_clap.py --demo``; its embeddings carry no meaning beyond what random
convolutions and attention make of the input.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    RobertaTokenizer,
)

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tokenizer(corpus: list[str], folder: Path) -> RobertaTokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    files = bpe.save_model(str(folder))
    # RoBERTa positions start after the padding index, hence two fewer tokens than positions.
    return RobertaTokenizer(vocab=files[0], merges=files[1], model_max_length=128)


def build_tiny_clap(folder: str | Path, *, seed: int = 0, corpus: list[str] | None = None,
                    projection_dim: int = 32) -> Path:
    """Write a tiny random CLAP (model + processor) to ``folder`` and return the folder.

    ``corpus``: texts the tokenizer is trained on (default: the AudioSet class names shipped in
    CLAP/class_labels plus the default prompt). Same seed, same weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        labels = Path(__file__).resolve().parent.parent / "CLAP" / "class_labels" / "audioset_class_labels_indices.json"
        corpus = list(json.loads(labels.read_text(encoding="utf-8")).values()) + ["This is a sound of"]
    audio_config = ClapAudioConfig(
        spec_size=256, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
        hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
        num_hidden_layers=2, projection_dim=projection_dim, enable_fusion=False,
    )
    text_config = ClapTextConfig(
        vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=130, projection_dim=projection_dim,
        # At the default init scale the pooled first token barely mixes in the other tokens and
        # all prompts embed alike (mean pairwise cosine 0.998 over the 527 AudioSet prompts); at
        # 3x it is 0.76, and no two of the 527 prompts coincide (with 1 layer at 5x, many did).
        initializer_factor=3.0,
    )
    config = ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    # The input batch norm of a trained HTSAT holds the statistics of log-mel frames (dB, around
    # -60 +- 40 for ordinary audio). Left at a fresh model's (0, 1), it passes values near -60 into
    # the network and every clip's embedding lands on nearly the same direction (mean pairwise
    # cosine 0.99 on the demo sounds, 0.5 with these statistics).
    with torch.no_grad():
        model.audio_model.audio_encoder.batch_norm.running_mean.fill_(-60.0)
        model.audio_model.audio_encoder.batch_norm.running_var.fill_(40.0 ** 2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(corpus, Path(tmp))
    feature_extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
