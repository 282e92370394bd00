"""Caption retrieval (``--text-column``): every clip against every caption, per model.

Scores are an ``(N clips, M captions)`` matrix, higher = closer; ``caption_clip[j]`` is the clip
caption j was written for. Ties: R@k is the expected value over a uniformly random order inside
every tie (so item order never matters), and so is AP@10 (``hyperbolic.metrics.classification.ap_at_k``).

Text to audio (each caption is a query ranking the N clips; its one relevant clip is its own):

- ``t2a_R@k`` (k = 1, 5, 10): fraction of captions whose clip is in the top k.
- ``t2a_mAP@10``: mean over captions of AP@10, which with one relevant item is ``1/rank`` when
  the clip is at rank <= 10 and 0 otherwise: the mAP@10 of DCASE 2022 task 6b, language-based
  audio retrieval (https://dcase.community/challenge2022/task-language-based-audio-retrieval).

Audio to text (each clip is a query ranking the M captions; its relevant items are all of its
own captions, n_i of them):

- ``a2t_R@k``: fraction of clips with at least one of their captions in the top k.
- ``a2t_mAP@10``: mean over clips of ``(1 / min(10, n_i)) * sum_{r<=10} P@r * rel_r`` (``rel_r``:
  the caption at rank r is the clip's; ``P@r``: fraction of the clip's captions in the top r).

Captions are compared as instances: two clips with the same caption string have two captions,
each relevant to its own clip only (as AudioCaps and Clotho are evaluated).

Bootstrap (``--bootstrap N``): resample the clips with replacement, each drawn clip bringing all
its captions; the ranking pool stays the full set, only the queries averaged over change, and
every model uses the same resamples, so ``vs_clap_cosine`` holds the paired difference to plain
CLAP with its percentile interval.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data.audioset import SkipLog
from data.captions import caption_counts, read_captions
from data.errors import DatasetError
from data.labels import LabelMatcher
from hyperbolic.config import EvalConfig
from hyperbolic.embedding.captions import embed_texts, pair_captions
from hyperbolic.embedding.embeddings import embed_run_clips, open_cache, open_clap
from hyperbolic.evaluation.files import results_path, save_caption_scores, write_results
from hyperbolic.evaluation.scoring import (
    PLAIN_MODEL_NAME,
    build_models,
    model_info,
    similarity_stats,
    usage_block,
    usage_skipped,
)
from hyperbolic.metrics.classification import ap_at_k, expected_hits
from hyperbolic.outputs import unique_path

log = logging.getLogger(__name__)

KS = (1, 5, 10)
MAP_K = 10
METRIC_KEYS = (*(f"t2a_R@{k}" for k in KS), f"t2a_mAP@{MAP_K}", *(f"a2t_R@{k}" for k in KS), f"a2t_mAP@{MAP_K}")
DEFINITIONS = {
    "t2a": "each caption ranks all clips; its one relevant clip is its own. R@k: fraction of captions with "
           "their clip in the top k; mAP@10: mean of 1/rank (0 beyond rank 10), DCASE 2022 task 6b "
           "(https://dcase.community/challenge2022/task-language-based-audio-retrieval)",
    "a2t": "each clip ranks all captions; its relevant items are all of its captions. R@k: fraction of clips "
           "with one of their captions in the top k; mAP@10: mean of (1/min(10, n)) sum_{r<=10} P@r rel_r",
    "ties": "R@k and mAP@10: expected value over a uniformly random order inside every tie",
}


def _check(scores, caption_clip) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    owner = np.asarray(caption_clip, dtype=np.int64)
    if s.ndim != 2 or owner.shape != (s.shape[1],):
        raise ValueError(f"scores must be (N clips, M captions) and caption_clip (M,); got {s.shape}, {owner.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError("no clip or no caption to evaluate")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if owner.min() < 0 or owner.max() >= s.shape[0]:
        raise ValueError("caption_clip holds an index outside [0, N)")
    if np.bincount(owner, minlength=s.shape[0]).min() == 0:
        raise ValueError("every clip needs at least one caption")
    return s, owner


def per_query(scores, caption_clip) -> dict[str, np.ndarray]:
    """Per-query values whose means are the metrics: ``t2a_*`` (M,), one per caption, and
    ``a2t_*`` (N,), one per clip (expected hits in [0, 1], AP@10 values). The ranking rules are
    ``hyperbolic.metrics.classification``': ``expected_hits``, ``ap_at_k``."""
    s, owner = _check(scores, caption_clip)
    n, m = s.shape
    relevant = np.zeros((n, m), dtype=bool)
    relevant[owner, np.arange(m)] = True
    out: dict[str, np.ndarray] = {}
    # text -> audio: a caption is a row of the transposed matrix; its one relevant clip is its own,
    # so its AP@10 is 1/rank of that clip (0 beyond rank 10)
    s_t, relevant_t = s.T, relevant.T
    out.update({f"t2a_R@{k}": hit for k, hit in expected_hits(s_t, relevant_t, KS).items()})
    out[f"t2a_mAP@{MAP_K}"] = ap_at_k(s_t, relevant_t, MAP_K)  # 1/rank of the one clip, expected over ties
    # audio -> text: a clip ranks every caption; its relevant ones are all of its own
    out.update({f"a2t_R@{k}": hit for k, hit in expected_hits(s, relevant, KS).items()})
    out[f"a2t_mAP@{MAP_K}"] = ap_at_k(s, relevant, MAP_K)
    return out


def caption_retrieval_metrics(scores, caption_clip) -> dict:
    """The metrics of the module docstring, plus ``num_clips`` and ``num_captions``."""
    values = per_query(scores, caption_clip)
    out = {key: float(values[key].mean()) for key in METRIC_KEYS}
    out.update(num_clips=int(np.asarray(scores).shape[0]), num_captions=int(np.asarray(scores).shape[1]))
    return out


def bootstrap_retrieval(score_sets: dict[str, np.ndarray], caption_clip, *, n: int, seed: int,
                        alpha: float = 0.05, baseline: str | None = PLAIN_MODEL_NAME) -> dict[str, dict]:
    """Percentile intervals of every metric per model, over resamples of the clips (see module doc).

    Resample b draws ``idx = rng.integers(0, N, size=N)`` from ``np.random.default_rng(seed)``; a
    clip drawn w times weighs w in the a2t means and gives each of its captions weight w in the
    t2a means. With ``baseline`` among the models, every other model also gets ``vs_<baseline>``:
    ``{metric: {diff, low, high}}``, model minus baseline on the same resamples."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    owner = np.asarray(caption_clip, dtype=np.int64)
    values = {name: per_query(s, owner) for name, s in score_sets.items()}
    num_clips = next(iter(score_sets.values())).shape[0]
    rng = np.random.default_rng(seed)
    draws = {name: {k: np.empty(int(n)) for k in METRIC_KEYS} for name in score_sets}
    for b in range(int(n)):
        w = np.bincount(rng.integers(0, num_clips, size=num_clips), minlength=num_clips).astype(np.float64)
        wc = w[owner]
        for name, v in values.items():
            for key in METRIC_KEYS:
                weights = wc if key.startswith("t2a") else w
                draws[name][key][b] = np.dot(weights, v[key]) / weights.sum()
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out = {}
    for name in score_sets:
        block: dict = {}
        for key in METRIC_KEYS:
            low, high = np.percentile(draws[name][key], q)
            point = float(values[name][key].mean())
            block[key] = {"low": float(low), "high": float(high), "point": point,
                          "contains_point": bool(low <= point <= high)}
        if baseline in score_sets and name != baseline:
            block[f"vs_{baseline}"] = {}
            for key in METRIC_KEYS:
                d = draws[name][key] - draws[baseline][key]
                low, high = np.percentile(d, q)
                block[f"vs_{baseline}"][key] = {
                    "diff": float(values[name][key].mean() - values[baseline][key].mean()),
                    "low": float(low), "high": float(high)}
        block.update(n=int(n), seed=int(seed), alpha=float(alpha),
                     unit="clips, each with all its captions; rankings over the full set")
        out[name] = block
    return out


def evaluate_captions(cfg: EvalConfig, models=None) -> tuple[dict, Path]:
    """Retrieval evaluation of every model on the same clips and captions; writes the JSON."""
    clap = open_clap(cfg)
    if models is None:
        models = build_models(cfg, clap.embed_dim)
    cache = open_cache(cfg)
    skips = SkipLog()
    table = read_captions(cfg.parquet_dir, text_columns=list(cfg.text_column), clip_id_column=cfg.clip_id_column,
                          skips=skips, limit=cfg.num_samples)
    audio_skips = SkipLog()
    clips = embed_run_clips(cfg, clap, cache, matcher=LabelMatcher([]), skips=audio_skips, label_column=None,
                            require_labels=False, keep=table.keep)
    skips.merge(audio_skips)
    if len(clips) == 0:
        raise DatasetError(f"no clip of {cfg.parquet_dir} has both readable audio and a caption in "
                           f"{cfg.text_column} (skipped: {skips.to_dict()})")
    pairs = pair_captions(clips, table)
    text_stats: dict = {}
    text_emb = embed_texts(clap, pairs.texts, cache=cache, stats=text_stats)
    index = torch.tensor(pairs.text_of, dtype=torch.long)
    blocks, score_sets = {}, {}
    for model in models:
        audio_pts, caption_pts = model.project(clips.audio), model.project(text_emb)[index]
        scores = model.score_points(audio_pts, caption_pts)
        score_sets[model.name] = scores
        info = model_info(model, str(clap.path))
        info["text"] = "captions as written (no prompt template)"
        blocks[model.name] = {
            "model_info": info,
            "similarity_stats": similarity_stats(scores),
            "metrics": caption_retrieval_metrics(scores, pairs.caption_clip),
            "bootstrap": None,
            # hyperbolic models: radii of clips and captions, each clip's caption ranking vs cosine
            "ball_usage": usage_block(model, audio_pts, caption_pts, scores),
            "ball_usage_skipped": usage_skipped(model),
        }
    if cfg.bootstrap:
        for name, block in bootstrap_retrieval(score_sets, pairs.caption_clip, n=cfg.bootstrap,
                                               seed=cfg.bootstrap_seed).items():
            blocks[name]["bootstrap"] = block
    path = results_path(cfg)
    scores_file = (save_caption_scores(unique_path(cfg.save_scores), score_sets, pairs, clips)
                   if cfg.save_scores else None)
    lost = sum(len(c.captions) for c in table.clips.values()) - len(pairs.captions)
    test_info = {"timestamp": datetime.now().isoformat(), "task": "retrieval", "parquet_dir": str(cfg.parquet_dir),
                 "num_samples": cfg.num_samples, "device": str(clap.device), "model_path": str(clap.path),
                 "layout": "single" if len(models) == 1 else "comparison", "models": [m.name for m in models], **table.summary(),
                 "captions_per_clip": {str(k): v for k, v in sorted(caption_counts(table).items())},
                 "clips_read": table.rows_read, "clips_embedded": len(clips),
                 "captions_evaluated": len(pairs.captions), "distinct_caption_texts": len(pairs.texts),
                 "captions_lost_with_their_clip_audio": lost, "caption_embeddings": text_stats,
                 "metric_definitions": DEFINITIONS, "bootstrap": cfg.bootstrap,
                 "bootstrap_seed": cfg.bootstrap_seed if cfg.bootstrap else None,
                 "scores_file": None if scores_file is None else str(scores_file),
                 "cache_dir": None if cache is None else str(cache.root)}
    return write_results(path, test_info, blocks, METRIC_KEYS, {"skipped": skips.to_dict()}), path
