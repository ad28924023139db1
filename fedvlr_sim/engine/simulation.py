"""Assemble an in-process federation (`--backend local`) from a dataset and a config."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.client import ClientPopulation
from fedvlr_sim.engine.federation import Federation, LocalPool, Problem, shard_users
from fedvlr_sim.engine.server import Server
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.errors import FedVLRError


def problem_of(dataset) -> Problem:
    """The engine's view of a loaded dataset (see fedvlr_sim.datasets.Dataset)."""
    data = UserData.from_interactions(dataset.n_users, dataset.user, dataset.item, dataset.split)
    saturated = np.flatnonzero(data.train_counts >= dataset.n_items)
    if len(saturated):
        raise FedVLRError(f"dataset {dataset.name!r}: user {saturated[0]} has every item in train, "
                          "so no negative can be sampled (expected fewer train items than items)")
    return Problem(dataset.name, dataset.n_users, dataset.n_items, data, dataset.planted_weights)


def features_of(dataset, cfg: RunConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The vision and text features a variant needs, or a clear error when they are missing."""
    if not cfg.uses_features:
        return None, None
    if dataset.vision is None or dataset.text is None:
        raise FedVLRError(
            f"--variant {cfg.variant} needs item features but dataset {dataset.name!r} has none: "
            f"run `fedvlr-sim features --dataset {dataset.name}` first (or use --variant none)")
    return torch.from_numpy(np.asarray(dataset.vision, np.float32)), torch.from_numpy(np.asarray(dataset.text, np.float32))


def make_server(cfg: RunConfig, dataset, device: str = "cpu") -> Server:
    vision, text = features_of(dataset, cfg)
    return Server(cfg, dataset.n_items, vision, text, device=device)


def make_populations(cfg: RunConfig, problem: Problem, n_views: int, width: int, n_shards: int) -> list[ClientPopulation]:
    return [ClientPopulation(cfg, problem.data.subset(users), problem.n_items, n_views, width, problem.n_users)
            for users in shard_users(problem.n_users, n_shards)]


def table_storage(cfg: RunConfig, dataset) -> str | None:
    """A log line on how personal item tables are stored, for backbones that have them."""
    from fedvlr_sim.engine.client import table_dtype
    from fedvlr_sim.engine.model import TABLE_BACKBONES

    if cfg.backbone not in TABLE_BACKBONES:
        return None
    width = 2 * cfg.dim if cfg.variant == "vbpr" else cfg.dim
    dtype = table_dtype(cfg, dataset.n_users, dataset.n_items, width)
    size = dataset.n_users * dataset.n_items * width * dtype.itemsize / 1024**3
    return (f"{cfg.backbone} personal item tables: {dataset.n_users} users x {dataset.n_items} items x {width} "
            f"stored as {str(dtype).removeprefix('torch.')} ({size:.2f} GiB, computed in float32)")


def local_federation(cfg: RunConfig, dataset, run_dir: Path | None = None,
                     on_round: Callable[[dict], None] | None = None, n_shards: int = 1) -> Federation:
    """A federation whose server and client shards all live in this process."""
    problem = problem_of(dataset)
    server = make_server(cfg, dataset)
    pool = LocalPool(make_populations(cfg, problem, server.n_views, server.width, n_shards), problem.n_users)
    return Federation(cfg, problem, server, pool, run_dir, on_round)
