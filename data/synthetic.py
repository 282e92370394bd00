"""Synthetic AudioSet-style parquet folders, for `--demo` and for the tests.

Each class in DEMO_CLASSES is an AudioSet class whose sound is easy to make from
formulas. A clip's random parameters (frequency, level, phase, click rate, ...) come
from a generator seeded by `(seed, clip number)`, so a dataset is the same bytes every
time for FLAC/WAV/MP3. OGG is the exception: libsndfile gives each Ogg stream a random
serial number, so OGG bytes differ between runs while the decoded samples do not.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from data.files import temp_beside

FORMATS = {
    # fmt: (soundfile format, default subtype)
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}

# Fraction of Nyquist that synthesized partials stay under, so nothing aliases.
_MAX_FREQ_FRACTION = 0.9


def encode_audio(wave: np.ndarray, sr: int, fmt: str, *, subtype: str | None = None) -> bytes:
    """Encode `wave` (`(samples,)` or `(samples, channels)`, soundfile's layout) as fmt bytes.

    fmt is one of "flac", "wav", "ogg", "mp3"; subtype overrides the default
    (e.g. `"FLOAT"` for a WAV that can hold NaN). Integer PCM would silently clip
    samples outside [-1, 1] and turn NaN into garbage, so those raise ValueError.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of {sorted(FORMATS)}")
    sf_format, default_subtype = FORMATS[fmt]
    subtype = subtype or default_subtype
    x = np.asarray(wave)
    if subtype not in _FLOAT_SUBTYPES and x.size:
        if not np.isfinite(x).all():
            raise ValueError(f"{fmt}/{subtype} cannot store NaN/Inf; use fmt='wav', subtype='FLOAT'")
        peak = float(np.max(np.abs(x)))
        if peak > 1.0:
            raise ValueError(f"{fmt}/{subtype} would clip: peak |sample| is {peak:.3f} > 1; scale the wave down")
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=sf_format, subtype=subtype)
    return buf.getvalue()


def write_parquet_shard(path: str | Path, rows: list[dict[str, Any]], *, row_group_size: int | None = None) -> Path:
    """Write rows (video_id, audio, human_labels, optional labels, ...) as one parquet file.

    All rows need the same keys. `audio` is `{"bytes", "path"}` or
    `{"array", "sampling_rate"}`; numpy arrays are stored as lists. Written to a
    temporary file in the same folder, then `os.replace`d, so a crash leaves no torn
    shard. Page checksums are written so the reader can detect corrupted pages.
    """
    path = Path(path)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != keys:
            raise ValueError(f"{path}: row {i} has keys {list(row)}, row 0 has {keys}; all rows need the same keys")
    normalized = [
        {k: (_lists(v) if k == "audio" else v) for k, v in row.items()} for row in rows
    ]
    columns = {}
    for k in keys:
        try:
            columns[k] = pa.array([row[k] for row in normalized])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(
                f"{path}: column {k!r} does not have one type across rows ({e}); within one shard "
                "e.g. human_labels must be all lists or all strings, audio arrays all 1-D or all 2-D"
            ) from e
    table = pa.table(columns)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, write_page_checksum=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lists(audio: Any) -> Any:
    if isinstance(audio, dict) and isinstance(audio.get("array"), np.ndarray):
        return {**audio, "array": audio["array"].tolist()}
    return audio


# ---------------------------------------------------------------- synthesizers
# Each takes (rng, sr, n) and returns float64 (n,) with peak <= 1. Ranges are chosen
# so the classes differ in spectrum: one line at 550-1000 Hz (sine), two lines near
# 400 Hz (dial tone), a 50/60 Hz comb (hum), a dense 1/k comb (buzz), flat (white),
# 1/f (pink), a 200 Hz-8 kHz sweep (chirp), keyed lines at 1.2-3 kHz (beep), damped
# 2-5 kHz pings (clicking), a -100..-80 dBFS floor (silence).


def _time(sr: int, n: int) -> np.ndarray:
    return np.arange(n) / sr


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _sine_wave(rng, sr, n):
    f = _log_uniform(rng, 550.0, 1000.0)  # between dial tone/hum (< 500 Hz) and beeps
    return rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * f * _time(sr, n) + rng.uniform(0, 2 * np.pi))


def _white_noise(rng, sr, n):
    # std <= 0.12: a 8-sigma peak, so clipping is practically impossible.
    return rng.uniform(0.04, 0.12) * rng.standard_normal(n)


def _pink_noise(rng, sr, n):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec /= np.sqrt(np.maximum(f, 20.0))  # 1/f power; flat below 20 Hz rather than blowing up at DC
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(x**2)) or 1.0
    return rng.uniform(0.04, 0.12) * x / rms


def _silence(rng, sr, n):
    # A recording's noise floor (-100 to -80 dBFS), not digital zeros.
    return _log_uniform(rng, 1e-5, 1e-4) * rng.standard_normal(n)


def _mains_hum(rng, sr, n):
    f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.998, 1.002)
    t = _time(sr, n)
    amp, decay = rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.7)
    x = np.zeros(n)
    for k in range(1, 9):
        if k * f0 < _MAX_FREQ_FRACTION * sr / 2:
            x += decay ** (k - 1) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return amp * x / np.sum(decay ** np.arange(8))


def _chirp_tone(rng, sr, n):
    period = rng.uniform(0.5, 2.0)
    f0 = rng.uniform(200.0, 600.0)
    f1 = min(rng.uniform(3000.0, 8000.0), _MAX_FREQ_FRACTION * sr / 2)
    tau = np.mod(_time(sr, n), period)
    k = np.log(f1 / f0) / period
    phase = 2 * np.pi * f0 * np.expm1(k * tau) / k  # exponential sweep f0 -> f1 each period
    return rng.uniform(0.3, 0.5) * np.sin(phase)


def _beep(rng, sr, n):
    f = min(_log_uniform(rng, 1200.0, 3000.0), _MAX_FREQ_FRACTION * sr / 2)
    on, period = rng.uniform(0.08, 0.3), rng.uniform(0.4, 1.2)
    t = _time(sr, n)
    tau = np.mod(t - rng.uniform(0, period), period)
    ramp = 0.005  # 5 ms raised-cosine edges, so the keying itself does not click
    gate = np.clip(np.minimum(tau, on - tau) / ramp, 0.0, 1.0)
    gate = np.where(tau < on, 0.5 - 0.5 * np.cos(np.pi * gate), 0.0)
    return rng.uniform(0.2, 0.5) * gate * np.sin(2 * np.pi * f * t)


def _clicking(rng, sr, n):
    rate = rng.uniform(3.0, 12.0)
    fc = min(rng.uniform(2000.0, 5000.0), _MAX_FREQ_FRACTION * sr / 2)
    decay = rng.uniform(0.0005, 0.002)
    m = max(1, int(8 * decay * sr))
    tk = np.arange(m) / sr
    kernel = np.exp(-tk / decay) * np.sin(2 * np.pi * fc * tk)
    x = np.zeros(n)
    pos = rng.uniform(0, 1 / rate)
    while pos < n / sr:
        i = int(pos * sr)
        seg = kernel[: n - i] * rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])
        x[i : i + seg.size] += seg
        pos += rng.uniform(0.5, 1.5) / rate
    return 0.9 * x


def _dial_tone(rng, sr, n):
    pair = [(350.0, 440.0), (400.0, 450.0)][rng.integers(2)]  # North American, UK
    t = _time(sr, n)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in pair)
    return rng.uniform(0.1, 0.2) * x


def _buzz(rng, sr, n):
    # Band-limited square wave built as a line spectrum (odd harmonics at 1/k): one
    # inverse FFT instead of hundreds of sines. f0 is rounded to a whole FFT bin.
    bin0 = max(1, int(round(rng.uniform(90.0, 250.0) * n / sr)))
    spec = np.zeros(n // 2 + 1, dtype=complex)
    top = int(_MAX_FREQ_FRACTION * (n // 2))
    for k in range(1, top // bin0 + 1, 2):
        spec[k * bin0] = -1j / k  # -i/k at bin k*f0 is a sine of amplitude 1/k after the scaling below
    x = np.fft.irfft(spec, n) * n / 2  # unit-amplitude sines
    t = _time(sr, n)
    tremolo = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(2.0, 8.0) * t)
    return rng.uniform(0.15, 0.3) * tremolo * x / 1.3


_SYNTHESIZERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "Sine wave": _sine_wave,
    "White noise": _white_noise,
    "Pink noise": _pink_noise,
    "Silence": _silence,
    "Mains hum": _mains_hum,
    "Chirp tone": _chirp_tone,
    "Clicking": _clicking,
    "Beep, bleep": _beep,
    "Dial tone": _dial_tone,
    "Buzz": _buzz,
}
DEMO_CLASSES: tuple[str, ...] = tuple(_SYNTHESIZERS)


def synthesize(name: str, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    """A float32 `(round(sr * seconds),)` clip of class `name`, peak <= 0.95."""
    if name not in _SYNTHESIZERS:
        raise ValueError(f"cannot synthesize {name!r}; choose one of {list(DEMO_CLASSES)}")
    n = int(round(sr * seconds))
    x = _SYNTHESIZERS[name](rng, sr, n)
    peak = float(np.max(np.abs(x))) if n else 0.0
    if peak > 0.95:  # keep PCM encoders from clipping; only mixtures get near this
        x = x * (0.95 / peak)
    return x.astype(np.float32)


def write_demo_dataset(
    folder: str | Path,
    *,
    clips_per_class: int,
    seed: int,
    sr: int = 48000,
    seconds: float = 10.0,
    shards: int = 2,
    fmt: str = "flac",
    mixtures: int = 0,
) -> dict[str, Any]:
    """Write `clips_per_class` clips of every DEMO_CLASSES class into `shards` parquet files.

    Clips are interleaved by class, so every shard holds every class (when there are
    enough clips). `mixtures` extra clips each sum two different classes and carry both
    labels. Refuses a folder that already holds .parquet files rather than overwrite
    or mix with them. Returns a summary dict.
    """
    if clips_per_class < 1 or shards < 1 or mixtures < 0:
        raise ValueError(
            f"need clips_per_class >= 1, shards >= 1, mixtures >= 0 "
            f"(got {clips_per_class}, {shards}, {mixtures})"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in folder.glob("*.parquet"))
    if existing:
        raise FileExistsError(f"{folder} already holds parquet files ({', '.join(existing[:3])}); choose an empty folder")

    plan: list[list[str]] = [[c] for _ in range(clips_per_class) for c in DEMO_CLASSES]
    pair_rng = np.random.default_rng([seed, 1])
    audible = [c for c in DEMO_CLASSES if c != "Silence"]
    for _ in range(mixtures):
        a, b = pair_rng.choice(len(audible), size=2, replace=False)
        plan.append(sorted([audible[a], audible[b]], key=DEMO_CLASSES.index))
    n_shards = min(shards, len(plan))

    files = []
    per_class = {c: 0 for c in DEMO_CLASSES}
    for s, clip_ids in enumerate(np.array_split(np.arange(len(plan)), n_shards)):
        rows = []
        for i in clip_ids:
            labels = plan[i]
            rng = np.random.default_rng([seed, 0, int(i)])  # per clip: independent of sharding
            wave = sum(synthesize(c, rng, sr, seconds).astype(np.float64) for c in labels) / len(labels)
            video_id = f"synth{int(i):05d}"
            rows.append(
                {
                    "video_id": video_id,
                    "audio": {"bytes": encode_audio(wave.astype(np.float32), sr, fmt), "path": f"{video_id}.{fmt}"},
                    "human_labels": list(labels),
                }
            )
            for c in labels:
                per_class[c] += 1
        name = f"demo-{s:05d}-of-{n_shards:05d}.parquet"
        write_parquet_shard(folder / name, rows)
        files.append(name)
    return {
        "folder": str(folder),
        "files": files,
        "clips": len(plan),
        "mixtures": mixtures,
        "per_class": per_class,
        "sample_rate": sr,
        "seconds": seconds,
        "format": fmt,
        "seed": seed,
    }


# ------------------------------------------------------------------ demo ontology
# A small AudioSet-format ontology over DEMO_CLASSES, for training and testing the
# hierarchy features without AudioSet's ontology.json. Three levels: three abstract
# roots, then intermediate nodes, then the classes. It mirrors AudioSet where AudioSet
# has the same link ("Sine wave" is the parent of "Chirp tone", "Brief tone" of
# "Beep, bleep"); the rest groups the sounds by how data.synthetic makes them.
# Ids are "/demo/..." so they can never be mistaken for AudioSet's.

_DEMO_TREE: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("Synthetic tone", (("Sine wave", ("Chirp tone",)),
                        ("Brief tone", ("Beep, bleep",)),
                        ("Telephone signal", ("Dial tone",)))),
    ("Noise", (("Colored noise", ("White noise", "Pink noise")),
               ("Background noise", ("Mains hum", "Silence")))),
    ("Pulse", (("Pulse train", ("Clicking", "Buzz")),)),
)


def _demo_id(name: str) -> str:
    return "/demo/" + "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def demo_ontology() -> list[dict[str, Any]]:
    """The demo ontology as AudioSet's ontology.json holds it: a list of node dicts.

    Each node has "id", "name", "description", "child_ids" and "restrictions"
    (["abstract"] for a node that is not in DEMO_CLASSES). Depths: the roots
    "Synthetic tone", "Noise", "Pulse" are 0; "Sine wave" and the abstract groups are
    1; the other nine classes are 2, leaves. Every DEMO_CLASSES name is a node.
    """
    nodes: list[dict[str, Any]] = []

    def node(name: str, children: tuple[str, ...]) -> None:
        nodes.append({
            "id": _demo_id(name),
            "name": name,
            "description": f"Demo ontology node for data.synthetic ({'class' if name in DEMO_CLASSES else 'group'}).",
            "child_ids": [_demo_id(k) for k in children],
            "restrictions": [] if name in DEMO_CLASSES else ["abstract"],
        })

    for root, groups in _DEMO_TREE:
        node(root, tuple(g for g, _ in groups))
    for _, groups in _DEMO_TREE:
        for group, leaves in groups:
            node(group, leaves)
            for leaf in leaves:
                node(leaf, ())
    return nodes


def write_demo_ontology(path: str | Path) -> Path:
    """Write demo_ontology() as JSON to `path` (atomically, like write_parquet_shard)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(demo_ontology(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
