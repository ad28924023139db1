"""Where one client shard's time goes: a training round and an evaluation of the first N users
of a dataset, in one process on one thread (as each Ray shard runs), timed and then profiled
with torch.profiler (self CPU time per op).

    python benchmarks/profile_shard.py --users 4000 --backbone fcf --variant ours
    python benchmarks/profile_shard.py --users 2000 --backbone fedrap --set view_norm=none --set modality_views=false

Prints the seconds of one training round and one evaluation (each after a warm-up call), then
the top ops of each under the profiler (which adds overhead: read the shares, not the seconds).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fedvlr_sim.bench import first_users
from fedvlr_sim.config import parse_settings, resolve
from fedvlr_sim.datasets.registry import load_dataset
from fedvlr_sim.engine.simulation import make_population, make_server, problem_of
from fedvlr_sim.errors import FedVLRError


def timed(label: str, call) -> None:
    call()   # warm-up
    start = time.perf_counter()
    call()
    print(f"{label}: {time.perf_counter() - start:.3f} s", flush=True)


def profiled(label: str, call, rows: int) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(f"\n{label} under the profiler (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic:movie")
    p.add_argument("--data-dir", default="data", type=Path)
    p.add_argument("--users", type=int, default=2000, help="the first N users of the dataset")
    p.add_argument("--backbone", default="fcf")
    p.add_argument("--variant", default="ours")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other run option, as `fedvlr-sim run --set` takes it")
    p.add_argument("--rows", type=int, default=12, help="ops listed per profile")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    cfg = resolve([(None, {"backbone": args.backbone, "variant": args.variant}), *parse_settings(args.set)])
    dataset = first_users(load_dataset(args.dataset, args.data_dir), args.users)
    problem = problem_of(dataset)
    population = make_population(cfg, problem, np.arange(problem.n_users))
    glob = make_server(cfg, dataset).publish()
    users = np.arange(problem.n_users)
    rounds = iter(range(1, 100))
    train = lambda: population.train(next(rounds), users, glob)  # noqa: E731
    evaluate = lambda: population.ranks(glob)  # noqa: E731
    print(f"{dataset.name}, first {problem.n_users} users, {args.backbone}+{args.variant}, "
          f"{cfg.model.variant_def.n_views} views, one thread")
    timed("training round", train)
    timed("evaluation (valid + test, every item)", evaluate)
    profiled("training round", train, args.rows)
    profiled("evaluation", evaluate, args.rows)


if __name__ == "__main__":
    try:
        main()
    except FedVLRError as err:
        raise SystemExit(f"error: {err}") from None
