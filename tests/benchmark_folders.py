"""Small parquet folders in the layouts of the common benchmarks, with generated sounds.

- AudioCaps-like: one caption per row in ``caption``, the clip repeated on several rows (and
  across files) under ``youtube_id``; a null and an empty caption; one clip whose audio does not
  decode.
- Clotho-like: ``file_name``, ``caption_1`` ... ``caption_5`` (or one ``captions`` list column),
  no ``video_id``; two clips share a caption string.
- ESC-50-like: ``filename``, ``category`` (``dog_bark``-style strings), ``fold``, ``target``.

Each writer returns what a reader should find, computed here from the rows written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.synthetic import DEMO_CLASSES, encode_audio, synthesize, write_parquet_shard

SR = 48000
SECONDS = 1.0


def _audio(name: str, seed: int, i: int) -> dict:
    wave = synthesize(DEMO_CLASSES[i % len(DEMO_CLASSES)], np.random.default_rng([seed, i]), SR, SECONDS)
    return {"bytes": encode_audio(wave, SR, "flac"), "path": f"{name}.flac"}


def write_audiocaps_like(folder: Path, *, seed: int = 0) -> dict:
    """Two files; clips c0..c5 with 1-4 caption rows each, c2 split across the files, c5 undecodable.
    Returns ``{"clips": [(clip id, [captions])] in first-row order, decodable only,
    "no_caption_rows": 2, "undecodable_clips": 1, "rows": total rows}``."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = {  # clip -> captions, one row each (None and "" are rows without a caption)
        "c0": ["a dog barks twice", "a dog is barking", "barking of a dog"],
        "c1": ["a beep sounds", None],
        "c2": ["white noise hisses", "static noise", "a steady hiss", "noise, loud and steady"],
        "c3": ["a phone dial tone"],
        "c4": ["clicks in a row", "", "rapid clicking"],
        "c5": ["an undecodable clip"],
    }
    audio = {clip: _audio(clip, seed, i) for i, clip in enumerate(plan)}
    audio["c5"] = {"bytes": b"this is not audio", "path": "c5.flac"}
    rows = [(clip, caption) for clip, caps in plan.items() for caption in caps]
    # interleave so that clips are repeated on non-adjacent rows, c2 in both files
    order = [0, 3, 1, 4, 5, 6, 2, 10, 7, 8, 11, 12, 13, 9]
    assert sorted(order) == list(range(len(rows)))
    rows = [rows[i] for i in order]
    cells = [{"youtube_id": clip, "audiocap_id": k, "caption": caption, "audio": audio[clip]}
             for k, (clip, caption) in enumerate(rows)]
    write_parquet_shard(folder / "test-00000.parquet", cells[:8])
    write_parquet_shard(folder / "test-00001.parquet", cells[8:])
    expected: dict[str, list[str]] = {}
    for clip, caption in rows:
        if clip != "c5" and caption:
            expected.setdefault(clip, []).append(caption)
    return {"clips": list(expected.items()), "no_caption_rows": 2, "undecodable_clips": 1, "rows": len(rows)}


CLOTHO_CAPTIONS = [
    ["a bird sings", "birdsong in a park", "a small bird chirps", "chirping outside", "a bird calls"],
    ["rain falls on a roof", "heavy rain", "rain and wind", "raindrops patter", "a storm outside"],
    ["a car drives by", "traffic passes", "an engine hums", "a vehicle passes", "cars on a road"],
    ["people talk", "a crowd murmurs", "chatter in a room", "voices in a hall", "rain and wind"],
]


def write_clotho_like(folder: Path, *, seed: int = 0, as_list: bool = False) -> dict:
    """Four clips, five captions each, in ``caption_1..5`` or (``as_list``) one ``captions``
    list column; clips 1 and 3 share the caption "rain and wind"."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = []
    for i, caps in enumerate(CLOTHO_CAPTIONS):
        row = {"file_name": f"clip{i}.wav", "audio": _audio(f"clip{i}", seed, i)}
        if as_list:
            row["captions"] = list(caps)
        else:
            row.update({f"caption_{k + 1}": c for k, c in enumerate(caps)})
        cells.append(row)
    write_parquet_shard(folder / "evaluation.parquet", cells)
    columns = ["captions"] if as_list else [f"caption_{k}" for k in range(1, 6)]
    return {"clips": [(f"evaluation.parquet:{i}", caps) for i, caps in enumerate(CLOTHO_CAPTIONS)],
            "columns": columns}


ESC_CATEGORIES = ["dog_bark", "rain", "crackling_fire", "church_bells"]


def write_esc50_like(folder: Path, *, seed: int = 0, per_class: int = 3) -> dict:
    """``per_class`` clips of each ESC_CATEGORIES name (single string), in two files."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = []
    for k in range(per_class):
        for j, category in enumerate(ESC_CATEGORIES):
            i = k * len(ESC_CATEGORIES) + j
            cells.append({"filename": f"{k}-{i}-A-{j}.wav", "fold": k % 5 + 1, "target": j, "category": category,
                          "audio": _audio(f"esc{i}", seed, j)})
    half = len(cells) // 2
    write_parquet_shard(folder / "part-0.parquet", cells[:half])
    write_parquet_shard(folder / "part-1.parquet", cells[half:])
    return {"categories": [c["category"] for c in cells]}


def write_caption_training_folder(folder: Path, *, clips: int = 12, seed: int = 0) -> dict:
    """``clips`` clips (two rows each under ``video_id``, one caption per row) with a
    ``human_labels`` column naming the demo class; clips of the same class share the caption
    "the sound of <class>", the other caption is the clip's own."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = []
    for i in range(clips):
        name = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        audio = _audio(f"clip{i}", seed, i)
        for caption in (f"the sound of {name.lower()}", f"clip {i}: {name.lower()} recorded outdoors"):
            cells.append({"video_id": f"v{i}", "caption": caption, "human_labels": [name], "audio": audio})
    write_parquet_shard(folder / "train.parquet", cells)
    return {"clips": clips, "classes": [DEMO_CLASSES[i % len(DEMO_CLASSES)] for i in range(clips)]}
