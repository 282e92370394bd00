"""The files an evaluation writes: the results JSON (its default name and its two layouts, for
classification and caption retrieval alike) and, when asked, the score matrices (``--save-scores``:
one npz layout for class labels, one for captions) and the PNGs (``--plots``). Every file is new:
``hyperbolic.outputs.unique_path`` never overwrites one."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np

from hyperbolic import __version__
from hyperbolic.evaluation.scoring import ScoringModel
from hyperbolic.outputs import atomic_write_bytes, atomic_write_json, unique_path


def results_path(cfg) -> Path:
    """``--output-json``, else ``<result_dir>/clap_modelscope_results_<time>.json``; a name that
    exists already gets a suffix (``unique_path``)."""
    return unique_path(cfg.output_json or Path(cfg.result_dir) /
                       f"clap_modelscope_results_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json")


def write_results(path: Path, test_info: dict, blocks: dict[str, dict], summary_keys: tuple[str, ...],
                  rest: dict) -> dict:
    """Write and return the results JSON. One model: its block's keys beside ``test_info`` (the
    earlier scripts' single-model layout); several: ``summary`` (``summary_keys`` of each block's
    metrics) and ``models`` (the blocks by name). ``rest`` (data quality, ontology) follows.
    ``test_info`` gains the code's version (``hyperbolic_clap_version``)."""
    test_info = {**test_info, "hyperbolic_clap_version": __version__}
    if len(blocks) == 1:
        results = {"test_info": test_info, **next(iter(blocks.values())), **rest}
    else:
        summary = {name: {k: (b["metrics"] or {}).get(k) for k in summary_keys} for name, b in blocks.items()}
        results = {"test_info": test_info, "summary": summary, "models": blocks, **rest}
    # One clip per line: at 20,000 clips the indented list was 31 MB and most of the writing time.
    atomic_write_json(path, results, one_line_items=frozenset({"predictions"}))
    return results


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def save_scores(path: Path, score_sets: dict[str, np.ndarray], targets: np.ndarray, labelled: np.ndarray,
                class_names: list[str], clips) -> Path:
    """Write the npz: ``scores_<name>`` (N, C) float32 per model, ``model_names``, ``targets``
    (N, C) bool, ``labelled`` (N,) bool (rows that enter the metrics), ``class_names`` (C,),
    ``clip_file``, ``clip_row``, ``clip_video_id`` (N,). Rows are the embedded clips in reading order."""
    arrays = {f"scores_{name}": s for name, s in score_sets.items()}
    arrays.update(model_names=np.array(list(score_sets), dtype=str), targets=targets, labelled=labelled,
                  class_names=np.array(class_names, dtype=str),
                  clip_file=np.array([m.file for m in clips.metas], dtype=str),
                  clip_row=np.array([m.row for m in clips.metas], dtype=np.int64),
                  clip_video_id=np.array([m.video_id for m in clips.metas], dtype=str))
    return _write_npz(path, arrays)


PLOT_CLIPS_MAX = 5000  # clips drawn on the disk and measured: the first ones, enough to see where they sit


def clip_label_distances(audio_pts, text_pts, targets: np.ndarray, *, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact geodesic distances of each clip (N, D) with a label to the class prompts (C, D):
    ``(own, other)``, each (N,): to its nearest own label and to the nearest other class (inf
    when every class is its label)."""
    import torch

    from hyperbolic.geometry import poincare
    d = poincare.pairwise_dist(torch.as_tensor(audio_pts, dtype=torch.float64),
                               torch.as_tensor(text_pts, dtype=torch.float64), c=c).numpy()
    targets = np.asarray(targets, dtype=bool)
    return np.where(targets, d, np.inf).min(axis=1), np.where(targets, np.inf, d).min(axis=1)


def write_plots(json_path: Path, model: ScoringModel, block: dict, text_pts, class_names, hier,
                audio_pts=None, targets=None) -> dict:
    """The PNGs of one model. ``audio_pts`` (N, D) and ``targets`` (N, C): the labelled clips'
    points and ground truth (chance levels, which classes are named, the clip figure).

    Keys: ``per_class_ap``; for hyperbolic models ``poincare_disk`` (where the classes sit),
    ``poincare_clips`` (how far each clip is from its label; with clips) and ``hierarchy_radii``
    (children against parents; with ``--ontology``), each None with a ``<key>_skipped`` reason
    otherwise."""
    from hyperbolic.evaluation import disk_plots, plots  # matplotlib is imported only when plots are asked for
    written: dict = {}
    num_clips = None if targets is None else len(targets)
    if block["per_class"]:
        written["per_class_ap"] = str(plots.plot_per_class_ap(
            block["per_class"], unique_path(json_path.with_name(f"{json_path.stem}_{model.name}_per_class_ap.png")),
            title=f"{model.name}: per-class AP", num_clips=num_clips))
    if model.projector is None or model.geometry != "hyperbolic":
        written["poincare_disk"] = None
        written["poincare_disk_skipped"] = "not a hyperbolic model"
        return written
    dim, stem = int(text_pts.shape[1]), f"{json_path.stem}_{model.name}"
    xy = plots.disk_layout(text_pts, c=model.c)
    categories = None
    if hier is not None:
        categories = [None if v is None else hier.ontology.name(hier.ontology.top_level(v)[0]) for v in hier.node_ids]
    held = {n.casefold() for n in model.info.get("holdout_classes", [])}
    counts = None if targets is None else targets.sum(axis=0).tolist()
    written["poincare_disk"] = str(disk_plots.plot_poincare_disk(
        xy, unique_path(json_path.with_name(f"{stem}_poincare.png")), c=model.c, names=class_names, dim=dim,
        categories=categories, held_out=[i for i, n in enumerate(class_names) if n.casefold() in held], counts=counts,
        title=f"{model.name}: where the classes sit (c={model.c:.3g})"))
    if audio_pts is not None and len(audio_pts):
        clips, truth = audio_pts[:PLOT_CLIPS_MAX], np.asarray(targets[:PLOT_CLIPS_MAX], dtype=bool)
        # One PCA over the prompts and the clips together, so each clip's angle to its prompt
        # is as faithful as two components of both allow (distances from the origin stay exact).
        both = plots.disk_layout(np.concatenate([np.asarray(text_pts, dtype=np.float64),
                                                 np.asarray(clips, dtype=np.float64)]), c=model.c)
        prompts_xy, clips_xy = both[:len(text_pts)], both[len(text_pts):]
        own, other = clip_label_distances(clips, text_pts, truth, c=model.c)
        written["poincare_clips"] = str(disk_plots.plot_clip_distances(
            prompts_xy, clips_xy, unique_path(json_path.with_name(f"{stem}_poincare_clips.png")), c=model.c,
            names=class_names, clip_labels=[np.flatnonzero(row).tolist() for row in truth], own=own, other=other,
            dim=dim, title=f"{model.name}: how far is each clip from its label? (first {len(clips)} labelled clips)"))
    else:
        written["poincare_clips"], written["poincare_clips_skipped"] = None, "no labelled clip"
    edges = [] if hier is None else [tuple(p) for p in hier.hierarchy.edges(range(len(class_names))).tolist()]
    if edges:
        import torch

        from hyperbolic.geometry import poincare
        d0 = poincare.dist0(torch.as_tensor(text_pts, dtype=torch.float64), c=model.c).numpy()
        written["hierarchy_radii"] = str(disk_plots.plot_hierarchy_radii(
            d0, xy, edges, unique_path(json_path.with_name(f"{stem}_hierarchy.png")), c=model.c,
            names=class_names, dim=dim, title=f"{model.name}: are children outside their parents?"))
    else:
        written["hierarchy_radii"] = None
        written["hierarchy_radii_skipped"] = "no --ontology" if hier is None else "no parent -> child class pair"
    return written


def save_caption_scores(path: Path, score_sets: dict[str, np.ndarray], pairs, clips) -> Path:
    """The npz: ``scores_<model>`` (N clips, M captions) float32, ``model_names``,
    ``caption_clip`` (M,) int64, ``captions`` (M,), ``clip_id``, ``clip_file``, ``clip_row`` (N,)."""
    arrays = {f"scores_{name}": s for name, s in score_sets.items()}
    arrays.update(model_names=np.array(list(score_sets), dtype=str),
                  caption_clip=np.array(pairs.caption_clip, dtype=np.int64),
                  captions=np.array(pairs.captions, dtype=str), clip_id=np.array(pairs.clip_ids, dtype=str),
                  clip_file=np.array([m.file for m in clips.metas], dtype=str),
                  clip_row=np.array([m.row for m in clips.metas], dtype=np.int64))
    return _write_npz(path, arrays)
