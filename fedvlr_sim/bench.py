"""`fedvlr-sim bench`: the Ray shard backend against a naive sequential per-user loop.

Both sides run the same engine math for the same rounds. The Ray side trains every sampled user
of a round with one call per shard (users vectorised inside each shard). The sequential side
trains one user at a time, the way per-client simulators and the authors' code do; at scale it
times a random sample of users and extrapolates linearly (stated in the output).
"""

from __future__ import annotations

import time

import numpy as np
import ray

from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.federation import Federation
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.simulation import make_population, make_server, problem_of


def time_rounds(cfg: RunConfig, dataset, rounds: int) -> dict:
    """Seconds per training round on `cfg`'s backend (after one warm-up round), and, on Ray,
    the peak memory of every actor and the driver."""
    problem = problem_of(dataset)
    with open_backend(cfg, dataset, problem, "bench") as backend:
        federation = Federation(cfg.loop, cfg.seed, problem, backend.server, backend.pool)
        federation.run_round(1)
        records = [federation.run_round(t) for t in range(2, rounds + 2)]
        placement = getattr(backend, "placement", None)
        actors = [placement.server, *placement.shards] if placement else []
        peak = sum(ray.get([a.peak_rss_bytes.remote() for a in actors])) + peak_rss_bytes()
    return {"seconds_per_round": float(np.mean([r.train_seconds for r in records])),
            "clients_per_round": records[-1].clients, "peak_rss_bytes": peak} | backend.info


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


def bench(cfg: RunConfig, dataset, rounds: int = 2, sample_users: int = 200) -> dict:
    """One benchmark row: Ray shards vs the sequential loop, and the in-process engine."""
    cfg = cfg.replace(sample_ratio=1.0, backend="ray")
    ray_side = time_rounds(cfg, dataset, rounds)
    sequential = time_sequential_round(cfg, dataset, sample_users)
    local = time_rounds(cfg.replace(backend="local", shards=1), dataset, rounds)
    return {
        "dataset": dataset.name, "backbone": cfg.model.backbone, "variant": cfg.model.variant, "users": dataset.n_users,
        "local_epochs": cfg.client.local_epochs, "rounds_timed": rounds,
        "seconds_per_round": ray_side["seconds_per_round"],
        "sequential_seconds_per_round": sequential["sequential_seconds_per_round"],
        "speedup": sequential["sequential_seconds_per_round"] / ray_side["seconds_per_round"],
        "updates_per_second": ray_side["clients_per_round"] / ray_side["seconds_per_round"],
        "peak_rss_gb": ray_side["peak_rss_bytes"] / 1024**3,
        "shards": ray_side["shards"], "server_device": ray_side["server_device"],
        "local_seconds_per_round": local["seconds_per_round"],
    } | {k: v for k, v in sequential.items() if k != "sequential_seconds_per_round"}
