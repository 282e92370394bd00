"""Randomly initialised CLAPs built offline: a tiny one (well under a second) and a base-size one.

The tiny one has the real architecture (HTSAT audio tower + RoBERTa text tower, ``ClapModel``) and the
real preprocessing (``ClapFeatureExtractor`` at 48 kHz with 64 mel bins and spec_size 256, so a
10 s clip is handled exactly as by laion/larger_clap_general), only with very few, very small
layers and a byte-level BPE tokenizer trained on the spot. It is saved with ``save_pretrained``
so that it is loaded through the same code path as a real checkpoint. Used by the tests and by
``train_hyperbolic_clap.py --demo``; its embeddings carry no meaning beyond what random
convolutions and attention make of the input.

``build_random_clap(folder, size="base")`` builds the same thing at the sizes of
laion/larger_clap_general (HTSAT-base audio tower, RoBERTa-base text tower, 512-d projection), so
that speed and memory can be measured on the real architecture without downloading it
(``benchmarks/run.py``).
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

from hyperbolic.config import DEFAULT_CLASS_LABELS

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tokenizer(corpus: list[str], folder: Path, *, max_length: int) -> RobertaTokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    files = bpe.save_model(str(folder))
    # RoBERTa positions start after the padding index, hence two fewer tokens than positions.
    return RobertaTokenizer(vocab=files[0], merges=files[1], model_max_length=max_length)


SIZES = ("tiny", "base")


def _configs(size: str, projection_dim: int | None) -> tuple[ClapAudioConfig, ClapTextConfig]:
    """Audio and text tower configs of ``size``.

    tiny: a 2-stage HTSAT (hidden 32) and a 2-layer RoBERTa (hidden 32), projection 32.
    base: the sizes of laion/larger_clap_general: HTSAT depths (2, 2, 6, 2), heads (4, 8, 16, 32),
    patch embeddings 96, hidden 768; RoBERTa-base (12 layers, 768 hidden, 12 heads, 3072 FFN,
    50265-token embedding table, 514 positions); projection 512. Same compute and memory per clip
    as the real model; only the weights are random.
    """
    if size == "tiny":
        dim = 32 if projection_dim is None else projection_dim
        audio = ClapAudioConfig(
            spec_size=256, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
            hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
            num_hidden_layers=2, projection_dim=dim, enable_fusion=False,
        )
        text = ClapTextConfig(
            vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=130, projection_dim=dim,
            # At the default init scale the pooled first token barely mixes in the other tokens and
            # all prompts embed alike (mean pairwise cosine 0.998 over the 527 AudioSet prompts); at
            # 3x it is 0.76, and no two of the 527 prompts coincide (with 1 layer at 5x, many did).
            initializer_factor=3.0,
        )
        return audio, text
    if size == "base":
        dim = 512 if projection_dim is None else projection_dim
        audio = ClapAudioConfig(
            spec_size=256, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
            hidden_size=768, patch_embeds_hidden_size=96, depths=[2, 2, 6, 2],
            num_attention_heads=[4, 8, 16, 32], projection_dim=dim, enable_fusion=False,
        )
        text = ClapTextConfig(
            vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, projection_dim=dim,
        )
        return audio, text
    raise ValueError(f"size must be one of {SIZES} (got {size!r})")


def build_random_clap(folder: str | Path, *, size: str = "base", seed: int = 0,
                      corpus: list[str] | None = None, projection_dim: int | None = None) -> Path:
    """Write a randomly initialised CLAP (model + processor) of ``size`` to ``folder``; return it.

    ``size``: "tiny" (well under a second to build; the tests and the demo) or "base" (the
    architecture and sizes of laion/larger_clap_general, about 150M parameters, ~600 MB on disk;
    for benchmarks). ``corpus``: texts the tokenizer is trained on (default: the AudioSet class
    names shipped in CLAP/class_labels plus the default prompt). Same size and seed, same weights.
    Nothing is downloaded.
    """
    audio_config, text_config = _configs(size, projection_dim)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        labels = DEFAULT_CLASS_LABELS
        corpus = list(json.loads(labels.read_text(encoding="utf-8")).values()) + ["This is a sound of"]
    config = ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                        projection_dim=audio_config.projection_dim)
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
        tokenizer = _tokenizer(corpus, Path(tmp), max_length=text_config.max_position_embeddings - 2)
    feature_extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_clap(folder: str | Path, *, seed: int = 0, corpus: list[str] | None = None,
                    projection_dim: int = 32) -> Path:
    """Write a tiny random CLAP (model + processor) to ``folder`` and return the folder.

    ``build_random_clap(folder, size="tiny", ...)``; same seed, same weights.
    """
    return build_random_clap(folder, size="tiny", seed=seed, corpus=corpus, projection_dim=projection_dim)


RANDOM_CLAP_WARNING = ("a RANDOM CLAP: its weights are random, not trained; its embeddings (and every number "
                       "computed from them) mean nothing about sounds. Use it to check that a pipeline runs "
                       "offline on your own data, never to measure anything.")


def main(argv=None) -> int:
    """``python -m hyperbolic.embedding.tiny_clap OUT [--size tiny|base] [--seed N]``: write a
    random CLAP folder that ``--checkpoint OUT`` loads, offline (docs/data.md)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m hyperbolic.embedding.tiny_clap",
        description="Build a randomly initialised CLAP folder offline, for --checkpoint. " + RANDOM_CLAP_WARNING)
    parser.add_argument("output", help="the folder to write (must not exist or be empty)")
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: 32-d, seconds to build and run; base: the sizes of laion/larger_clap_general "
                             "(512-d, ~600 MB, the real model's speed and memory)")
    parser.add_argument("--seed", type=int, default=0, help="same size and seed, same weights")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"{out} exists and is not an empty folder; choose a new folder for the random CLAP")
    folder = build_random_clap(out, size=args.size, seed=args.seed)
    print(f"wrote {folder}: {RANDOM_CLAP_WARNING}\nuse it with --checkpoint {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
