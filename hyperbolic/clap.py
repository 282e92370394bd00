"""The frozen CLAP model: find it in the ModelScope cache, load it offline, embed audio and text.

Nothing here trains. Parameters are frozen, the model is in ``eval()`` mode and every forward runs
under ``torch.inference_mode()``. Embeddings come back as L2-normalised float32 CPU tensors,
which is what the projector and the cosine baseline consume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "laion/larger_clap_general"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ClapNotFoundError(FileNotFoundError):
    """The CLAP checkpoint is neither a local folder nor in the ModelScope cache."""


def modelscope_cache_root() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE", "~/.cache/modelscope")).expanduser()


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def cache_candidates(model_id: str, root: Path) -> list[Path]:
    """Folders where ModelScope may have put ``model_id``, in the order they are tried."""
    org, _, name = model_id.partition("/")
    flat = [root / "hub" / "models" / org / name,      # modelscope < 1.20
            root / "hub" / org / name,                 # older still
            root / "models" / org / name]
    snapshots = sorted((root / "models" / f"{org}--{name}" / "snapshots").glob("*"),
                       key=lambda p: p.stat().st_mtime, reverse=True)  # newest snapshot first
    return flat + snapshots


def resolve_clap_path(spec: str) -> Path:
    """Turn ``--checkpoint`` into a local model folder, without touching the network.

    ``spec`` is a folder holding ``config.json`` (used as is) or a model id such as
    ``laion/larger_clap_general`` looked up in the ModelScope cache (``$MODELSCOPE_CACHE``,
    default ``~/.cache/modelscope``), old ``hub/models/<org>/<name>`` and new
    ``models/<org>--<name>/snapshots/*`` layouts.
    """
    path = Path(spec).expanduser()
    if _is_model_folder(path):
        return path
    tried = [path]
    looks_like_id = spec.count("/") == 1 and not path.is_absolute() and not path.exists()
    if looks_like_id:
        for candidate in cache_candidates(spec, modelscope_cache_root()):
            if _is_model_folder(candidate):
                return candidate
            tried.append(candidate)
    model_id = spec if looks_like_id else DEFAULT_MODEL_ID
    listing = "\n  ".join(str(p) for p in tried)
    raise ClapNotFoundError(
        f"CLAP checkpoint {spec!r} not found (no folder with config.json). Tried:\n  {listing}\n"
        f"Download it once with `modelscope download --model {model_id}` (or set MODELSCOPE_CACHE "
        f"to the cache that holds it), or pass --checkpoint /path/to/model_folder."
    )


def _clap_classes():
    try:  # ModelScope re-exports the transformers classes and patches from_pretrained for its hub
        from modelscope import ClapModel, ClapProcessor
    except ImportError:  # pragma: no cover - modelscope is in requirements.txt
        log.warning("modelscope is not importable; loading CLAP with transformers directly")
        from transformers import ClapModel, ClapProcessor
    return ClapModel, ClapProcessor


def resolve_device(spec: str) -> torch.device:
    """``--device``: a CUDA device falls back to the CPU, with a warning, when CUDA is absent."""
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("--device %s requested but CUDA is not available; using cpu", spec)
        return torch.device("cpu")
    return device


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the bytes of the weight files in ``folder`` (names sorted): the model identity."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise ClapNotFoundError(f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def audio_features(feature_extractor, sampling_rate: int, waveforms: list[np.ndarray]) -> dict:
    """(B,) waveforms -> the CLAP feature extractor's tensors (CPU), as a plain dict.

    The first half of ``FrozenClap.embed_audio``, separate so that DataLoader workers can compute
    the mel features (about 100 ms of CPU per 10 s clip) while the model runs.
    """
    return dict(feature_extractor(waveforms, sampling_rate=sampling_rate, return_tensors="pt"))


@dataclass
class FrozenClap:
    model: torch.nn.Module
    processor: object
    device: torch.device
    path: Path

    @classmethod
    def load(cls, spec: str, device: torch.device | str = "cpu") -> "FrozenClap":
        path = resolve_clap_path(spec)
        ClapModel, ClapProcessor = _clap_classes()
        log.info("loading CLAP from %s", path)
        model = ClapModel.from_pretrained(str(path), local_files_only=True)
        processor = ClapProcessor.from_pretrained(str(path), local_files_only=True)
        model.requires_grad_(False)
        model.eval().to(device)
        return cls(model=model, processor=processor, device=torch.device(device), path=path)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def fingerprint(self) -> str:
        return weights_fingerprint(self.path)

    def embed_audio(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        """(B,) mono waveforms at ``sampling_rate``, at most 10 s each -> (B, embed_dim) float32.

        Clips are cropped upstream (data.audio), so the feature extractor's random crop never
        fires and the same clip always gives the same embedding.
        """
        return self.embed_features(audio_features(self.processor.feature_extractor, self.sampling_rate, waveforms))

    @torch.inference_mode()
    def embed_features(self, features: dict) -> torch.Tensor:
        """``audio_features`` output -> (B, embed_dim) float32, L2-normalised, on the CPU."""
        feats = {k: v.to(self.device) for k, v in features.items()}
        out = self.model.get_audio_features(**feats).pooler_output
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, embed_dim) float32, L2-normalised."""
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        out = self.model.get_text_features(**tokens).pooler_output
        return F.normalize(out.float(), dim=-1).cpu()
