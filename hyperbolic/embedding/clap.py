"""The frozen CLAP model: find it in the ModelScope cache, load it offline, embed audio and text.

Nothing here trains. Parameters are frozen, the model is in ``eval()`` mode and every forward runs
under ``torch.inference_mode()``. Embeddings come back as L2-normalised float32 CPU tensors,
which is what the projector and the cosine baseline consume.

Precision (``--precision``): the CLAP forward runs in float32 (``fp32``, the default) or under
``torch.autocast`` in bfloat16 (``bf16``: CPUs and CUDA GPUs that support it) or float16 (``fp16``:
CUDA only). The mel features are computed in float32/float64 as always, the output is cast back
to float32 before it is normalised, and everything downstream (projector, distances, metrics)
stays in float32. fp16 is refused on the CPU: PyTorch runs it there, but without native float16
matrix units it was 5x slower than fp32 on the machine the benchmarks ran on, and bf16 is the
reduced precision CPUs have. The precision is part of the embedding cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from hyperbolic.config import PRECISIONS
from hyperbolic.embedding.memory import keep_freed_memory
from hyperbolic.errors import ClapNotFoundError, ClapPrecisionError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "laion/larger_clap_general"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` if ``device`` can run the forward in it; ClapPrecisionError naming the fix if not."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ClapPrecisionError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "fp32":
        return precision
    if device.type == "cpu" and precision == "fp16":
        raise ClapPrecisionError("--precision fp16 runs only on CUDA devices (on the CPU it is slower than fp32); "
                                 "use --precision bf16 or fp32 on the CPU")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ClapPrecisionError(f"--precision bf16: {device} does not support bfloat16; use --precision fp16")
    if device.type not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device.type):
        raise ClapPrecisionError(f"--precision {precision}: no autocast on {device.type}; use --precision fp32")
    return precision


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


def audio_features(feature_extractor, sampling_rate: int, waveforms: list[np.ndarray], *,
                   threads: int | None = None) -> dict:
    """(B,) waveforms -> the CLAP feature extractor's tensors (CPU), as a plain dict.

    The first half of ``FrozenClap.embed_audio``, separate so that DataLoader workers can compute
    the mel features while the model runs. For ``ClapFeatureExtractor`` without fusion and clips of
    at most 10 s (what ``data.audio`` gives), ``_fast_features`` computes the same tensors bit for
    bit, the frame loop done as one FFT; the first call on each extractor checks that against the
    extractor itself and keeps to the extractor if they differ (another transformers version).

    BLAS runs single-threaded here. OpenBLAS splits the float64 sums of the mel projection
    differently for different thread counts, so features (and embeddings, in their last bits)
    would depend on the core count and on whether a worker or the main process computed them;
    and a multi-threaded BLAS only fights the model and the other workers for the same cores
    (on 2 loaded cores the projection took 35 ms per clip with 2 threads, 4 ms with 1).

    ``threads``: clips whose spectrograms are computed at once (default ``torch.get_num_threads()``:
    every core in the main process, 1 in a DataLoader worker, which torch gives one thread). Each
    clip is computed alone on one thread as before, so the features are the same bit for bit for
    any count; the decoding of a run without workers then uses every core, as its forward does
    (numpy's FFT and element-wise loops release the GIL).
    """
    threads = torch.get_num_threads() if threads is None else threads
    with threadpool_limits(limits=1, user_api="blas"):
        if _fast_path(feature_extractor, waveforms):
            return _fast_features(feature_extractor, waveforms, threads=threads)
        return dict(feature_extractor(waveforms, sampling_rate=sampling_rate, return_tensors="pt"))


# Feature extractors whose fast path has been checked: extractor -> it agreed bit for bit. Kept
# here, not on the extractor, whose attributes are part of the embedding cache key (to_dict()).
_FAST_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fast_path(fe, waveforms: list[np.ndarray]) -> bool:
    if (type(fe).__name__ != "ClapFeatureExtractor" or fe.truncation != "rand_trunc"
            or fe.padding not in ("repeatpad", "repeat", "pad") or not waveforms
            or any(np.ndim(w) != 1 or len(w) == 0 or len(w) > fe.nb_max_samples for w in waveforms)):
        return False
    if fe not in _FAST_CHECKED:
        slow = dict(fe(waveforms[:1], sampling_rate=fe.sampling_rate, return_tensors="pt"))
        fast = _fast_features(fe, waveforms[:1])
        same = slow.keys() == fast.keys() and all(
            slow[k].dtype == fast[k].dtype and torch.equal(slow[k], fast[k]) for k in slow)
        if not same:
            log.warning("the vectorised mel features differ from %s's own; using the extractor (slower)",
                        type(fe).__name__)
        _FAST_CHECKED[fe] = same
    return _FAST_CHECKED[fe]


def _log_mel(fe, x: np.ndarray) -> np.ndarray:
    """``ClapFeatureExtractor._np_extract_fbank_features(x, fe.mel_filters_slaney)`` with the
    per-frame loop of ``transformers.audio_utils.spectrogram`` done as one 2-D FFT, step for step
    in the same dtypes (complex64 spectrum, float64 power and mel, float32 result): (frames, mels)."""
    from transformers.audio_utils import power_to_db, window_function
    n_fft, hop = fe.fft_window_size, fe.hop_length
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect").astype(np.float64)
    window = window_function(n_fft, "hann").astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
    spec = np.fft.rfft(frames, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2.0
    mel = np.maximum(1e-10, np.dot(fe.mel_filters_slaney.T, power.T))
    return np.asarray(power_to_db(mel, 1.0, 1e-10, None), np.float32).T


def _fast_features(fe, waveforms: list[np.ndarray], *, threads: int = 1) -> dict:
    """What ``fe(waveforms, return_tensors="pt")`` gives for clips of at most ``nb_max_samples``
    without fusion: each clip padded as ``fe.padding`` says, then its log-mel spectrogram (on up to
    ``threads`` threads, one clip each)."""
    from transformers import BatchFeature

    def mel(w: np.ndarray) -> np.ndarray:
        x, n = np.asarray(w, dtype=np.float64), fe.nb_max_samples
        if len(x) < n:
            if fe.padding == "repeat":
                x = np.tile(x, int(n / len(x)) + 1)[:n]
            elif fe.padding == "repeatpad":
                x = np.tile(x, int(n / len(x)))
            x = np.pad(x, (0, n - x.shape[0]), mode="constant", constant_values=0)
        return _log_mel(fe, x)[None, :]

    if threads > 1 and len(waveforms) > 1:
        with ThreadPoolExecutor(min(threads, len(waveforms))) as pool:  # per call: nothing to inherit at fork
            mels = list(pool.map(mel, waveforms))
    else:
        mels = [mel(w) for w in waveforms]
    batch = BatchFeature({"input_features": mels, "is_longer": [[False] for _ in mels]})
    return dict(batch.convert_to_tensors("pt"))


class FrozenClap:
    """A CLAP checkpoint, frozen: its processor, and its weights, loaded on the first forward.

    ``load`` checks that weight files exist; the weights (1.7 GB for laion/larger_clap_general)
    are read only when something is embedded, so a run whose embeddings all come from the cache
    never loads them. ``model`` loads them when first used, ``processor`` and ``config`` likewise
    (they import transformers, about 2 s of a warm run's start, which the cache keys do without:
    ``hyperbolic.embedding.cache.EmbeddingCache.processor_key``).
    """

    def __init__(self, model: torch.nn.Module | None, processor, device: torch.device | str, path: str | Path,
                 precision: str = "fp32", *, config=None, loader: Callable[[], torch.nn.Module] | None = None,
                 processor_loader: Callable[[], object] | None = None,
                 config_loader: Callable[[], object] | None = None):
        self._model, self._loader = model, loader
        self._processor, self._processor_loader = processor, processor_loader
        self.device, self.path, self.precision = torch.device(device), Path(path), precision
        self._config = config if config is not None else getattr(model, "config", None)
        self._config_loader = config_loader

    @property
    def processor(self):
        if self._processor is None and self._processor_loader is not None:
            self._processor, self._processor_loader = self._processor_loader(), None
        return self._processor

    @property
    def config(self):
        if self._config is None and self._config_loader is not None:
            self._config, self._config_loader = self._config_loader(), None
        return self._config

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded yet"
        return f"FrozenClap(path={str(self.path)!r}, device={self.device}, precision={self.precision!r}, weights {state})"

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None and self._loader is not None:
            self._model, self._loader = self._loader(), None
        return self._model

    @classmethod
    def load(cls, spec: str, device: torch.device | str = "cpu", *, precision: str = "fp32") -> FrozenClap:
        precision = check_precision(precision, device)
        path = resolve_clap_path(spec)
        if not any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in path.iterdir()):
            raise ClapNotFoundError(f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in {path}")
        def load_processor():
            return _clap_classes()[1].from_pretrained(str(path), local_files_only=True)

        def load_config():
            from transformers import ClapConfig
            return ClapConfig.from_pretrained(str(path), local_files_only=True)

        def load_weights() -> torch.nn.Module:
            keep_freed_memory()  # the forwards that follow reuse their memory (hyperbolic.embedding.memory)
            log.info("loading CLAP weights from %s (forward in %s)", path, precision)
            model = _clap_classes()[0].from_pretrained(str(path), local_files_only=True)
            model.requires_grad_(False)
            return model.eval().to(device)

        return cls(None, None, device, path, precision, loader=load_weights, processor_loader=load_processor,
                   config_loader=load_config)

    def _autocast(self):
        """The forward's precision: autocast to bf16/fp16, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    @property
    def embed_dim(self) -> int:
        if self._config is None and self._config_loader is not None:
            # config.json's projection_dim, without importing transformers for ClapConfig
            try:
                return int(json.loads((self.path / "config.json").read_text(encoding="utf-8"))["projection_dim"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no such key (ClapConfig's default applies) or an unreadable file: ask ClapConfig
        return int((self.config if self.config is not None else self.model.config).projection_dim)

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
        with self._autocast():
            out = self.model.get_audio_features(**feats).pooler_output
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, embed_dim) float32, L2-normalised."""
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with self._autocast():
            out = self.model.get_text_features(**tokens).pooler_output
        return F.normalize(out.float(), dim=-1).cpu()
