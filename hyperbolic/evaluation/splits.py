"""The class splits of a checkpoint (``metrics_by_split``): which classes it trained on, held out,
or never saw a training clip of, every model's metrics on each, plain CLAP's beside them, and
paired bootstrap intervals; and the warning when the trained classes cover little of what is
evaluated (docs/evaluation.md, "Held-out classes").

Parts (class columns of the score matrix, by name, case-insensitive):

- ``seen``: classes with a training clip (the checkpoint's ``training_clips.trained_classes``);
  for a checkpoint without that record, every class not held out (the earlier rule, said in
  ``seen_rule``);
- ``unseen``: the checkpoint's ``holdout_classes``;
- ``never_trained``: in the class list, not held out, and without a training clip.

Each part is scored on its own columns only (ranking among that subset of classes) over the
clips with at least one label in it, as before.
"""

from __future__ import annotations

import logging

import numpy as np

from hyperbolic.metrics.bootstrap import bootstrap_ci, bootstrap_difference, bootstrap_samples

log = logging.getLogger("hyperbolic.evaluation.evaluate")

PARTS = ("seen", "unseen", "never_trained")
FEW_TRAINED = 0.5  # warn when the trained classes are fewer than this share of the evaluated classes ...
MOST_TOP1 = 0.5    # ... or when more than this share of top-1 predictions falls on never-trained classes
SEEN_RULES = {"trained": "classes with a training clip (checkpoint training_clips.trained_classes)",
              "not_held_out": "every class not held out (the checkpoint records no trained classes)"}


def class_parts(info: dict, training_clips: dict | None, class_names: list[str]) -> dict | None:
    """``{part: (C,) bool columns}`` and ``seen_rule``; None when there is nothing to split (no
    held-out class and no record of the trained classes)."""
    folded = [n.casefold() for n in class_names]
    held = {n.casefold() for n in info.get("holdout_classes") or []}
    trained = (training_clips or {}).get("trained_classes")
    if not held and trained is None:
        return None
    unseen = np.array([n in held for n in folded])
    if trained is None:
        return {"seen": ~unseen, "unseen": unseen, "never_trained": None, "seen_rule": "not_held_out"}
    trained = {n.casefold() for n in trained}
    seen = np.array([n in trained for n in folded]) & ~unseen
    return {"seen": seen, "unseen": unseen, "never_trained": ~seen & ~unseen, "seen_rule": "trained"}


def split_block(parts: dict, scores: np.ndarray, plain: np.ndarray | None, targets: np.ndarray, cfg,
                metrics_fn, holdout_classes: list[str], plain_name: str, plain_memo: dict | None = None) -> dict:
    """``metrics_by_split`` of one model: ``scores`` and ``plain`` (plain CLAP's, or None) are the
    labelled clips' ``(N, C)`` scores, ``targets`` their ground truth; ``metrics_fn(s, t)`` the run's
    metrics. With ``cfg.bootstrap``: per part, the model's intervals and the paired difference to
    plain CLAP on the same resamples. ``plain_memo`` (a dict kept across the models of one
    evaluation): plain CLAP's metrics and resamples of a part, computed once for every checkpoint
    whose part has the same classes."""
    memo = {} if plain_memo is None else plain_memo

    def plain_part(rows, cols, t) -> tuple[dict, dict | None]:
        key = (rows.tobytes(), cols.tobytes())
        if key not in memo:
            p = plain[rows][:, cols]
            memo[key] = (metrics_fn(p, t), bootstrap_samples(p, t, n=cfg.bootstrap, seed=cfg.bootstrap_seed)
                         if cfg.bootstrap else None)
        return memo[key]

    out: dict = {"holdout_classes": sorted(holdout_classes), "seen_rule": SEEN_RULES[parts["seen_rule"]],
                 "classes": {}, plain_name: {}, "bootstrap": {} if cfg.bootstrap else None}
    for part in PARTS:
        cols = parts[part]
        if cols is None:
            out[part] = out[plain_name][part] = None
            out["classes"][part] = None
            continue
        rows = targets[:, cols].any(axis=1)
        out["classes"][part] = int(cols.sum())
        if not rows.any():
            out[part] = out[plain_name][part] = None
            continue
        s, t = scores[rows][:, cols], targets[rows][:, cols]
        out[part] = metrics_fn(s, t)
        plain_metrics, base = (None, None) if plain is None else plain_part(rows, cols, t)
        out[plain_name][part] = plain_metrics
        if cfg.bootstrap:
            own = bootstrap_samples(s, t, n=cfg.bootstrap, seed=cfg.bootstrap_seed)
            block = bootstrap_ci(s, t, n=cfg.bootstrap, seed=cfg.bootstrap_seed, samples=own)
            if plain is not None:
                block[f"vs_{plain_name}"] = bootstrap_difference(own, base, out[part], out[plain_name][part])
            out["bootstrap"][part] = block
    return out


def coverage(parts: dict, scores_all: np.ndarray, targets: np.ndarray, class_names: list[str], name: str) -> dict:
    """How much of the evaluation the trained classes cover: ``trained_of_evaluated`` (share of the
    classes with a positive clip that have a training clip) and ``top1_on_never_trained`` (share of
    the scored clips whose top 1 is a never-trained class, ties at their expected value). Warns,
    naming the fixes, when the first is below ``FEW_TRAINED`` or the second above ``MOST_TOP1``."""
    from hyperbolic.metrics.classification import _topk_expected

    evaluated = targets.any(axis=0)
    seen = parts["seen"]
    out = {"evaluated_classes": int(evaluated.sum()), "trained_evaluated_classes": int((evaluated & seen).sum()),
           "trained_of_evaluated": float((evaluated & seen).sum() / evaluated.sum()) if evaluated.any() else None,
           "top1_on_never_trained": None}
    never = parts["never_trained"]
    if never is not None and len(scores_all):
        top1 = np.concatenate([_topk_expected(scores_all[a:a + 4096], 1)[:, never].sum(axis=1)
                               for a in range(0, len(scores_all), 4096)])
        out["top1_on_never_trained"] = float(top1.mean())
    few = out["trained_of_evaluated"] is not None and out["trained_of_evaluated"] < FEW_TRAINED
    most = out["top1_on_never_trained"] is not None and out["top1_on_never_trained"] > MOST_TOP1
    if few or most:
        out["warning"] = (f"{name}: the trained classes cover {out['trained_evaluated_classes']} of the "
                          f"{out['evaluated_classes']} evaluated classes, and "
                          + ("-" if out["top1_on_never_trained"] is None else f"{100 * out['top1_on_never_trained']:.0f}%")
                          + " of the clips' top-1 predictions fall on classes never trained on; the projector has "
                          "not learnt where those prompts go. Train with --negatives all-classes (every class "
                          "prompt is contrasted, not only those in the batch), or evaluate with a --class-labels "
                          "list of the trained classes")
        log.warning("%s", out["warning"])
    return out
