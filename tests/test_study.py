"""``python -m hyperbolic.study``: the grid on tiny generated embeddings (fast), resuming, shards,
and the seed-averaged paired bootstrap against a brute-force computation."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from data.audioset import ClipMeta
from hyperbolic.config import StudyConfig, TrainConfig
from hyperbolic.embedding.embeddings import ClipEmbeddings
from hyperbolic.study import cell as cell_module
from hyperbolic.study.command import run_study
from hyperbolic.study.data import StudyData
from hyperbolic.study.grid import COSINE, Cell, StudyError, claim, make_grid, parse_shard, release, shard_cells
from hyperbolic.study.summary import seed_averaged_samples, summarize


def _clips(centers: torch.Tensor, n: int, rng: np.random.Generator, tag: str) -> ClipEmbeddings:
    k = rng.integers(0, len(centers), size=n)
    x = centers[k] + 0.6 * torch.from_numpy(rng.standard_normal((n, centers.shape[1]))).float()
    labels = [[int(c)] for c in k]
    return ClipEmbeddings(torch.nn.functional.normalize(x, dim=-1), labels, [row[0] for row in labels],
                          [[f"c{row[0]}"] for row in labels], [ClipMeta(f"{tag}.parquet", i, f"{tag}{i}") for i in range(n)])


def tiny_data(seed: int = 0, classes: int = 4, dim: int = 16) -> StudyData:
    """Planted classes: clips are noisy copies of a class centre, prompts a distorted centre."""
    rng = np.random.default_rng(seed)
    centers = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((classes, dim))).float(), dim=-1)
    clips = _clips(centers, 48, rng, "train")
    prompts = torch.nn.functional.normalize(centers + 0.8 * torch.from_numpy(
        rng.standard_normal((classes, dim))).float(), dim=-1)
    return StudyData(clips, prompts, [f"c{k}" for k in range(classes)], train=list(range(36)),
                     val=list(range(36, 48)), eval_clips=_clips(centers, 40, rng, "eval"))


def study_config(tmp_path, **grid) -> StudyConfig:
    recipe = TrainConfig(parquet_dir="unused", output_dir=str(tmp_path), epochs=2, batch_size=8,
                         negatives="all-classes", keep_epochs=1, device="cpu")
    return StudyConfig(recipe=recipe, **{"geometries": ["hyperbolic"], "seeds": [0], "probe": False,
                                         "bootstrap": 50, **grid})


@pytest.fixture
def count_fits(monkeypatch):
    """Counts the trainings the study starts (hyperbolic.training.train.fit as the cell calls it)."""
    calls = []
    real = cell_module.fit

    def counted(cfg, data, out, **kw):
        calls.append((cfg.geometry, cfg.seed, len(data.split.train)))
        return real(cfg, data, out, **kw)
    monkeypatch.setattr(cell_module, "fit", counted)
    return calls


def test_a_two_cell_study_writes_cells_summary_and_table(tmp_path, count_fits):
    study = study_config(tmp_path, geometries=["hyperbolic", "euclidean"])
    loads = []
    stats = run_study(study, tmp_path, load_data=lambda: loads.append(1) or tiny_data())
    assert loads == [1]  # the embeddings are read once for the whole study
    assert sorted(g for g, _, _ in count_fits) == ["euclidean", "hyperbolic"]
    out = json.loads((tmp_path / "study.json").read_text())
    assert {c["geometry"] for c in out["cells"]} == {COSINE, "hyperbolic", "euclidean"}
    assert out["missing"] == [] and len(stats["ran"]) == 3
    hyp = next(r for r in out["summary"] if r["geometry"] == "hyperbolic")
    cell = next(c for c in out["cells"] if c["geometry"] == "hyperbolic")
    assert hyp["mAP"]["mean"] == pytest.approx(cell["metrics"]["mAP"])  # one seed: the mean is the cell
    assert set(hyp["differences"]) == {"euclidean", COSINE}
    diff = hyp["differences"]["euclidean"]["mAP"]
    euc = next(c for c in out["cells"] if c["geometry"] == "euclidean")
    assert diff["diff"] == pytest.approx(cell["metrics"]["mAP"] - euc["metrics"]["mAP"])
    assert diff["low"] <= diff["high"]
    assert cell["ball_usage"] is not None and euc["ball_usage"] is None
    assert len(cell["on_clip_sphere_by_epoch"]["audio"]) == 2
    table = (tmp_path / "study.md").read_text()
    assert "| 1 | 16 | hyperbolic | 1 |" in table and "hyperbolic minus" in table
    assert (tmp_path / "study_mAP_vs_dim.png").stat().st_size > 0


def test_projection_sizes_controls_and_the_probe_ceiling(tmp_path, count_fits):
    study = study_config(tmp_path, geometries=["hyperbolic", "euclidean-distance"], proj_dims=[2, None], probe=True)
    run_study(study, tmp_path, load_data=tiny_data)
    out = json.loads((tmp_path / "study.json").read_text())
    cells = {c["key"]: c for c in out["cells"]}
    assert set(cells) == {"clap-cosine_dclap_f1_s0", "linear-probe_dclap_f1_s0", "hyperbolic_d2_f1_s0",
                          "hyperbolic_dclap_f1_s0", "euclidean-distance_d2_f1_s0", "euclidean-distance_dclap_f1_s0"}
    state = torch.load(cells["hyperbolic_d2_f1_s0"]["checkpoint"], weights_only=False)
    assert state["projection_state_dict"]["linear.weight"].shape == (2, 16)
    rows = {(r["geometry"], r["proj_dim"]): r for r in out["summary"]}
    probe, cosine, hyp = rows[("linear-probe", None)], rows[("clap-cosine", None)], rows[("hyperbolic", 2)]
    assert set(hyp["differences"]) == {"euclidean-distance", "clap-cosine", "linear-probe"}
    share = (hyp["mAP"]["mean"] - cosine["mAP"]["mean"]) / (probe["mAP"]["mean"] - cosine["mAP"]["mean"])
    assert hyp["gain_share_of_probe"] == pytest.approx(share)
    # The probe is a supervised ridge fit: independent of the text prompts, it beats chance easily.
    assert probe["mAP"]["mean"] > 0.5


def test_with_an_ontology_cells_carry_the_hierarchy_figures(tmp_path):
    from hyperbolic.hierarchy.cones import Hierarchy
    from hyperbolic.hierarchy.ontology import Ontology
    from tests.helpers import random_ontology
    data = tiny_data(classes=6)
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps(random_ontology(data.class_names, abstract=2, roots=2, seed=1)))
    data.hierarchy = Hierarchy.build(Ontology.load(path), data.class_names)
    extra = torch.nn.functional.normalize(torch.randn(len(data.hierarchy.extra_names), 16), dim=-1)
    data.prompts = torch.cat([data.prompts, extra])  # the abstract parents' prompts follow the classes
    study = study_config(tmp_path / "study")
    study = replace(study, geometries=["hyperbolic", "euclidean"],
                    recipe=replace(study.recipe, ontology=str(path), entailment_weight=1.0, entailment_k=1.0))
    assert any("--entailment-weight > 0" in m for m in study.problems())  # cones need the ball
    with pytest.raises(StudyError, match="--geometries hyperbolic"):
        run_study(study, tmp_path / "study", load_data=lambda: data)  # refused before any cell, in code too
    assert not (tmp_path / "study" / "cells").exists()
    study = replace(study, geometries=["hyperbolic"])
    run_study(study, tmp_path / "study2", load_data=lambda: data)
    cell = json.loads((tmp_path / "study2" / "cells" / "hyperbolic_dclap_f1_s0" / "cell.json").read_text())
    h = cell["hierarchy"]
    assert h["prompt_pairs"] == data.hierarchy.parent_child.shape[0] > 0 and h["cone_K"] == 1.0
    assert 0 <= h["prompt_pairs_in_cone"] <= 1 and h["mistake_severity"] is not None


def test_a_cell_trains_on_its_fraction_of_the_training_part(tmp_path, count_fits):
    study = study_config(tmp_path, fractions=[0.5, 1.0], seeds=[0, 1])
    run_study(study, tmp_path, load_data=tiny_data)
    sizes = sorted((seed, n) for _, seed, n in count_fits)
    assert sizes == [(0, 18), (0, 36), (1, 18), (1, 36)]
    data = tiny_data()
    a, b = data.fraction_rows(0.5, 0), data.fraction_rows(0.5, 1)
    assert set(a) <= set(data.train) and a != b  # seeded draws from the training part, never validation


def test_resuming_reuses_finished_cells_and_redoes_an_interrupted_one(tmp_path, count_fits, monkeypatch):
    study = study_config(tmp_path, seeds=[0, 1])
    run_study(study, tmp_path, load_data=tiny_data)
    assert len(count_fits) == 2
    loads = []
    stats = run_study(study, tmp_path, load_data=lambda: loads.append(1) or tiny_data())
    assert len(count_fits) == 2 and loads == [] and stats["reused"] == 3  # nothing retrained, nothing embedded
    # One more seed; the first of its cells is interrupted (Ctrl-C inside fit).
    bigger = replace(study, seeds=[0, 1, 2])
    real = cell_module.fit

    def interrupted(cfg, data, out, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cell_module, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(bigger, tmp_path, load_data=tiny_data)
    assert not list((tmp_path / "cells").glob("*.claim"))  # the claim is released
    monkeypatch.setattr(cell_module, "fit", real)
    stats = run_study(bigger, tmp_path, load_data=tiny_data)
    assert stats["ran"] == ["hyperbolic_dclap_f1_s2"] and count_fits[2:] == [("hyperbolic", 2, 36)]


def test_a_folder_made_with_another_recipe_is_refused(tmp_path):
    run_study(study_config(tmp_path), tmp_path, load_data=tiny_data)
    other = study_config(tmp_path)
    other = replace(other, recipe=replace(other.recipe, epochs=3))
    with pytest.raises(StudyError, match="epochs: 2 in the folder, 3 now"):
        run_study(other, tmp_path, load_data=tiny_data)


def test_a_setting_added_to_the_code_later_at_its_default_keeps_the_folder(tmp_path):
    run_study(study_config(tmp_path), tmp_path, load_data=tiny_data)
    path = tmp_path / "study_config.json"
    stored = json.loads(path.read_text())
    del stored["recipe"]["grad_clip"]  # as if the folder predated the flag
    path.write_text(json.dumps(stored))
    stats = run_study(study_config(tmp_path), tmp_path, load_data=tiny_data)
    assert stats["reused"] == 2 and stats["ran"] == []
    other = study_config(tmp_path)
    with pytest.raises(StudyError, match="grad_clip"):
        run_study(replace(other, recipe=replace(other.recipe, grad_clip=2.0)), tmp_path, load_data=tiny_data)


def test_shards_split_the_cells_and_no_cell_runs_twice(tmp_path, count_fits):
    grid = {"geometries": ["hyperbolic", "euclidean"], "seeds": [0, 1, 2]}
    cells = make_grid(grid["geometries"], [None], [1.0], grid["seeds"], probe=False)
    parts = [shard_cells(cells, (i, 3)) for i in range(3)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cells)  # a partition
    assert all(abs(len(p) - len(cells) / 3) < 1 for p in parts)
    # Worker 1 finds one of its cells claimed by a worker still running (this process holds it).
    busy = parts[1][0]
    assert claim(tmp_path, busy, "x") and not claim(tmp_path, busy, "y")
    ran = []
    for i in range(3):
        ran += run_study(study_config(tmp_path, shard=f"{i}/3", **grid), tmp_path, load_data=tiny_data)["ran"]
    assert len(ran) == len(set(ran)) == len(cells) - 1 and busy.key not in ran
    assert len(count_fits) == len(cells) - 2  # the cosine reference trains nothing
    out = json.loads((tmp_path / "study.json").read_text())
    assert out["missing"] == [busy.key]  # the summary is rebuilt from whatever cells exist
    release(tmp_path, busy)
    stats = run_study(study_config(tmp_path, shard="1/3", **grid), tmp_path, load_data=tiny_data)
    assert stats["ran"] == [busy.key]
    assert json.loads((tmp_path / "study.json").read_text())["missing"] == []


def test_parse_shard_names_the_flag():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(StudyError, match="--shard"):
            parse_shard(bad)


def _brute_ap(s: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    """AP of one class over clips drawn m times: a drawn positive's precision counts every other
    clip scoring >= its score with its multiplicity, and its own copies once (no ties here)."""
    pos = [i for i in range(len(s)) if t[i] and m[i] > 0]
    precisions = []
    for i in pos:
        ge = [j for j in range(len(s)) if j != i and s[j] >= s[i]]
        hits = sum(m[j] for j in ge if t[j]) + 1
        precisions.append((hits / (sum(m[j] for j in ge) + 1), m[i]))
    return sum(p * w for p, w in precisions) / sum(w for _, w in precisions)


def _brute_metrics(s: np.ndarray, t: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    m = np.bincount(idx, minlength=len(s))
    aps = [_brute_ap(s[:, k], t[:, k], m) for k in range(s.shape[1]) if (t[:, k] & (m > 0)).any()]
    acc = np.mean([t[i, np.argmax(s[i])] for i in idx])
    return float(np.mean(aps)), float(acc)


def test_seed_averaged_paired_bootstrap_matches_brute_force(tmp_path):
    """Two configurations x three seeds on 12 clips: resample b draws the clips, each seed's mAP and
    acc@1 are computed on it, averaged over the seeds, and hyperbolic minus control is taken."""
    rng = np.random.default_rng(3)
    n, classes, resamples, seed = 12, 3, 40, 5
    t = np.zeros((n, classes), dtype=bool)
    t[np.arange(n), rng.integers(0, classes, n)] = True
    t[rng.random((n, classes)) < 0.15] = True
    scores = {(g, s): rng.standard_normal((n, classes)) + (1.0 if g == "hyperbolic" else 0.3) * t
              for g in ("hyperbolic", "euclidean") for s in range(3)}
    from hyperbolic.metrics.bootstrap import bootstrap_samples
    from hyperbolic.metrics.classification import classification_metrics
    records = []
    for (g, s), sc in scores.items():
        c = Cell(g, None, 1.0, s)
        folder = tmp_path / "cells" / c.key
        folder.mkdir(parents=True)
        sm = bootstrap_samples(sc, t, n=resamples, seed=seed)
        np.savez(folder / "bootstrap.npz", mAP=sm["mAP"], acc_at_1=sm["acc@1"])
        met = classification_metrics(sc, t)
        records.append({**c.to_dict(), "key": c.key, "metrics": {k: met[k] for k in ("mAP", "acc@1", "acc@5")},
                        "bootstrap": {"n": resamples, "seed": seed, "file": "bootstrap.npz"},
                        "seconds": {"total": 0.0}, "eval_clips": n})
    rows = summarize(tmp_path, records)
    diff = next(r for r in rows if r["geometry"] == "hyperbolic")["differences"]["euclidean"]

    draw = np.random.default_rng(seed)
    brute = {"mAP": [], "acc@1": []}
    for _ in range(resamples):
        idx = draw.integers(0, n, size=n)
        per = {g: np.mean([_brute_metrics(scores[(g, s)], t, idx) for s in range(3)], axis=0)
               for g in ("hyperbolic", "euclidean")}
        brute["mAP"].append(per["hyperbolic"][0] - per["euclidean"][0])
        brute["acc@1"].append(per["hyperbolic"][1] - per["euclidean"][1])
    for key in ("mAP", "acc@1"):
        low, high = np.percentile(brute[key], [2.5, 97.5])
        assert diff[key]["low"] == pytest.approx(low, abs=1e-9)
        assert diff[key]["high"] == pytest.approx(high, abs=1e-9)
        full = np.mean([_brute_metrics(scores[("hyperbolic", s)], t, np.arange(n)) for s in range(3)], axis=0) - \
            np.mean([_brute_metrics(scores[("euclidean", s)], t, np.arange(n)) for s in range(3)], axis=0)
        assert diff[key]["diff"] == pytest.approx(full[0 if key == "mAP" else 1], abs=1e-9)
    # Averaging the seeds inside each resample is not averaging three separate intervals.
    avg = seed_averaged_samples([{"mAP": np.array([0.0, 1.0]), "acc@1": np.array([1.0, 0.0])},
                                 {"mAP": np.array([1.0, 1.0]), "acc@1": np.array([0.0, 0.0])}])
    assert avg["mAP"].tolist() == [0.5, 1.0] and avg["acc@1"].tolist() == [0.5, 0.0]


@pytest.mark.slow
def test_the_command_end_to_end_on_parquet_with_a_tiny_clap(tmp_path, tiny_clap_dir, demo_train_dir, demo_eval_dir):
    from hyperbolic.study.command import main
    out = tmp_path / "study"
    argv = ["--parquet-dir", demo_train_dir, "--eval-parquet-dir", demo_eval_dir, "--checkpoint", tiny_clap_dir,
            "--device", "cpu", "--num-workers", "0", "--output-dir", out, "--epochs", "2", "--batch-size", "8",
            "--geometries", "hyperbolic", "euclidean", "--seeds", "0", "--bootstrap", "20", "--no-probe"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads((out / "study.json").read_text())
    assert result["data"]["clips_eval"] == 20 and result["data"]["clips_train"] + result["data"]["clips_val"] == 40
    assert len(result["cells"]) == 3 and result["missing"] == []
    setup = json.loads((out / "cells" / "hyperbolic_dclap_f1_s0" / "setup.json").read_text())
    assert setup["config"]["geometry"] == "hyperbolic" and setup["config"]["seed"] == 0
    assert setup["config"]["epochs"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--geometry", "euclidean"], "--geometry .use --geometries. does not apply"),
    (["--geometries", "spherical"], "unknown geometry 'spherical'"),
    (["--fractions", "0"], "--fractions must be in"),
    (["--shard", "3/3"], "--shard"),
    (["--c", "0.5", "1"], "one --c"),
])
def test_bad_study_flags_name_the_flag(flags, message, capsys):
    from hyperbolic.study.command import parse_args
    with pytest.raises(SystemExit) as stop:
        parse_args(["--parquet-dir", "x", *flags])
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err)
