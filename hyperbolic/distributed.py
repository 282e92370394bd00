"""Fill the embedding cache from many processes, GPUs or machines (torchrun), then train as usual.

    torchrun --nproc_per_node 8 -m hyperbolic.distributed --parquet-dir DIR --checkpoint CLAP \\
        --device cuda --cache-dir /shared/cache
    python train_hyperbolic_clap.py --parquet-dir DIR --checkpoint CLAP --cache-dir /shared/cache ...

Each rank embeds its shard of the clips (``hyperbolic.embedding.embeddings.embed_shard``: units of
``--embed-batch-size`` rows dealt out by ``data.audioset.combine_shards``) and writes its own cache
files. After a barrier, rank 0 merges: one single-process ``embed_clips`` over the same cache, which
reuses every row the ranks computed and computes any row they did not (a rank that found a file
damaged part-way, say), so the merged cache is exactly what one process would have written; then
each file's chunks are compacted into one and the class prompts are embedded. The other ranks
exit after the barrier. Training and evaluation then run in one process and reuse the cache
completely; they are cheap next to the CLAP pass, so they are not distributed.

All ranks need the same ``--cache-dir`` on a filesystem they all see (one machine's disk, or
NFS/Lustre for several machines). The process group only carries a barrier and a few counts,
so it uses gloo on every machine, with or without GPUs; the GPUs are used by each rank's CLAP
forward only (``--device cuda``: rank ``LOCAL_RANK`` of a machine uses ``cuda:LOCAL_RANK``).
Without torchrun (no ``WORLD_SIZE`` in the environment) this is a one-process embedding run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("hyperbolic.distributed")


def build_parser() -> argparse.ArgumentParser:
    from hyperbolic.cli import add_embedding_args, num_samples_arg
    from hyperbolic.config import DEFAULT_PROMPT_TEMPLATE
    p = argparse.ArgumentParser(prog="python -m hyperbolic.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parquet-dir", required=True, help="folder of AudioSet-style .parquet files")
    p.add_argument("--num-samples", type=num_samples_arg, default=None, metavar="N|all",
                   help="the first N rows, as --num-samples of the scripts; 'all' or 0: every row (default: all)")
    p.add_argument("--labelled-only", action="store_true",
                   help="skip rows without a known label, as training does (default: embed every readable "
                        "row, which serves training and evaluation)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="the class prompts embedded by rank 0 after the merge")
    p.add_argument("--timeout-hours", type=float, default=48.0,
                   help="how long the barrier waits for the slowest rank")
    p.add_argument("--summary-json", default=None, metavar="PATH", help="rank 0 also writes its summary here")
    add_embedding_args(p, per_rank=True)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    from hyperbolic.cli import embedding_arg_errors
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = [
        (not args.timeout_hours > 0, f"--timeout-hours must be > 0 (got {args.timeout_hours})"),
        ("{label}" not in args.prompt_template, f"--prompt-template must contain {{label}} (got {args.prompt_template!r})"),
    ]
    for message in [m for failed, m in checks if failed] + embedding_arg_errors(args):
        parser.error(message)
    return args


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(spec: str, local_rank: int) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK``; anything else as given."""
    return f"cuda:{local_rank}" if spec == "cuda" else spec


def default_workers(local_world_size: int) -> int:
    """Decoding workers per rank: the spare cores of this machine (those this process may run on)
    shared by its ranks, at most 8."""
    from hyperbolic.embedding.split import usable_cores
    spare = usable_cores() - local_world_size
    return max(0, min(8, spare // max(1, local_world_size)))


def run(args: argparse.Namespace) -> dict | None:
    """Embed this rank's shard; on rank 0, merge. Returns rank 0's summary (None on other ranks)."""
    import torch.distributed as dist

    from data.audio import segmenting_from
    from data.audioset import SkipLog, list_parquet_files
    from data.labels import LabelMatcher, load_class_ids, load_class_labels
    from hyperbolic.embedding.cache import EmbeddingCache
    from hyperbolic.embedding.clap import FrozenClap, resolve_device
    from hyperbolic.embedding.embeddings import embed_clips, embed_prompts, embed_shard, prompts_for

    rank, world_size, local_rank = world()
    if world_size > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=args.timeout_hours))
    try:
        workers = args.num_workers
        if workers is None:
            workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        segmenting = segmenting_from(args.segment, args.hop)
        class_names = load_class_labels(args.class_labels)
        matcher = LabelMatcher(class_names, load_class_ids(args.class_labels, class_names))
        clap = FrozenClap.load(args.checkpoint, resolve_device(rank_device(args.device, local_rank)),
                               precision=args.precision)
        cache = EmbeddingCache(args.cache_dir)
        common = dict(matcher=matcher, label_column=args.label_column, limit=args.num_samples,
                      batch_size=args.embed_batch_size, require_labels=args.labelled_only,
                      num_workers=workers, segmenting=segmenting, full_batches=args.full_batches)
        mine = embed_shard(clap, args.parquet_dir, rank=rank, world_size=world_size, cache=cache, **common)
        ranks = [mine]
        if world_size > 1:
            ranks = [None] * world_size
            dist.all_gather_object(ranks, mine)
            dist.barrier()
        if rank != 0:
            return None
        # The merge: one process, the same arguments, the cache every rank wrote into.
        skips, stats = SkipLog(), {}
        clips = embed_clips(clap, args.parquet_dir, skips=skips, cache=cache, stats=stats, **common)
        store = cache.audio(clap, segmenting)
        for path in list_parquet_files(args.parquet_dir):
            store.compact(cache.file_digest(path), file_name=path.name)
        embed_prompts(clap, prompts_for(class_names, args.prompt_template), cache=cache)
        summary = {"world_size": world_size, "ranks": ranks, "clips": len(clips),
                   "merge_reused": stats["reused"], "merge_computed": stats["computed"],
                   "skipped": skips.to_dict(), "cache_dir": str(cache.root)}
        log.info("merged: %d clips, %d computed by the ranks %s, %d computed by the merge; cache %s",
                 len(clips), sum(r["computed"] for r in ranks), [r["computed"] for r in ranks],
                 stats["computed"], cache.root)
        if args.summary_json:
            from hyperbolic.outputs import atomic_write_json
            atomic_write_json(Path(args.summary_json), summary)
        return summary
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    from hyperbolic.outputs import setup_logging
    setup_logging(args.verbose)
    from hyperbolic.errors import UserError
    try:
        summary = run(args)
    except UserError as err:
        log.error("%s", err)
        return 2
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("world_size", "clips", "merge_reused", "merge_computed")}
                         | {"computed_per_rank": [r["computed"] for r in summary["ranks"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
