"""Caption retrieval (``--text-column``) end to end on AudioCaps-like and Clotho-like folders,
every metric checked against a brute-force reference computed here from the saved scores."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import test_clap_modelscope as test_script
from data.audioset import SkipLog
from data.captions import read_captions, split_captions
from data.errors import DatasetError
from data.labels import LabelMatcher
from hyperbolic import report
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.captions import embed_texts
from hyperbolic.embedding.clap import FrozenClap
from hyperbolic.embedding.embeddings import embed_clips, embed_prompts
from hyperbolic.evaluation.retrieval import caption_retrieval_metrics
from hyperbolic.model.projector import Projector
from tests.benchmark_folders import write_audiocaps_like, write_clotho_like
from tests.helpers import run_main
from tests.test_evaluate import _checkpoint

KS = (1, 5, 10)


def brute_force(s: np.ndarray, owner: np.ndarray, *, every_tie_order: bool = False) -> dict:
    """The metrics by their definitions, one query at a time. R@k and mAP@10 are averaged over
    every order of the ranked items (``every_tie_order``, small cases only: the exact expectation
    over random tie orders) or taken from the stable order (enough when no score ties)."""
    n, m = s.shape

    def orders(size):
        return itertools.permutations(range(size)) if every_tie_order else [tuple(range(size))]

    out = {}
    t2a_rank = []
    for j in range(m):
        order = sorted(range(n), key=lambda i: (-s[i, j], i))
        t2a_rank.append(order.index(owner[j]) + 1)
    for k in KS:
        hits = []
        for j in range(m):
            tries = [sorted(range(n), key=lambda i: (-s[i, j], p[i])).index(owner[j]) < k for p in orders(n)]
            hits.append(np.mean(tries))
        out[f"t2a_R@{k}"] = np.mean(hits)
    out["t2a_mAP@10"] = np.mean([
        np.mean([1.0 / r if (r := sorted(range(n), key=lambda i: (-s[i, j], p[i])).index(owner[j]) + 1) <= 10
                 else 0.0 for p in orders(n)]) for j in range(m)])
    def ap10(rel):
        found, total = 0, 0.0
        for r in range(min(10, m)):
            if rel[r]:
                found += 1
                total += found / (r + 1)
        return total / min(10, sum(rel))

    aps = [np.mean([ap10([owner[j] == i for j in sorted(range(m), key=lambda j: (-s[i, j], p[j]))])
                    for p in orders(m)]) for i in range(n)]
    for k in KS:
        hits = []
        for i in range(n):
            tries = [any(owner[j] == i for j in sorted(range(m), key=lambda j: (-s[i, j], p[j]))[:k])
                     for p in orders(m)]
            hits.append(np.mean(tries))
        out[f"a2t_R@{k}"] = np.mean(hits)
    out["a2t_mAP@10"] = np.mean(aps)
    return out


def _bootstrap_reference(score_sets, owner, n, seed):
    """Per model and metric: the resampled values, one clip draw at a time (duplicated queries)."""
    num_clips = next(iter(score_sets.values())).shape[0]
    per_caption = {name: brute_force_per_query(s, owner) for name, s in score_sets.items()}
    rng = np.random.default_rng(seed)
    draws = {name: {k: [] for k in per_caption[name]} for name in score_sets}
    for _ in range(n):
        idx = rng.integers(0, num_clips, size=num_clips)
        caps = [j for i in idx for j in np.flatnonzero(owner == i)]
        for name, values in per_caption.items():
            for key, v in values.items():
                draws[name][key].append(np.mean([v[j] for j in caps]) if key.startswith("t2a")
                                        else np.mean([v[i] for i in idx]))
    return draws


def brute_force_per_query(s, owner):
    n, m = s.shape
    out = {}
    for j in range(m):
        r = sorted(range(n), key=lambda i: (-s[i, j], i)).index(owner[j]) + 1
        for k in KS:
            out.setdefault(f"t2a_R@{k}", []).append(float(r <= k))
        out.setdefault("t2a_mAP@10", []).append(1.0 / r if r <= 10 else 0.0)
    for i in range(n):
        rel = [owner[j] == i for j in sorted(range(m), key=lambda j: (-s[i, j], j))]
        for k in KS:
            out.setdefault(f"a2t_R@{k}", []).append(float(any(rel[:k])))
        prec = [sum(rel[:r + 1]) / (r + 1) for r in range(min(10, m))]
        out.setdefault("a2t_mAP@10", []).append(sum(p for p, hit in zip(prec, rel) if hit) / min(10, sum(rel)))
    return out


def test_metrics_match_brute_force_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(1, 5))
        owner = np.concatenate([np.arange(n), rng.integers(0, n, size=int(rng.integers(0, 7 - n)))])
        rng.shuffle(owner)
        s = rng.integers(0, 3, size=(n, len(owner))).astype(np.float32)  # many ties
        got = caption_retrieval_metrics(s, owner)
        for key, value in brute_force(s, owner, every_tie_order=True).items():
            assert got[key] == pytest.approx(value, abs=1e-12), (trial, key)
    # larger, without ties, against the stable order; and with ties, invariance to the data's order
    for trial in range(10):
        n = int(rng.integers(5, 15))
        owner = np.concatenate([np.arange(n), rng.integers(0, n, size=int(rng.integers(0, 30)))])
        s = rng.normal(size=(n, len(owner)))
        got = caption_retrieval_metrics(s, owner)
        for key, value in brute_force(s, owner).items():
            assert got[key] == pytest.approx(value, abs=1e-12), (trial, key)
        # With ties, reordering the clips and the captions changes nothing (the stable order did).
        tied = np.round(s)
        got = caption_retrieval_metrics(tied, owner)
        clips, caps = rng.permutation(n), rng.permutation(len(owner))
        moved = caption_retrieval_metrics(tied[clips][:, caps], np.argsort(clips)[owner[caps]])
        assert (got["t2a_mAP@10"], got["a2t_mAP@10"]) == pytest.approx((moved["t2a_mAP@10"], moved["a2t_mAP@10"]))


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audiocaps")
    return folder, write_audiocaps_like(folder)


@pytest.mark.slow
def test_audiocaps_like_end_to_end(audiocaps, tiny_clap_dir, tmp_path):
    folder, expected = audiocaps
    ckpt = _checkpoint(tmp_path / "hyp.pth", seed=1)
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    code, err = run_main(test_script, [
        "--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--num-workers", "0",
        "--text-column", "caption", "--clip-id-column", "youtube_id", "--projection-checkpoint", ckpt,
        "--output-json", out, "--save-scores", npz, "--bootstrap", "30", "--bootstrap-seed", "5"])
    assert code == 0, err
    results = json.loads(out.read_text())
    saved = np.load(npz)
    # one row per clip in first-row order, its captions in row order; the undecodable clip is out
    ids = [clip for clip, _ in expected["clips"]]
    assert saved["clip_id"].tolist() == ids
    assert saved["captions"].tolist() == [c for _, caps in expected["clips"] for c in caps]
    assert saved["caption_clip"].tolist() == [i for i, (_, caps) in enumerate(expected["clips"]) for _ in caps]
    owner = saved["caption_clip"]
    info = results["test_info"]
    assert (info["task"], info["clips_embedded"], info["clips_read"]) == ("retrieval", len(ids), expected["rows"])
    assert info["captions_lost_with_their_clip_audio"] == 1
    assert results["skipped"]["reasons"]["no_caption"]["count"] == expected["no_caption_rows"]
    decode = {r: v["count"] for r, v in results["skipped"]["reasons"].items() if r != "no_caption"}
    assert sum(decode.values()) == expected["undecodable_clips"]
    score_sets = {}
    for name in ("clap_cosine", "hyp-hyperbolic"):
        s = saved[f"scores_{name}"]
        assert s.shape == (len(ids), len(owner))
        score_sets[name] = s
        metrics = results["models"][name]["metrics"]
        for key, value in brute_force(s, owner).items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), (name, key)
    # bootstrap: the same resamples, redone one clip draw at a time
    draws = _bootstrap_reference(score_sets, owner, 30, 5)
    for name in score_sets:
        boot = results["models"][name]["bootstrap"]
        for key in ("t2a_R@1", "t2a_mAP@10", "a2t_R@5", "a2t_mAP@10"):
            low, high = np.percentile(draws[name][key], [2.5, 97.5])
            assert (boot[key]["low"], boot[key]["high"]) == pytest.approx((low, high), abs=1e-9)
    vs = results["models"]["hyp-hyperbolic"]["bootstrap"]["vs_clap_cosine"]
    for key in ("t2a_R@10", "a2t_mAP@10"):
        d = np.subtract(draws["hyp-hyperbolic"][key], draws["clap_cosine"][key])
        assert (vs[key]["low"], vs[key]["high"]) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])), abs=1e-9)
        m = results["models"]
        assert vs[key]["diff"] == pytest.approx(m["hyp-hyperbolic"]["metrics"][key] - m["clap_cosine"]["metrics"][key])
    assert "vs_clap_cosine" not in results["models"]["clap_cosine"]["bootstrap"]
    usage = results["models"]["hyp-hyperbolic"]["ball_usage"]
    assert results["models"]["clap_cosine"]["ball_usage"] is None
    # the clips' median relative radius sqrt(c)|x|, from the checkpoint's projector by hand
    ck = torch.load(ckpt, weights_only=False)
    projector = Projector(ck["embed_dim"], geometry="hyperbolic", clip_r=ck["clip_r"])
    projector.load_state_dict(ck["projection_state_dict"])
    skips = SkipLog()
    table = read_captions(folder, text_columns=["caption"], clip_id_column="youtube_id", skips=skips)
    clips = embed_clips(FrozenClap.load(str(tiny_clap_dir), "cpu"), folder, matcher=LabelMatcher([]), skips=skips,
                        label_column=None, require_labels=False, keep=table.keep)
    with torch.no_grad():
        radius = np.sqrt(ck["c"]) * projector(clips.audio, c=ck["c"]).norm(dim=-1).numpy()
    assert usage["audio"]["relative_radius"]["median"] == pytest.approx(float(np.median(radius)), abs=1e-6)
    rows = {r["model"]: r for r in report.build_report([out]).rows}
    assert rows["hyp-hyperbolic"]["audio_radius_median"] == f"{usage['audio']['relative_radius']['median']:.4f}"
    assert rows["hyp-hyperbolic"]["task"] == "retrieval" and rows["hyp-hyperbolic"]["t2a_R@10"] == f"{m['hyp-hyperbolic']['metrics']['t2a_R@10']:.4f}"
    assert rows["hyp-hyperbolic"]["d_t2a_R@10"] == (f"{vs['t2a_R@10']['diff']:+.4f} [{vs['t2a_R@10']['low']:+.4f}, "
                                         f"{vs['t2a_R@10']['high']:+.4f}]")
    code, err = run_main(test_script, ["--parquet-dir", folder, "--text-column", "caption", "--plots"])
    assert code == 2 and "--plots is for class labels" in err


@pytest.mark.slow
def test_repeated_clip_audio_is_embedded_once(audiocaps, tiny_clap):
    folder, expected = audiocaps
    skips = SkipLog()
    table = read_captions(folder, text_columns=["caption"], clip_id_column="youtube_id", skips=skips)
    stats: dict = {}
    clips = embed_clips(tiny_clap, folder, matcher=LabelMatcher([]), skips=skips, label_column=None,
                        require_labels=False, keep=table.keep, stats=stats)
    assert stats == {"reused": 0, "computed": len(expected["clips"])}
    assert [m.video_id for m in clips.metas] == [""] * len(clips)  # no video_id column here
    assert [table.clip_of(m).key for m in clips.metas] == [c for c, _ in expected["clips"]]
    # the limit counts rows, as iter_clips does: the first 3 rows hold clips c0 and c1
    limited = read_captions(folder, text_columns=["caption"], clip_id_column="youtube_id", skips=SkipLog(), limit=3)
    assert list(limited.clips) == ["c0", "c1"] and limited.rows_read == 3


@pytest.mark.slow
@pytest.mark.parametrize("as_list", [False, True])
def test_clotho_like_captions_and_shared_strings(tmp_path, tiny_clap_dir, as_list):
    folder = tmp_path / "clotho"
    expected = write_clotho_like(folder, as_list=as_list)
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    code, err = run_main(test_script, [
        "--parquet-dir", folder, "--checkpoint", tiny_clap_dir, "--device", "cpu", "--num-workers", "0",
        "--text-column", *expected["columns"], "--output-json", out, "--save-scores", npz])
    assert code == 0, err
    saved = np.load(npz)
    assert saved["captions"].tolist() == [c for _, caps in expected["clips"] for c in caps]
    owner = saved["caption_clip"]
    assert np.bincount(owner).tolist() == [5, 5, 5, 5]
    s = saved["scores_clap_cosine"]
    # the shared string is one text: its two captions score identically against every clip
    shared = np.flatnonzero(saved["captions"] == "rain and wind")
    assert owner[shared].tolist() == [1, 3] and np.array_equal(s[:, shared[0]], s[:, shared[1]])
    results = json.loads(out.read_text())
    assert results["test_info"]["files_without_clip_id_column"] == ["evaluation.parquet"]
    assert results["test_info"]["distinct_caption_texts"] == 19
    # The shared pair is a tie in every clip's ranking: the metrics are the mean over its two orders
    # (brute force in the stable order, then with the pair's columns swapped).
    swap = np.arange(len(owner))
    swap[shared] = swap[shared[::-1]]
    first, second = brute_force(s, owner), brute_force(s[:, swap], owner[swap])
    for key, value in first.items():
        assert results["metrics"][key] == pytest.approx((value + second[key]) / 2, abs=1e-9), key


def test_caption_cells_and_errors(tmp_path):
    assert split_captions(' ["a dog", " ", null] ', where="x") == ["a dog"]
    assert split_captions("a dog, barking", where="x") == ["a dog, barking"]  # never split on commas
    assert split_captions(None, where="x") == [] and split_captions("  ", where="x") == []
    with pytest.raises(DatasetError, match="row 3, column 'caption'"):
        split_captions(7, where="parquet file f, row 3, column 'caption'")
    folder = tmp_path / "c"
    write_clotho_like(folder)
    with pytest.raises(DatasetError, match="no column 'caption'.*--text-column"):
        read_captions(folder, text_columns=["caption"], skips=SkipLog())


@pytest.mark.slow
def test_caption_embeddings_are_cached_per_text(tiny_clap, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    texts = [f"caption number {i}" for i in range(40)]
    stats: dict = {}
    first = embed_texts(tiny_clap, texts, cache=cache, stats=stats)
    assert stats == {"reused": 0, "computed": 40}
    more = texts[:20] + ["a brand new caption"] + texts[20:] + [texts[3]]
    second = embed_texts(tiny_clap, more, cache=cache, stats=stats)
    assert stats == {"reused": 40, "computed": 1}
    assert torch.equal(second[:20], first[:20]) and torch.equal(second[21:41], first[20:])
    assert len(second) == 42 and torch.equal(second[41], first[3])
    alone = embed_prompts(tiny_clap, ["a brand new caption"])
    assert torch.allclose(second[20], alone[0], atol=1e-5)
    # many small additions are merged into few chunk files; nothing is lost in the merge
    for i in range(40):
        embed_texts(tiny_clap, [f"extra {i}"], cache=cache)
    store = cache.captions(tiny_clap)
    known, chunks = store.load()
    assert len(chunks) <= store.MAX_CHUNKS and len(known) == 81
    assert torch.equal(torch.from_numpy(known[texts[7]]), first[7])


def test_retrieval_table_prints_intervals_and_paired_differences():
    from hyperbolic.evaluation.retrieval import METRIC_KEYS
    from hyperbolic.evaluation.tables import format_retrieval_table

    def block(v, paired):
        boot = {k: {"low": v - 0.1, "high": v + 0.05, "point": v} for k in METRIC_KEYS}
        if paired:
            boot["vs_clap_cosine"] = {k: {"diff": 0.125, "low": -0.25, "high": 0.5} for k in METRIC_KEYS}
        return {"metrics": {k: v for k in METRIC_KEYS}, "bootstrap": boot}
    table = format_retrieval_table({"test_info": {"task": "retrieval"},
                                    "models": {"clap_cosine": block(0.5, False), "run-hyperbolic": block(0.75, True)}})
    lines = table.splitlines()
    ci = next(line for line in lines if line.startswith("t2a_R@1 95% CI"))
    assert "[0.4000, 0.5500]" in ci and "[0.6500, 0.8000]" in ci
    diff = next(line for line in lines if line.startswith("a2t_R@10 - cosine"))
    assert diff.split()[-3:] == ["+0.1250", "[-0.2500,", "+0.5000]"] and diff.split()[3] == "-"
