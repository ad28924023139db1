"""Export what the Flower side needs from fedvlr-sim (run with fedvlr-sim's Python, not Flower's).

    python benchmarks/flower/export_data.py OUT_DIR --users 1000 --users 5000 [--check 8]

For each N, writes OUT_DIR/movie_<N>.npz: the first N users of synthetic:movie (the data that
`fedvlr-sim bench --users N` trains on), each user's train items as CSR, and the views of
round 1 (G x I x w) that fedvlr-sim's server publishes. With --check K, also writes
OUT_DIR/check.npz: for K users of the smallest N, their initial local state, the exact
minibatches fedvlr-sim draws for them in round 1 and fedvlr-sim's result (mean loss, view
gradient, trained local state), so flower_clients.py --check can hold its copy of the per-user
math to fedvlr-sim's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fedvlr_sim.bench import first_users
from fedvlr_sim.config import PAPER_VIEWS, RunConfig
from fedvlr_sim.datasets import load_dataset
from fedvlr_sim.engine.simulation import make_population, make_server, problem_of

DATASET = "synthetic:movie"


def run_config() -> RunConfig:
    """fedvlr-sim bench's configuration in compare.py: FCF+ours with the paper's three views (the
    workload docs/performance.md measured), the client and server defaults, seed 0."""
    return RunConfig.create(dataset=DATASET, backbone="fcf", variant="ours", sample_ratio=1.0, **PAPER_VIEWS)


def export_world(cfg: RunConfig, full, n_users: int, out: Path) -> Path:
    dataset = first_users(full, n_users)
    problem = problem_of(dataset)
    views = make_server(cfg, dataset).publish()["views"]
    path = out / f"movie_{n_users}.npz"
    np.savez(path, n_users=problem.n_users, n_items=problem.n_items, train_ptr=problem.data.train_ptr,
             train_items=problem.data.train_items, views=views.numpy(),
             seed=cfg.seed, lr=cfg.client.lr, local_epochs=cfg.client.local_epochs, neg_ratio=cfg.client.neg_ratio,
             batch_size=cfg.client.batch_size, server_lr=cfg.server.server_lr, router_hidden=cfg.model.router_hidden)
    return path


def user_state(population, row: int) -> dict[str, np.ndarray]:
    """One user's local parameters (the population stores them in its own order)."""
    return {name: value[row].numpy() for name, value in population.state_dict().items() if name != "seen"}


def export_check(cfg: RunConfig, full, n_users: int, n_check: int, out: Path) -> Path:
    """fedvlr-sim's round-1 update of `n_check` users, one user at a time, with its inputs."""
    dataset = first_users(full, n_users)
    problem = problem_of(dataset)
    glob = make_server(cfg, dataset).publish()
    population = make_population(cfg, problem, np.arange(problem.n_users))
    users = np.linspace(0, problem.n_users - 1, n_check).astype(np.int64)
    arrays = {"users": users, "views": glob["views"].numpy()}
    for user in users:
        rows = np.array([user])
        hist, hist_mask = population.data.padded_history(rows)
        batches = list(population.minibatches(1, rows, hist, hist_mask))
        arrays[f"{user}/pos"] = np.stack([b[0][0].numpy() for b in batches])
        arrays[f"{user}/neg"] = np.stack([b[1][0].numpy() for b in batches])
        arrays[f"{user}/mask"] = np.stack([b[2][0].numpy() for b in batches])
        arrays[f"{user}/hist"] = hist[0].numpy()
        for name, value in user_state(population, user).items():
            arrays[f"{user}/init/{name}"] = value
        upload = population.train(1, rows, glob)
        arrays[f"{user}/loss"] = np.float64(upload.loss_sum)
        arrays[f"{user}/grad_views"] = upload.grads["views"].numpy()
        for name, value in user_state(population, user).items():
            arrays[f"{user}/final/{name}"] = value
    path = out / "check.npz"
    np.savez(path, **arrays)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, action="append", required=True)
    parser.add_argument("--check", type=int, default=0, help="also export fedvlr-sim's update of this many users")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = run_config()
    full = load_dataset(DATASET, Path("."), seed=cfg.seed)
    for n in args.users:
        print(export_world(cfg, full, n, args.out))
    if args.check:
        print(export_check(cfg, full, min(args.users), args.check, args.out))


if __name__ == "__main__":
    main()
