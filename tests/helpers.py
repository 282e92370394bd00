"""Helpers several test files share."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def run_main(script, argv) -> tuple[int, str]:
    """``script.main(argv)`` -> (exit status, stderr). Usage errors (argparse) exit via SystemExit."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = script.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def corrupt_audio_page(path: Path, row_group: int = 1) -> None:
    """Flip bytes in the middle of ``row_group``'s audio page: page checksums catch it there."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(1)
    assert chunk.path_in_schema == "audio.bytes"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    mid = start + chunk.total_compressed_size // 2
    data[mid:mid + 4] = bytes(b ^ 0x55 for b in data[mid:mid + 4])
    path.write_bytes(bytes(data))


def random_ontology(class_names, *, abstract: int, roots: int, seed: int) -> list[dict]:
    """An ontology.json-style record list over ``class_names`` plus ``abstract`` group nodes.

    Shaped like AudioSet's: several roots (classes and groups), nodes with two parents, groups
    that are not classes. Nodes are placed in a random order and each one after the first ``roots``
    takes one or two parents among the nodes before it, so the graph has no cycle. Ids are
    ``/gen/<n>``; group names are ``Group <n>``.
    """
    import random

    rng = random.Random(seed)
    names = [*class_names, *(f"Group {g}" for g in range(abstract))]
    order = list(range(len(names)))
    rng.shuffle(order)
    children: dict[int, list[int]] = {v: [] for v in order}
    for pos, v in enumerate(order[roots:], start=roots):
        for p in rng.sample(order[:pos], 2 if rng.random() < 0.15 else 1):
            children[p].append(v)
    return [{"id": f"/gen/{v}", "name": names[v], "description": "", "restrictions": [],
             "child_ids": [f"/gen/{k}" for k in children[v]]} for v in order]


def _flags(flags: dict) -> list[str]:
    out = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return out


def train_argv(data, clap, out, *extra, epochs=2, batch_size=8, learning_rate="1e-2", **flags) -> list[str]:
    """argv of ``train_hyperbolic_clap.py`` on a generated folder and the tiny CLAP, on the CPU, into
    run folder ``out``, with the tests' short recipe; ``flags`` become flags (``seed=3`` ->
    ``--seed 3``, ``no_cache=True`` -> ``--no-cache``, ``text_column="caption"``), then ``extra``.
    The one argv builder the test files share; each states only what its scenario needs."""
    base = ["--parquet-dir", data, "--checkpoint", clap, "--device", "cpu", "--output-dir", out,
            "--epochs", epochs, "--batch-size", batch_size, "--learning-rate", learning_rate]
    return [str(a) for a in [*base, *_flags(flags), *extra]]


def eval_argv(data, clap, out_json, *extra, **flags) -> list[str]:
    """argv of ``test_clap_modelscope.py`` on a generated folder and the tiny CLAP, on the CPU,
    writing ``out_json``; ``flags`` as in ``train_argv``, then ``extra``."""
    base = ["--parquet-dir", data, "--checkpoint", clap, "--device", "cpu", "--output-json", out_json]
    return [str(a) for a in [*base, *_flags(flags), *extra]]


def _train_argv(data, clap, out, *extra):
    return train_argv(data, clap, out, *extra, num_workers=0)


def _eval_argv(data, clap, out, *extra):
    return eval_argv(data, clap, out, *extra, num_workers=0)


def projection_weights(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)["projection_state_dict"]


def same_weights(a, b) -> bool:
    import torch
    return all(torch.equal(a[k], b[k]) for k in a)


def waves(seed: int = 0, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(48000 * (k + 1))).astype(np.float32) for k in range(n)]
