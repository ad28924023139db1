"""What FedRAP's L1 term costs, and whether two ways to make it cheaper could work
(docs/performance.md, "FedRAP's L1 term: how fast, and two ideas measured").

    python benchmarks/fedrap_l1.py --data-dir DATA --users 1000 --lr 0.1

1. Speed: the L1 term's share of a training round (one thread), and `MixtureL1` on one chunk's
   shape (100 users x the mixed entries of six 2,528 x 64 views), in milliseconds and GFLOP/s
   (three products of 2 n E G flops each: the mixtures, the weights' gradient, the views'
   gradient), beside a square product, which shows what one core reaches on a well-shaped one.
2. Reusing signs within a chunk: an entry's sign in user u's mixture w_u . f_e can change
   between local steps only if |w_u0 . f_e| <= ||w_u - w_u0|| ||f_e||. The script trains
   FedRAP+ours on the first USERS users of synthetic:movie for three rounds, records every
   step's mixing weights, and prints how far they move from a chunk's first step (the largest
   move per user) and which share of (user, entry) pairs lies within that move of a flip: the
   entries each step would have to re-evaluate.
3. A fused form of the same three products compiled by `torch.compile` (Inductor's C++ code),
   timed against (1).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedvlr_sim.bench import first_users
from fedvlr_sim.config import resolve
from fedvlr_sim.datasets.registry import load_dataset
from fedvlr_sim.engine import backbones
from fedvlr_sim.engine.backbones import MixtureL1
from fedvlr_sim.engine.simulation import make_population, make_server, problem_of


def fused(weights: torch.Tensor, views: torch.Tensor, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights' and the views' gradient of sum_u ||w_u F||_1 written as one expression."""
    signs = torch.sign((weights[:, :, None] * views[None]).sum(1))
    return (signs[:, None, :] * views[None]).sum(2), (scaled[:, :, None] * signs[None]).sum(1)


def timed_ms(fn, repeats: int = 10) -> float:
    """Mean milliseconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def record_weights(data_dir: str, users: int, lr: float, rounds: int = 3):
    """Train FedRAP+ours; yield (round, the L1 term, {chunk: [weights of each step]}, the round's
    seconds, of which in the L1 term)."""
    dataset = first_users(load_dataset("synthetic:movie", data_dir), users)
    problem = problem_of(dataset)
    cfg = resolve([(None, {"backbone": "fedrap", "variant": "ours", "lr": lr})])
    population = make_population(cfg, problem, np.arange(problem.n_users))
    server = make_server(cfg, dataset)
    calls = []
    penalty_call, l1_call = backbones._RapPenalty.__call__, MixtureL1.__call__
    l1_seconds = [0.0]

    def recording(self, table, weights, loss_weight):
        calls.append((table, weights.detach().clone(), self.l1))
        return penalty_call(self, table, weights, loss_weight)

    def timing(self, weights, coef):
        start = time.perf_counter()
        out = l1_call(self, weights, coef)
        l1_seconds[0] += time.perf_counter() - start
        return out

    backbones._RapPenalty.__call__, MixtureL1.__call__ = recording, timing
    try:
        for round_idx in range(1, rounds + 1):
            calls.clear()
            l1_seconds[0] = 0.0
            start = time.perf_counter()
            population.train(round_idx, np.arange(problem.n_users), server.publish())
            seconds = time.perf_counter() - start
            chunks: dict[int, list] = {}
            for table, weights, _ in calls:          # tables stay referenced, so ids are unique
                chunks.setdefault(id(table), []).append(weights)
            yield round_idx, calls[0][2], chunks, seconds, l1_seconds[0]
    finally:
        backbones._RapPenalty.__call__, MixtureL1.__call__ = penalty_call, l1_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.1, help="client lr of the recorded run")
    args = p.parse_args()
    torch.set_num_threads(1)

    for round_idx, l1, chunks, seconds, l1_seconds in record_weights(args.data_dir, args.users, args.lr):
        views = l1.mixed_views
        norms = views.norm(dim=0)
        moves, near = [], []
        for steps in chunks.values():
            weights = torch.stack(steps)                                    # (steps, n, G)
            move = (weights - weights[0]).norm(dim=2).max(dim=0).values     # per user
            margins = (weights[0] @ views).abs() / norms
            moves.append(move)
            near.append((margins <= move[:, None]).float().mean().item())
        move = torch.cat(moves)
        print(f"round {round_idx}: {len(chunks)} chunks, {len(move)} users; largest ||w - w0|| within a chunk: "
              f"median {move.median():.3f}, 90th percentile {move.quantile(0.9):.3f}; "
              f"pairs within it of a flip: {100 * np.mean(near):.1f}%; round {seconds:.2f} s, "
              f"{100 * l1_seconds / seconds:.0f}% of it in the L1 term")

    n = 100
    generator = torch.Generator().manual_seed(0)
    views = l1.mixed_views
    weights = torch.softmax(torch.randn(n, len(views), generator=generator), dim=1)
    coef = torch.full((n,), 0.3)
    flops = 3 * 2 * n * views.shape[1] * len(views)
    term = MixtureL1(views)               # built once a round in the engine
    eager_ms = timed_ms(lambda: term(weights, coef))
    print(f"MixtureL1, {n} users x {views.shape[1]} mixed entries x {len(views)} views: {eager_ms:.1f} ms, "
          f"{flops / eager_ms / 1e6:.0f} GFLOP/s (one thread)")
    square = torch.randn(2048, 2048, generator=generator)
    print(f"a 2048 x 2048 product for comparison: {2 * 2048**3 / timed_ms(lambda: square @ square, 5) / 1e6:.0f} GFLOP/s")
    compiled = torch.compile(fused, dynamic=False)
    scaled = (coef[:, None] * weights).T.contiguous()
    compiled(weights, views, scaled)
    print(f"the fused form compiled by torch.compile: {timed_ms(lambda: compiled(weights, views, scaled)):.1f} ms")


if __name__ == "__main__":
    main()
