"""The targets of issue 22, measured by ``benchmarks/run.py`` (sections "extraction split",
"training threads", "bootstrap and results at 20,000 clips", "warm start").

Each ratio comes from timings taken in one process, interleaved (A, B, A, B, ...) so that the
machine's other load moves both sides alike; every figure is printed with the load average.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, rec):
        self.lines.append(rec.getMessage())


def extraction_split(record, name: str, clap_dir: Path, data: Path, *, rounds: int = 1, batch: int = 32) -> None:
    """Extraction (decode + forward, no cache) at the default split and at 0 and 1 workers,
    against the bare forward over the same clips (mel features computed beforehand, batches of
    ``batch`` on every thread): the limit. The four run in turn, ``rounds`` times; each keeps its
    fastest."""
    from data.audioset import SkipLog, iter_clips
    from data.labels import LabelMatcher
    from hyperbolic.embedding.clap import FrozenClap, audio_features
    from hyperbolic.embedding.embeddings import embed_clips

    clap = FrozenClap.load(str(clap_dir), "cpu")
    matcher = LabelMatcher(["Sine wave"])
    waves = [c.waveform for c in iter_clips(data, matcher=matcher, skips=SkipLog(), decode=True,
                                            require_labels=False)]
    batches = [audio_features(clap.processor.feature_extractor, clap.sampling_rate, waves[i:i + batch])
               for i in range(0, len(waves), batch)]
    clap.embed_features(batches[0])  # untimed: weights, first-call buffers

    def bare():
        for b in batches:
            clap.embed_features(b)

    def extract(workers):
        return lambda: embed_clips(clap, data, matcher=matcher, skips=SkipLog(), batch_size=batch,
                                   num_workers=workers, require_labels=False)

    runs = {"bare": bare, "default": extract(None), "0 workers": extract(0), "1 worker": extract(1)}
    times = {k: [] for k in runs}
    lines = _Lines()
    engine = logging.getLogger("hyperbolic.embedding.extraction")
    engine.addHandler(lines)
    level, engine.level = engine.level, logging.INFO
    try:
        for _ in range(rounds):
            for key, fn in runs.items():
                times[key].append(_timed(fn))
    finally:
        engine.removeHandler(lines)
        engine.setLevel(level)
    for line in lines.lines:
        if line.startswith("decoding split"):
            print(f"    [{name}] {line}", flush=True)
    t = {k: min(v) for k, v in times.items()}
    n = len(waves)
    best = min(t["0 workers"], t["1 worker"])
    note = (f"({n} clips, batches of {batch}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"best of {rounds}; {_load()})")
    record("extraction", name, f"bare forward (the limit), {n} clips", n / t["bare"], "clips/s", note=note)
    # Only a model-bound forward (the base size) can reach the limit: the tiny CLAP is decode-bound.
    target = "default" if name == "base" else None
    for key in ("default", "0 workers", "1 worker"):
        record("extraction", name, f"extraction, {key} / bare forward", t[key] / t["bare"], "x",
               "<= 1.05x" if key == target else None, t[key] / t["bare"] <= 1.05 if key == target else None,
               f"({n / t[key]:.2f} clips/s)")
    record("extraction", name, "extraction, default / best of 0 and 1 workers", t["default"] / best, "x", "<= 1.05x",
           t["default"] / best <= 1.05)


def training_threads(record, *, clips: int = 18000, dim: int = 512, prompts: int = 527, batch: int = 16,
                     steps: int = 150, rounds: int = 4) -> None:
    """The probe's pick for the default step against the measured faster of 1 and N threads
    (``steps`` steps per timing, ``rounds`` interleaved timings each)."""
    from hyperbolic.config import TrainConfig
    from hyperbolic.embedding.embeddings import ClipEmbeddings
    from hyperbolic.training.threads import probe_threads, trainer_step
    from hyperbolic.training.trainer import Trainer

    available = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    audio = F.normalize(torch.randn(clips, dim, generator=g), dim=-1)
    labels = [[int(i % prompts)] for i in range(clips)]
    data = ClipEmbeddings(audio, labels, [lab[0] for lab in labels], [["x"]] * clips, [None] * clips)
    trainer = Trainer(TrainConfig(parquet_dir="-", batch_size=batch), dim,
                      F.normalize(torch.randn(prompts, dim, generator=g), dim=-1), list(range(prompts)))
    started = time.perf_counter()
    picked, probed = probe_threads(trainer_step(trainer, data, batch), available)
    with_probe = time.perf_counter() - started
    step = trainer_step(trainer, data, batch)
    per_step = {n: [] for n in sorted({1, available})}
    try:
        for _ in range(rounds):
            for n in per_step:
                torch.set_num_threads(n)
                per_step[n].append(_timed(lambda: [step() for _ in range(steps)]) / steps)
    finally:
        torch.set_num_threads(available)
    med = {n: statistics.median(v) for n, v in per_step.items()}
    best = min(med.values())
    figures = ", ".join(f"{n} thread(s) {1000 * s:.2f} ms" for n, s in med.items())
    record("threads", "-", f"training step ({batch} x {dim}-d, {prompts} prompts): picked {picked} thread(s)",
           med[picked] / best, "x", "<= 1.05x", med[picked] / best <= 1.05,
           f"(per step: {figures}; the probe took {with_probe:.2f} s; {_load()})")


def results_at_scale(record, n: int = 20000, c: int = 527, resamples: int = 1000) -> None:
    """The bootstrap, the ball-usage block, the predictions list and the results JSON at n x c."""
    from hyperbolic.evaluation.ball_usage import ball_usage
    from hyperbolic.evaluation.evaluate import _predictions
    from hyperbolic.metrics.bootstrap import bootstrap_samples
    from hyperbolic.outputs import atomic_write_json

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((n, c)).astype(np.float32)
    targets = rng.random((n, c)) < 2.0 / c
    targets[np.arange(n), rng.integers(0, c, n)] = True
    t = _timed(lambda: bootstrap_samples(scores, targets, n=resamples, seed=0))
    record("results", "-", f"bootstrap, {resamples} paired resamples of {n} x {c}", t, "s", "<= 5 s", t <= 5,
           f"({_load()})")
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(n, 512, generator=g), dim=-1) * 0.8
    p = F.normalize(torch.randn(c, 512, generator=g), dim=-1) * 0.7
    t = _timed(lambda: ball_usage(a, p, scores, c=1.0, clip_radius=0.9))
    record("results", "-", f"ball-usage block, {n} x {c}", t, "s")
    clips = SimpleNamespace(metas=[SimpleNamespace(video_id=f"v{i}", file="f.parquet", row=i) for i in range(n)],
                            raw_labels=[["Speech"]] * n, label_indices=[[0]] * n)
    names = [f"class {k}" for k in range(c)]
    preds = []
    t = _timed(lambda: preds.append(_predictions(scores, clips, names, 10)))
    record("results", "-", f"predictions list, {n} clips, top 10", t, "s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.json"
        t = _timed(lambda: atomic_write_json(path, {"predictions": preds[0]}, one_line_items=frozenset({"predictions"})))
        record("results", "-", f"results JSON with the predictions, {n} clips", t, "s",
               note=f"({path.stat().st_size / 1e6:.0f} MB)")


def warm_start(record, clap_dir: Path, data: Path, work: Path, classes: Path) -> None:
    """A warm evaluation as a whole process (Python start, imports, cache reads, metrics, JSON),
    and the share of it spent importing (``python -X importtime``)."""
    base = [sys.executable]
    argv = ["test_clap_modelscope.py", "--parquet-dir", str(data), "--checkpoint", str(clap_dir), "--device", "cpu",
            "--class-labels", str(classes), "--cache-dir", str(work / "warm_cache"), "--num-samples", "all"]
    subprocess.run(base + argv + ["--output-json", str(work / "warm_0.json")], cwd=REPO, check=True,
                   capture_output=True)  # fills the cache
    seconds, imports = [], []
    for i in range(3):
        started = time.perf_counter()
        out = subprocess.run(base + ["-X", "importtime"] + argv + ["--output-json", str(work / f"warm_{i + 1}.json")],
                             cwd=REPO, check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        top = [parts for line in out.stderr.splitlines() if line.startswith("import time:")
               and (parts := line.split("|"))[1].strip().isdigit()]
        imports.append(sum(int(parts[1]) for parts in top if not parts[2].startswith("  ")) / 1e6)
        heavy = sorted({parts[2].strip() for parts in top} & {"transformers", "modelscope", "matplotlib", "sklearn"})
    t = statistics.median(seconds)
    record("warm", "tiny", "warm evaluation, whole process", t, "s",
           note=f"(imports {statistics.median(imports):.2f} s; heavy modules imported: {', '.join(heavy) or 'none'}; "
                f"{_load()})")


def cold_vs_warm(record, clap_dir: Path, data: Path, work: Path, *, repeats: int = 3) -> None:
    """The evaluation script as a whole process on the base-size CLAP (527 class prompts): once
    cold (an empty cache: every clip and prompt through CLAP) and ``repeats`` times warm."""
    argv = [sys.executable, "test_clap_modelscope.py", "--parquet-dir", str(data), "--checkpoint", str(clap_dir),
            "--device", "cpu", "--cache-dir", str(work / "cold_warm_cache"), "--num-samples", "all"]
    n = sum(pq.read_metadata(f).num_rows for f in sorted(data.glob("*.parquet")))

    def once(tag: str) -> float:
        started = time.perf_counter()
        subprocess.run(argv + ["--output-json", str(work / f"cold_warm_{tag}.json")], cwd=REPO, check=True,
                       capture_output=True)
        return time.perf_counter() - started

    load = _load()
    cold = once("cold")
    warm = statistics.median(once(f"warm{i}") for i in range(repeats))
    record("warm", "base", f"cold / warm evaluation, whole process, {n} clips", cold / warm, "x", ">= 50x",
           cold / warm >= 50, f"(cold {cold:.1f} s, warm {warm:.2f} s, median of {repeats}; {load} before, "
           f"{_load()} after)")
