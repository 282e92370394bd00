"""The tables printed to the terminal: a results file's metrics (classification or caption
retrieval, one column per model), the hierarchy demo's markdown rows and a sweep's rows. They
only read what the results JSON (or the sweep) already holds."""

from __future__ import annotations

from hyperbolic.evaluation.hierarchy import HIER_K
from hyperbolic.evaluation.retrieval import METRIC_KEYS
from hyperbolic.evaluation.scoring import PLAIN_MODEL_NAME
from hyperbolic.report import format_diff, model_blocks


def format_results_table(results: dict) -> str:
    """The table of a results file of either task (``test_info.task``)."""
    if results["test_info"].get("task") == "retrieval":
        return format_retrieval_table(results)
    return format_metrics_table(results)


TABLE_KEYS = ("mAP", "mAUC", "d_prime", "mAP_per_clip", "acc@1", "acc@3", "acc@5", "acc@10", "precision_micro",
              "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro", "t2a_R@1", "t2a_R@5",
              "t2a_R@10", "t2a_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "valid_samples", "total_samples")


# The ball-usage row of top1_same_as_cosine: "own" because the cosine is that of the model's own
# projected points, not plain CLAP (the clap_cosine column); the legend line says so under the table.
TOP1_OWN_COS = "top1_same_own_cos"
TOP1_OWN_COS_LEGEND = (f"{TOP1_OWN_COS}: fraction of clips whose top class under the model equals the top class under\n"
                       "  the cosine of the model's own projected points (top1_same_as_cosine in the JSON), not the "
                       f"{PLAIN_MODEL_NAME} column; 1.0: the ball ranks like cosine")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics_table(results: dict) -> str:
    """Side-by-side metrics of every model block, one row per metric."""
    blocks = model_blocks(results)
    names = list(blocks)
    rows: list[tuple[str, list[str]]] = []
    legend: list[str] = []
    for key in TABLE_KEYS:
        rows.append((key, [_fmt((b["metrics"] or {}).get(key)) for b in blocks.values()]))
    if any(b.get("bootstrap") for b in blocks.values()):
        for key in ("mAP", "acc@1"):
            rows.append((f"{key} 95% CI", [
                f"[{b['bootstrap'][key]['low']:.4f}, {b['bootstrap'][key]['high']:.4f}]" if b.get("bootstrap")
                else "-" for b in blocks.values()]))
        paired = f"vs_{PLAIN_MODEL_NAME}"
        if any((b.get("bootstrap") or {}).get(paired) for b in blocks.values()):
            for key in ("mAP", "acc@1"):
                rows.append((f"{key} - cosine", [format_diff((b.get("bootstrap") or {}).get(paired, {}).get(key)) or "-"
                                                 for b in blocks.values()]))
    if any(b.get("legacy_metrics") for b in blocks.values()):
        for key, label in (("precision_macro", "legacy P_macro"), ("recall_macro", "legacy R_macro"),
                           ("f1_macro", "legacy F1_macro")):
            rows.append((label, [
                _fmt(b["legacy_metrics"][key]) if b.get("legacy_metrics") else "-" for b in blocks.values()]))
    if any(b.get("ball_usage") for b in blocks.values()):
        for label, get in (("audio_on_clip", lambda u: u["audio"]["on_clip_sphere"]),
                           ("text_on_clip", lambda u: u["text"]["on_clip_sphere"]),
                           (TOP1_OWN_COS, lambda u: u["top1_same_as_cosine"])):
            rows.append((label, [_fmt(get(b["ball_usage"])) if b.get("ball_usage") else "-"
                                 for b in blocks.values()]))
        legend.append(TOP1_OWN_COS_LEGEND)
    if any(b.get("metrics_by_split") for b in blocks.values()):
        rows += _split_rows(blocks)
    if any(b.get("overlap_with_training") for b in blocks.values()):
        rows.append(("train_overlap", [_fmt((b.get("overlap_with_training") or {}).get("fraction"))
                                       for b in blocks.values()]))
    if any(b.get("ball_usage") for b in blocks.values()):
        rows += _block_rows(blocks, "ball_usage", (("audio_at_bound", ("audio", "at_numerical_boundary")),
                                                   ("text_at_bound", ("text", "at_numerical_boundary"))))
    if any((b.get("model_info") or {}).get("text_tower") for b in blocks.values()):
        rows += _block_rows(blocks, "model_info", TEXT_ROWS)
    if any(b.get("radius") for b in blocks.values()):
        rows += _block_rows(blocks, "radius", RADIUS_ROWS)
    if any(b.get("hierarchy") for b in blocks.values()):
        for label, get in (("rho(prompt,dep)", lambda h: h["prompt_norm_vs_depth"]["rho"]),
                           ("rho(audio,dep)", lambda h: h["audio_mean_norm_vs_depth"]["rho"]),
                           ("mistake_sev", lambda h: h["mistake_severity"]),
                           (f"hier_dist@{HIER_K}", lambda h: h[f"hier_dist@{HIER_K}"]),
                           ("cone_K", lambda h: h["cones"].get("K")),
                           ("cone_pairs_in", lambda h: h["cones"]["prompt_pairs_in_cone"]),
                           ("cone_clips_in", lambda h: h["cones"]["clip_label_pairs_in_cone"]),
                           ("rho(nodes,dep)", lambda h: (h["cones"]["norm_depth"] or {}).get("rho"))):
            rows.append((label, [_fmt(get(b["hierarchy"])) if b.get("hierarchy") else "-"
                                 for b in blocks.values()]))
        rows += _block_rows(blocks, "hierarchy", HIERARCHY_AWARE_ROWS)
        rows += _depth_rows(blocks)
    legend += [f"! {b['training_coverage']['warning']}" for b in blocks.values()
               if (b.get("training_coverage") or {}).get("warning")]
    legend += [f"! {name}: {o['clips']} of the {o['evaluated']} clips were in its training or validation data; "
               "not a held-out result" for name, b in blocks.items()
               if (o := b.get("overlap_with_training")) and o.get("clips")]
    return _layout(names, rows, legend)


def _layout(names: list[str], rows: list[tuple[str, list[str]]], legend: list[str]) -> str:
    """Right-aligned columns, one per model, under a header of the model names; legend lines last."""
    width = max(14, *(len(n) for n in names), *(len(v) for _, vals in rows for v in vals))
    label_width = max(16, *(len(label) + 1 for label, _ in rows))
    lines = [f"{'metric':<{label_width}}" + "".join(f"{n:>{width + 2}}" for n in names)]
    lines += [f"{label:<{label_width}}" + "".join(f"{v:>{width + 2}}" for v in vals) for label, vals in rows]
    return "\n".join(lines + legend)


TEXT_ROWS = (
    ("text_cos_mean", ("text_tower", "mean_pairwise_cosine")),
    ("text_erank", ("text_tower", "effective_rank")),
    ("proj_cos_mean", ("projected_prompts", "mean_pairwise_cosine")),
)
RADIUS_ROWS = (
    # (label, path inside the model's "radius" block); docs/evaluation.md "What the radius means"
    ("hub_skew_N10", ("hubness", "skewness_N10")),
    ("hub_top1_share", ("hubness", "top1_hub_share")),
    ("angle_only_top1", ("logit_split", "angle_only", "top1_agreement")),
    ("angle_only_rho", ("logit_split", "angle_only", "spearman")),
    ("radius_only_top1", ("logit_split", "radius_only", "top1_agreement")),
    ("radius_only_rho", ("logit_split", "radius_only", "spearman")),
    ("rho(r,#labels)", ("genericity", "radius_vs_num_labels", "rho")),
    ("rho(r,lab_depth)", ("genericity", "radius_vs_label_depth", "rho")),
    ("AURC softmax", ("confidence", "max_softmax", "aurc")),
    ("AURC margin", ("confidence", "margin", "aurc")),
    ("AURC radius", ("confidence", "radius", "aurc")),
    ("AURC random", ("confidence", "max_softmax", "aurc_random")),
    ("gap r_audio", ("modality_gap", "audio_radius_median")),
    ("gap r_text", ("modality_gap", "text_radius_median")),
    ("gap centroids", ("modality_gap", "centroid_distance")),
)


SPLIT_LABELS = {"seen": "seen", "unseen": "unseen", "never_trained": "never_tr"}


def _split_rows(blocks: dict) -> list[tuple[str, list[str]]]:
    """Per class split (``metrics_by_split``): the model's mAP and acc@1, plain CLAP's on the same
    classes (``cos``) and the difference (with its paired interval under --bootstrap)."""
    rows = []
    for part, short in SPLIT_LABELS.items():
        for key in ("mAP", "acc@1"):
            own, cos, diff = [], [], []
            for b in blocks.values():
                split = b.get("metrics_by_split") or {}
                m, p = split.get(part) or {}, (split.get(PLAIN_MODEL_NAME) or {}).get(part) or {}
                own.append(_fmt(m.get(key)))
                cos.append(_fmt(p.get(key)))
                paired = ((split.get("bootstrap") or {}).get(part) or {}).get(f"vs_{PLAIN_MODEL_NAME}", {}).get(key)
                point = (m.get(key) - p.get(key)) if m.get(key) is not None and p.get(key) is not None else None
                diff.append(format_diff(paired) or ("-" if point is None else f"{point:+.4f}"))
            if any(v != "-" for v in own):
                rows += [(f"{short} {key}", own), (f"{short} {key} cos", cos), (f"{short} {key}-cos", diff)]
    if any(b.get("training_coverage") for b in blocks.values()):
        rows += _block_rows(blocks, "training_coverage", (("trained_cover", ("trained_of_evaluated",)),
                                                          ("top1_never_tr", ("top1_on_never_trained",))))
    return rows


HIERARCHY_AWARE_ROWS = (
    # (label, path inside the model's "hierarchy" block); docs/hierarchy.md "Hierarchy-aware metrics"
    ("hier_P@1", ("hierarchical_precision@1",)),
    ("hier_R@1", ("hierarchical_recall@1",)),
    ("hier_F1@1", ("hierarchical_f1@1",)),
    ("mAP labels", ("map_by_ground_truth", "labels", "mAP")),
    ("mAP +ancestors", ("map_by_ground_truth", "labels+ancestors", "mAP")),
    ("backoff_area", ("backoff", "area_normalised")),
    ("traverse_on_path", ("traversal", "on_path")),
    ("traverse_monoton", ("traversal", "depth_never_increases")),
)


def _depth_rows(blocks: dict) -> list[tuple[str, list[str]]]:
    """``mAP depth d`` (the clips' own labels) for every depth some model has."""
    per_model = [{e["depth"]: e["mAP"] for e in
                  (_get(b.get("hierarchy") or {}, ("map_by_ground_truth", "labels", "per_depth")) or [])}
                 for b in blocks.values()]
    depths = sorted({d for m in per_model for d in m if d is not None}) + (
        [None] if any(None in m for m in per_model) else [])
    return [(f"mAP depth {'?' if d is None else d}", [_fmt(m.get(d)) for m in per_model]) for d in depths]


def _block_rows(blocks: dict, key: str, spec) -> list[tuple[str, list[str]]]:
    """One row per (label, path) of ``spec`` read inside each model's ``key`` block; "-" where absent."""
    return [(label, [_fmt(_get(b.get(key) or {}, path)) for b in blocks.values()]) for label, path in spec]


def format_retrieval_table(results: dict) -> str:
    """One row per metric, one column per model; with ``--bootstrap``, each metric's 95% interval
    and, beside plain CLAP, the paired difference to it with its interval (as the classification
    table prints them)."""
    blocks = model_blocks(results)
    rows: list[tuple[str, list[str]]] = [(key, [_fmt(b["metrics"][key]) for b in blocks.values()])
                                         for key in METRIC_KEYS]
    if any(b.get("bootstrap") for b in blocks.values()):
        for key in METRIC_KEYS:
            rows.append((f"{key} 95% CI", [
                f"[{b['bootstrap'][key]['low']:.4f}, {b['bootstrap'][key]['high']:.4f}]"
                if (b.get("bootstrap") or {}).get(key) else "-" for b in blocks.values()]))
        paired = f"vs_{PLAIN_MODEL_NAME}"
        if any((b.get("bootstrap") or {}).get(paired) for b in blocks.values()):
            for key in METRIC_KEYS:
                rows.append((f"{key} - cosine", [
                    format_diff((b.get("bootstrap") or {}).get(paired, {}).get(key)) or "-" for b in blocks.values()]))
    return _layout(list(blocks), rows, [])


HIERARCHY_COLUMNS = (
    # (header, path in a model block); "-" where a value is undefined (cones of non-hyperbolic models)
    ("mAP", ("metrics", "mAP")),
    ("acc@1", ("metrics", "acc@1")),
    ("mistake sev.", ("hierarchy", "mistake_severity")),
    ("hier_dist@5", ("hierarchy", "hier_dist@5")),
    ("pairs in cone", ("hierarchy", "cones", "prompt_pairs_in_cone")),
    ("clips in cone", ("hierarchy", "cones", "clip_label_pairs_in_cone")),
    ("rho classes", ("hierarchy", "prompt_norm_vs_depth", "rho")),
    ("rho all nodes", ("hierarchy", "cones", "norm_depth", "rho")),
    ("cone K", ("hierarchy", "cones", "K")),
)


def _get(block: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    return block


def format_hierarchy_table(results: dict) -> str:
    """One markdown row per model of a comparison: the standard and the hierarchy numbers."""
    head = "| model | " + " | ".join(h for h, _ in HIERARCHY_COLUMNS) + " |"
    rows = [head, "|---" * (len(HIERARCHY_COLUMNS) + 1) + "|"]
    for name, block in results["models"].items():
        cells = [_get(block, path) for _, path in HIERARCHY_COLUMNS]
        rows.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(rows)


def format_sweep_table(rows: list[dict], winner: dict) -> str:
    lines = [f"{'c':>8} {'temperature':>12} {'best val mAP':>13} {'best val loss':>14} {'epoch':>6}  checkpoint"]
    for r in rows:
        mark = "  <- best" if r is winner else ""
        lines.append(f"{r['c']:>8g} {r['temperature']:>12g} {r['best_val_mAP']:>13.4f} {r['best_val_loss']:>14.4f} "
                     f"{r['best_epoch']:>6}  {r['best_checkpoint']}{mark}")
    return "\n".join(lines)
