"""Would training the seeds of one study configuration as one stacked model pay? (docs/performance.md)

    python benchmarks/study_seeds.py [--seeds 3] [--steps 150] [--dims 512 64 8 2]

The step of the default recipe at AudioSet scale (batch 16, in-batch negatives over 527 classes,
512-d CLAP embeddings, hyperbolic, one thread as training uses) written once with a leading seed
axis: projections by ``baddbmm``, the batch's columns padded to the largest and masked, the
clip-norm per seed. S seeds run as S separate stacks of one versus one stack of S, same batches,
so the ratio is what stacking alone buys (an upper bound for a full trainer, which also validates
and checkpoints per seed). Labels: 1-2 classes per clip, Zipf-like class frequencies.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def stacked_steps(audio, prompts, labels, batches, *, seeds: int, dim: int, offset: int = 0) -> float:
    """Seconds per step of ``seeds`` stacked models (projection ``dim``), over the given batches."""
    d = audio.shape[1]
    W = torch.nn.Parameter(torch.randn(seeds, d, dim) / math.sqrt(d))
    b = torch.nn.Parameter(torch.zeros(seeds, 1, dim))
    opt = torch.optim.AdamW([W, b], lr=1e-2)
    steps = len(batches[0])

    def ball(u):  # clip the tangent norm to artanh(0.9), then expmap0 at c = 1
        n = u.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        u = u * (n.clamp(max=math.atanh(0.9)) / n)
        n = u.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return torch.tanh(n) * u / n

    started = time.perf_counter()
    for k in range(steps):
        rows = [batches[offset + s][k] for s in range(seeds)]
        cols = [sorted({c for i in r for c in labels[i]}) for r in rows]
        width = max(map(len, cols))
        pos = torch.zeros(seeds, len(rows[0]), width, dtype=torch.bool)
        valid = torch.zeros(seeds, 1, width, dtype=torch.bool)
        idx = torch.zeros(seeds, width, dtype=torch.long)
        for s in range(seeds):
            idx[s, :len(cols[s])] = torch.tensor(cols[s])
            valid[s, 0, :len(cols[s])] = True
            at = {c: j for j, c in enumerate(cols[s])}
            for i, r in enumerate(rows[s]):
                pos[s, i, [at[c] for c in labels[r]]] = True
        a = ball(torch.baddbmm(b, audio[torch.tensor(rows)], W))
        t = ball(torch.baddbmm(b, prompts[idx], W))
        sq = (a.unsqueeze(2) - t.unsqueeze(1)).pow(2).sum(-1)
        den = (1 - a.pow(2).sum(-1, keepdim=True)) * (1 - t.pow(2).sum(-1).unsqueeze(1))
        logits = (-torch.acosh(1 + 2 * sq / den + 1e-7) / 0.1).masked_fill(~valid, float("-inf"))
        a2t = torch.logsumexp(logits, 2) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 2)
        loss = a2t.mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.sqrt(W.grad.pow(2).sum((1, 2)) + b.grad.pow(2).sum((1, 2)))
        scale = (1.0 / norm.clamp_min(1.0)).view(seeds, 1, 1)
        W.grad.mul_(scale)
        b.grad.mul_(scale)
        opt.step()
    return (time.perf_counter() - started) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--dims", type=int, nargs="+", default=[512, 64, 8, 2])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    audio = torch.nn.functional.normalize(torch.randn(18000, 512), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(527, 512), dim=-1)
    freq = 1 / np.arange(1, 528)
    labels = [sorted(set(rng.choice(527, size=rng.integers(1, 3), p=freq / freq.sum()).tolist())) for _ in range(18000)]
    batches = [[rng.integers(0, 18000, 16).tolist() for _ in range(args.steps)] for _ in range(args.seeds)]
    print(f"| D | {args.seeds} seeds one after the other (ms/step) | stacked (ms/step) | speed-up |\n|---|---|---|---|")
    for dim in args.dims:
        ratios, ones, stacks = [], [], []
        for _ in range(args.repeats):
            one = sum(stacked_steps(audio, prompts, labels, batches, seeds=1, dim=dim, offset=s)
                      for s in range(args.seeds))
            stack = stacked_steps(audio, prompts, labels, batches, seeds=args.seeds, dim=dim)
            ones.append(one)
            stacks.append(stack)
            ratios.append(one / stack)
        print(f"| {dim} | {1000 * np.median(ones):.1f} | {1000 * np.median(stacks):.1f} | "
              f"{np.median(ratios):.2f}x (runs: {', '.join(f'{r:.2f}' for r in ratios)}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
