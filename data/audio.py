"""Decode one audio cell and bring it to what CLAP expects: 48 kHz mono float32.

Shapes, stated once: `decode_audio_cell` returns `(channels, samples)` (always 2-D,
the layout Hugging Face `datasets` uses for multichannel arrays); `to_mono_48k` and
`load_waveform` return `(samples,)` with `samples <= MAX_SAMPLES`.

The length rule is deterministic on purpose. soxr gives `floor(n * 48000 / sr + 1/2)`
output samples for `n` input samples, so a 10 s clip at 44.1 kHz that is one sample
long (441001) becomes 480001 samples; the CLAP feature extractor would then pick a
random 480000-sample window, and the same clip would embed differently on each run.
We keep the first MAX_SAMPLES instead. Shorter clips are returned as they are: the
CLAP processor repeat-pads them, and padding here would hide their true length.

Long recordings (``Segmenting``, ``--segment S --hop H``): instead of the first 10 s, the whole
recording is cut into windows of S seconds every H seconds, the last window aligned to the end
(so the tail is never dropped and no window is padded), each window is embedded, and the clip's
embedding is the mean of the L2-normalised window embeddings, L2-normalised again. That is the
usual rule for CLAP-style models on audio longer than their input. A recording no longer than
one window is one window (the CLAP processor repeat-pads it, as in the default rule).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

TARGET_SR = 48000
CLIP_SECONDS = 10
MAX_SAMPLES = TARGET_SR * CLIP_SECONDS  # 480000

# Everything here that changes the waveform CLAP sees. The embedding cache keys on it:
# change any rule in this module and bump "version" so stale embeddings are not reused.
PREPROCESSING: dict[str, Any] = {
    "version": 1,
    "sample_rate": TARGET_SR,
    "channels": "mean-downmix",
    "resampler": "soxr-HQ",
    "max_samples": MAX_SAMPLES,
    "crop": "start",
    "pad": "none (CLAP processor repeat-pads)",
    "dtype": "float32",
}

DECODE_REASONS = ("decode_error", "empty_audio", "non_finite")

# Untagged MP3s report a length estimated from the file size, which can be off by
# about one MPEG frame (1152 samples); a larger shortfall means the bytes were cut.
_MP3_LENGTH_SLACK = 2 * 1152


class AudioDecodeError(ValueError):
    """The audio of one clip is unusable; `reason` is one of DECODE_REASONS.

    Raised for problems with the content of a single clip (corrupt or empty bytes,
    zero samples, NaN/Inf), which a dataset reader counts and skips. Problems with the
    structure of the data (a cell type this module does not understand, a missing
    sampling rate) raise plain TypeError/ValueError instead, because they usually
    affect every row and should stop the run.
    """

    def __init__(self, reason: str, message: str):
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown AudioDecodeError reason {reason!r}; expected one of {DECODE_REASONS}")
        super().__init__(message)
        self.reason = reason


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    if len(data) == 0:
        raise AudioDecodeError("empty_audio", "audio bytes are empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            fmt = f.format
            sr = f.samplerate
            frames = f.read(dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.SoundFileError, RuntimeError) as e:
        # soundfile names the in-memory file by its address; drop it so that the same clip gives
        # the same message on every run (skip examples are part of the results JSON).
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the audio bytes", str(e))
        raise AudioDecodeError(
            "decode_error", f"soundfile could not decode {len(data)} audio bytes: {reason}"
        ) from e
    # libsndfile silently returns fewer frames for a cut MP3 whose header declares the
    # full length; WAV/OGG headers are corrected to what is present, so only MP3 shows it.
    if fmt == "MP3" and frames.shape[0] + _MP3_LENGTH_SLACK < declared:
        raise AudioDecodeError(
            "decode_error",
            f"MP3 looks truncated: header declares {declared} samples, decoded {frames.shape[0]}",
        )
    return np.ascontiguousarray(frames.T), int(sr)


def _as_float_array(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        raise TypeError(f"{what} holds Python objects (dtype=object), not numbers; pass a numeric array")
    if not (np.issubdtype(a.dtype, np.floating)):
        # Integer PCM needs a scale (1/32768 for int16, ...) that a bare array does not carry.
        raise TypeError(
            f"{what} has dtype {a.dtype}; pass float samples in [-1, 1] "
            "(for int16 PCM divide by 32768)"
        )
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim != 2:
        raise ValueError(f"{what} must be 1-D (samples,) or 2-D (channels, samples); got shape {a.shape}")
    elif a.shape[0] > a.shape[1]:
        raise ValueError(
            f"{what} has shape {a.shape}, which looks like (samples, channels); "
            "this reader expects (channels, samples): pass the transpose"
        )
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_sr(sr: Any, what: str) -> int:
    if isinstance(sr, (bool, np.bool_)) or not isinstance(sr, (int, np.integer, float, np.floating)):
        raise TypeError(f"{what} must be a positive integer number of Hz; got {sr!r}")
    if not np.isfinite(sr) or float(sr) != int(sr) or int(sr) <= 0:
        raise ValueError(f"{what} must be a positive integer number of Hz; got {sr!r}")
    return int(sr)


def _check_content(wave: np.ndarray) -> None:
    if wave.size == 0:
        raise AudioDecodeError("empty_audio", f"audio has zero samples (shape {wave.shape})")
    if not np.isfinite(wave).all():
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        raise AudioDecodeError("non_finite", f"audio has {bad} NaN/Inf samples out of {wave.size}")


def decode_audio_cell(cell: Any, *, default_sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode one audio cell to `(wave, sr)`, wave float32 `(channels, samples)`.

    Accepted cells:
      - `{"bytes": b"...", "path": ...}`: FLAC/WAV/OGG/MP3 bytes, decoded by soundfile
        (the Hugging Face `Audio(decode=False)` layout in parquet); bare bytes too.
      - `{"array": [...], "sampling_rate": sr}`: already decoded samples
        (`(samples,)` or `(channels, samples)`, float).
      - a bare float array/list: needs `default_sr`.

    Raises AudioDecodeError (reason "decode_error", "empty_audio" or "non_finite") when
    this clip's content is bad, TypeError/ValueError when the cell's structure is not
    one of the above.
    """
    if cell is None:
        raise AudioDecodeError("empty_audio", "audio cell is null")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        wave, sr = _decode_bytes(bytes(cell))
    elif isinstance(cell, dict):
        if cell.get("bytes") is not None:
            wave, sr = _decode_bytes(bytes(cell["bytes"]))
        elif cell.get("array") is not None:
            if cell.get("sampling_rate") is None:
                raise ValueError("audio cell has 'array' but no 'sampling_rate'; store the rate beside the samples")
            sr = _check_sr(cell["sampling_rate"], "audio cell 'sampling_rate'")
            wave = _as_float_array(cell["array"], "audio cell 'array'")
        elif cell.get("path"):
            raise ValueError(
                f"audio cell has no embedded bytes, only path={cell['path']!r}; this reader needs "
                "the audio inside the parquet (with Hugging Face datasets: embed the audio when saving)"
            )
        elif "bytes" in cell or "array" in cell:
            raise AudioDecodeError("empty_audio", f"audio cell holds no audio (keys {sorted(cell)} are all null)")
        else:
            raise TypeError(
                f"audio cell is a dict with keys {sorted(cell)}; expected 'bytes' (encoded audio) "
                "or 'array' + 'sampling_rate'"
            )
    elif isinstance(cell, (np.ndarray, list, tuple)):
        if default_sr is None:
            raise ValueError(
                "audio cell is a bare array with no sampling rate; pass default_sr=<Hz> "
                "or store cells as {'array': ..., 'sampling_rate': ...}"
            )
        sr = _check_sr(default_sr, "default_sr")
        wave = _as_float_array(cell, "audio array")
    else:
        raise TypeError(
            f"audio cell has type {type(cell).__name__}; expected a dict with 'bytes' or "
            "'array' + 'sampling_rate', bytes, or a float array"
        )
    _check_content(wave)
    return wave, sr


def to_mono_48k(wave: np.ndarray, sr: int, *, max_samples: int | None = MAX_SAMPLES) -> np.ndarray:
    """Mean-downmix, resample to TARGET_SR with soxr "HQ", keep the first `max_samples`.

    wave: `(samples,)` or `(channels, samples)`, any number of channels, float.
    Returns float32 `(min(m, max_samples),)`, C-contiguous, where
    `m = floor(samples * 48000 / sr + 1/2)` is soxr's output length (`m = samples`
    when sr is already 48000: no resampling is done then). `max_samples=None` keeps all
    `m` samples (for `Segmenting`).
    """
    sr = _check_sr(sr, "sample rate")
    x = np.asarray(wave)
    if x.ndim == 2:
        if x.shape[0] > x.shape[1]:
            raise ValueError(
                f"wave has shape {x.shape}, which looks like (samples, channels); pass (channels, samples)"
            )
        x = x.astype(np.float32, copy=False).mean(axis=0, dtype=np.float32)
    elif x.ndim != 1:
        raise ValueError(f"wave must be (samples,) or (channels, samples); got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_content(x)
    if sr != TARGET_SR:
        x = soxr.resample(x, sr, TARGET_SR, quality="HQ")
    # A view would keep the whole (up to 31 s) buffer alive; copy only when cropping.
    if max_samples is not None and x.shape[0] > max_samples:
        x = x[:max_samples].copy()
    return np.ascontiguousarray(x, dtype=np.float32)


def load_waveform(cell: Any, *, default_sr: int | None = None, max_samples: int | None = MAX_SAMPLES) -> np.ndarray:
    """`decode_audio_cell` then `to_mono_48k`: 48 kHz mono float32 `(samples,)`."""
    wave, sr = decode_audio_cell(cell, default_sr=default_sr)
    return to_mono_48k(wave, sr, max_samples=max_samples)


@dataclass(frozen=True)
class Segmenting:
    """Overlapping windows over a whole recording (see the module docstring).

    seconds: window length, in (0, CLIP_SECONDS] (CLAP sees at most 10 s; a longer window would
    be cropped at random by its processor). hop: seconds between window starts, in
    (0, seconds] (a larger hop would skip audio). Both are rounded to whole samples at 48 kHz.
    """

    seconds: float
    hop: float

    def __post_init__(self) -> None:
        if not 0 < self.seconds <= CLIP_SECONDS:
            raise ValueError(f"--segment must be in (0, {CLIP_SECONDS}] seconds (got {self.seconds:g})")
        if not 0 < self.hop <= self.seconds:
            raise ValueError(f"--hop must be in (0, --segment] seconds (got {self.hop:g} with --segment "
                             f"{self.seconds:g}); a hop longer than the window would skip audio")
        if self.samples < 1 or self.hop_samples < 1:
            raise ValueError(f"--segment {self.seconds:g} / --hop {self.hop:g} are shorter than one sample")

    @property
    def samples(self) -> int:
        return int(round(self.seconds * TARGET_SR))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop * TARGET_SR))

    def starts(self, n: int) -> list[int]:
        """First sample of each window over `n` samples: 0, hop, 2 hop, ... while the window ends
        before the recording does, then one window ending exactly at the end. `[0]` when
        `n <= samples` (one window, the whole recording)."""
        if n <= self.samples:
            return [0]
        return [*range(0, n - self.samples, self.hop_samples), n - self.samples]

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """`(n,)` -> the windows, views of `wave`, `(min(n, samples),)` each."""
        return [wave[s:s + self.samples] for s in self.starts(len(wave))]

    def key(self) -> dict[str, Any]:
        """What decides the pooled embedding besides PREPROCESSING; part of the cache key."""
        return {"version": 1, "samples": self.samples, "hop_samples": self.hop_samples,
                "last_window": "aligned to the end", "short": "one window, the whole recording",
                "pooling": "mean of L2-normalised window embeddings, then L2-normalised"}


def segmenting_from(segment: float | None, hop: float | None) -> Segmenting | None:
    """``--segment`` / ``--hop`` -> a Segmenting (hop defaults to the segment: no overlap), or None
    (the default rule: the first 10 s). ValueError naming the flag when a value is out of range."""
    if segment is None:
        if hop is not None:
            raise ValueError("--hop needs --segment SECONDS")
        return None
    return Segmenting(segment, segment if hop is None else hop)
