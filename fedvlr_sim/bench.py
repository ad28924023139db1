"""`fedvlr-sim bench`: the Ray shard backend against a naive sequential per-user loop.

Both sides run the same engine math for the same rounds. The Ray side trains every sampled user
of a round with one call per shard (users vectorised inside each shard). The sequential side
trains one user at a time, the way per-client simulators and the authors' code do; at scale it
times a random sample of users and extrapolates linearly (stated in the output).
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import numpy as np
import ray

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.federation import Federation, LocalPool
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.simulation import make_populations, make_server, problem_of


def time_ray_rounds(cfg: RunConfig, dataset, rounds: int) -> dict:
    """Seconds per training round on Ray shards (after one warm-up round), and peak memory."""
    from fedvlr_sim.actors.launch import place_actors, ray_session
    from fedvlr_sim.actors.parameter_server import ServerProxy
    from fedvlr_sim.actors.scheduler import RayPool

    with ray_session(cfg.address):
        problem = problem_of(dataset)
        placed = place_actors(cfg, dataset, problem, f"bench-{uuid.uuid4().hex[:6]}")
        try:
            pool = RayPool(placed.shards, placed.shard_users, problem.n_users)
            federation = Federation(cfg, problem, ServerProxy(placed.server), pool)
            federation.run_round(1)
            records = [federation.run_round(t) for t in range(2, rounds + 2)]
            peaks = ray.get([a.peak_rss_bytes.remote() for a in [placed.server, *placed.shards]])
        finally:
            for actor in [placed.server, *placed.shards]:
                ray.kill(actor)
    seconds = float(np.mean([r["train_seconds"] for r in records]))
    return {"seconds_per_round": seconds, "clients_per_round": records[-1]["clients"],
            "shards": len(placed.shards), "server_device": placed.server_device,
            "peak_rss_bytes": sum(peaks) + peak_rss_bytes()}


def time_sequential_round(cfg: RunConfig, dataset, sample_users: int) -> dict:
    """Seconds per round of a one-user-at-a-time loop (sampled and extrapolated when large)."""
    problem = problem_of(dataset)
    server = make_server(cfg, dataset)
    population = make_populations(cfg, problem, server.n_views, server.width, n_shards=1)[0]
    glob = server.publish()
    order = np.random.default_rng(cfg.seed).permutation(problem.n_users)
    timed = order[: min(sample_users, problem.n_users)]
    population.train(1, timed[:1], glob)   # warm-up
    start = time.perf_counter()
    for user in timed:
        population.train(2, np.array([user]), glob)
    per_user = (time.perf_counter() - start) / len(timed)
    return {"sequential_seconds_per_round": per_user * problem.n_users, "sequential_users_timed": int(len(timed)),
            "sequential_extrapolated": bool(len(timed) < problem.n_users)}


def time_local_round(cfg: RunConfig, dataset, rounds: int) -> float:
    """Seconds per round of the vectorised engine in this process (no Ray), for reference."""
    problem = problem_of(dataset)
    server = make_server(cfg, dataset)
    pool = LocalPool(make_populations(cfg, problem, server.n_views, server.width, n_shards=1), problem.n_users)
    federation = Federation(cfg, problem, server, pool)
    federation.run_round(1)
    return float(np.mean([federation.run_round(t)["train_seconds"] for t in range(2, rounds + 2)]))


def bench(cfg: RunConfig, dataset, rounds: int = 2, sample_users: int = 200, include_local: bool = True) -> dict:
    """One benchmark row: Ray shards vs the sequential loop (and the in-process engine)."""
    cfg = dataclasses.replace(cfg, sample_ratio=1.0)
    ray_side = time_ray_rounds(cfg, dataset, rounds)
    sequential = time_sequential_round(cfg, dataset, sample_users)
    row = {
        "dataset": dataset.name, "backbone": cfg.backbone, "variant": cfg.variant, "users": dataset.n_users,
        "local_epochs": cfg.local_epochs, "rounds_timed": rounds,
        "seconds_per_round": ray_side["seconds_per_round"],
        "sequential_seconds_per_round": sequential["sequential_seconds_per_round"],
        "speedup": sequential["sequential_seconds_per_round"] / ray_side["seconds_per_round"],
        "updates_per_second": ray_side["clients_per_round"] / ray_side["seconds_per_round"],
        "peak_rss_gb": ray_side["peak_rss_bytes"] / 1024**3,
        "shards": ray_side["shards"], "server_device": ray_side["server_device"],
    } | {k: v for k, v in sequential.items() if k != "sequential_seconds_per_round"}
    if include_local:
        row["local_seconds_per_round"] = time_local_round(cfg, dataset, rounds)
    return row
