"""The ClientShard actor: a fixed slice of users, their data and local state, trained together."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import ray
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.messages import Upload
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.simulation import make_population, problem_of


def as_tensors(glob) -> dict[str, torch.Tensor]:
    """Globals from the object store (numpy, read-only, zero-copy) as torch tensors."""
    if isinstance(glob, ray.ObjectRef):
        glob = ray.get(glob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only buffers: the engine never writes them
        return {k: torch.from_numpy(v) for k, v in glob.items()}


@ray.remote(num_cpus=1)
class ClientShard:
    """Wraps an engine `ClientPopulation`. One call per round trains all its sampled users."""

    def __init__(self, cfg: RunConfig, first_user: int, end_user: int, threads: int = 1):
        """Owns users first_user..end_user-1 of `cfg.launch.dataset`, which it loads itself (so a
        restarted shard needs nothing from the driver; on a cluster `--data-dir` must be
        readable from every node)."""
        from fedvlr_sim.datasets import load_dataset

        torch.set_num_threads(threads)
        problem = problem_of(load_dataset(cfg.launch.dataset, Path(cfg.launch.data_dir), seed=cfg.seed))
        self.population = make_population(cfg, problem, np.arange(first_user, end_user))

    def users(self) -> np.ndarray:
        return self.population.data.users

    def fingerprint(self) -> str:
        return self.population.data.fingerprint()

    def train(self, round_idx: int, users: np.ndarray, glob) -> Upload:
        return self.population.train(round_idx, users, as_tensors(glob))

    def ranks(self, glob):
        return self.population.ranks(as_tensors(glob))

    def reliance(self, glob, altered: list):
        return self.population.reliance(as_tensors(glob), [as_tensors(a) for a in altered])

    def router_weights(self, glob):
        return self.population.router_weights(as_tensors(glob))

    def save(self, folder: str, index: int) -> None:
        checkpoint.save_shard(Path(folder), index, self.population.data.users, self.population.state_dict())

    def load(self, folder: str) -> None:
        self.population.load_state_dict(checkpoint.load_users_state(Path(folder), self.population.data.users))

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()
