"""`fedvlr-sim bench`: the Ray shard backend against a naive sequential per-user loop.

Both sides run the same engine math for the same rounds. The Ray side trains every sampled user
of a round with one call per shard (users vectorised inside each shard). The sequential side
trains one user at a time, the way per-client simulators and the authors' code do; at scale it
times a random sample of users and extrapolates linearly (stated in the output). `first_users`
cuts a dataset to its first N users, so one bench can show how the cost grows with users
(`draw_scaling`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch

from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.federation import Federation
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.simulation import make_population, make_server, problem_of


def time_rounds(cfg: RunConfig, dataset, rounds: int, evaluate: bool = False) -> dict:
    """Seconds per training round on `cfg`'s backend (after one warm-up round), with `evaluate`
    the seconds of one evaluation (valid and test, every user, every item) after them, and, on
    Ray, the peak memory of every actor and the driver."""
    problem = problem_of(dataset)
    with open_backend(cfg, dataset, problem, "bench") as backend:
        federation = Federation(cfg.loop, cfg.seed, problem, backend.server, backend.pool)
        federation.run_round(1)
        records = [federation.run_round(t) for t in range(2, rounds + 2)]
        timings = {}
        if evaluate:
            start = time.perf_counter()
            federation.evaluate(backend.server.publish())
            timings["eval_seconds"] = time.perf_counter() - start
        placement = getattr(backend, "placement", None)
        actors = [placement.server, *placement.shards] if placement else []
        peak = sum(ray.get([a.peak_rss_bytes.remote() for a in actors])) + peak_rss_bytes()
    return {"seconds_per_round": float(np.mean([r.train_seconds for r in records])),
            "clients_per_round": records[-1].clients, "peak_rss_bytes": peak} | timings | backend.info


def time_sequential_round(cfg: RunConfig, dataset, sample_users: int) -> dict:
    """Seconds per round of a one-user-at-a-time loop (sampled and extrapolated when large)."""
    problem = problem_of(dataset)
    population = make_population(cfg, problem, np.arange(problem.n_users))
    glob = make_server(cfg, dataset).publish()
    order = np.random.default_rng(cfg.seed).permutation(problem.n_users)
    timed = order[: min(sample_users, problem.n_users)]
    population.train(1, timed[:1], glob)   # warm-up
    start = time.perf_counter()
    for user in timed:
        population.train(2, np.array([user]), glob)
    per_user = (time.perf_counter() - start) / len(timed)
    return {"sequential_seconds_per_round": per_user * problem.n_users, "sequential_users_timed": int(len(timed)),
            "sequential_extrapolated": bool(len(timed) < problem.n_users)}


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block (restored after). The loops a bench compares run on
    one core each, as every Ray shard does: with the default threads, two of them fight over
    the cores of a busy machine and the comparison measures the fight."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_users(dataset, n_users: int):
    """The dataset cut to its first `n_users` users (all their interactions; items unchanged)."""
    if n_users >= dataset.n_users:
        return dataset
    keep = dataset.user < n_users
    planted = dataset.planted_weights[:n_users] if dataset.planted_weights is not None else None
    return dataclasses.replace(dataset, n_users=n_users, user=dataset.user[keep], item=dataset.item[keep],
                               timestamp=dataset.timestamp[keep], split=dataset.split[keep], planted_weights=planted)


def bench(cfg: RunConfig, dataset, rounds: int = 2, sample_users: int = 200,
          report: Callable[[str], None] = lambda text: None) -> dict:
    """One benchmark row: Ray shards vs the sequential loop, and the in-process engine;
    `report` hears which side is being timed."""
    cfg = cfg.replace(sample_ratio=1.0, backend="ray")
    label = f"{dataset.name} ({dataset.n_users} users)"
    report(f"{label}: timing {rounds} round(s) and one evaluation on Ray shards after a warm-up round")
    ray_side = time_rounds(cfg, dataset, rounds, evaluate=True)
    report(f"{label}: timing the sequential one-user-at-a-time loop on up to {sample_users} users (one thread)")
    with one_thread():
        sequential = time_sequential_round(cfg, dataset, sample_users)
        report(f"{label}: timing the in-process engine (one thread)")
        local = time_rounds(cfg.replace(backend="local", shards=1), dataset, rounds)
    speedup = sequential["sequential_seconds_per_round"] / ray_side["seconds_per_round"]
    return {
        "dataset": dataset.name, "backbone": cfg.model.backbone, "variant": cfg.model.variant, "users": dataset.n_users,
        "views": cfg.model.variant_def.n_views, "local_epochs": cfg.client.local_epochs, "rounds_timed": rounds,
        "seconds_per_round": ray_side["seconds_per_round"],
        "sequential_seconds_per_round": sequential["sequential_seconds_per_round"],
        "speedup": speedup, "speedup_per_shard": speedup / ray_side["shards"],
        "updates_per_second": ray_side["clients_per_round"] / ray_side["seconds_per_round"],
        "peak_rss_gb": ray_side["peak_rss_bytes"] / 1024**3,
        "shards": ray_side["shards"], "server_device": ray_side["server_device"],
        "local_seconds_per_round": local["seconds_per_round"], "eval_seconds": ray_side["eval_seconds"],
    } | {k: v for k, v in sequential.items() if k != "sequential_seconds_per_round"}


def draw_scaling(rows: list[dict], path: Path) -> Path:
    """Seconds per round against users, Ray shards and the sequential loop, one line pair per
    dataset and configuration (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = {}
    for row in rows:
        groups.setdefault(f"{row['dataset']} {row['backbone']}+{row['variant']}", []).append(row)
    for name, group in groups.items():
        group = sorted(group, key=lambda r: r["users"])
        users = [r["users"] for r in group]
        ax.plot(users, [r["seconds_per_round"] for r in group], marker="o", label=f"{name}: Ray shards")
        ax.plot(users, [r["sequential_seconds_per_round"] for r in group], marker="s", linestyle="--",
                label=f"{name}: sequential loop")
    ax.set(xscale="log", yscale="log", xlabel="users (full participation)", ylabel="seconds per round",
           title="cost of a round against users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
