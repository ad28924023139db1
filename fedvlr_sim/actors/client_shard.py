"""The ClientShard actor: a fixed slice of users, their data and local state, trained together."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import ray
import torch

from fedvlr_sim.actors.metrics import ShardTiming
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.client import ClientPopulation
from fedvlr_sim.engine.messages import Upload
from fedvlr_sim.engine.resources import peak_rss_bytes


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

    def __init__(self, cfg: RunConfig, n_items: int, n_users: int, run_name: str, shard: int, threads: int = 1):
        """Shard `shard` of run `run_name` in a federation of `n_users` users; it gets its own
        users' data from `receive` (also after Ray restarts it: the driver hands the data out
        again during recovery), so no node but the driver's reads the dataset. The data is not a
        constructor argument: Ray cannot promise to keep such object-store arguments alive for
        restarts (ray-project/ray#53727)."""
        torch.set_num_threads(threads)
        self.cfg, self.n_items, self.n_users = cfg, n_items, n_users
        self.population: ClientPopulation | None = None
        self.timing = ShardTiming(run_name, shard)

    def receive(self, data: list[ray.ObjectRef]) -> str:
        """Build the population from the `UserData` the driver put in the object store (one
        reference, wrapped in a list so Ray hands the reference over); return its fingerprint."""
        cfg = self.cfg
        self.population = ClientPopulation(cfg.model, cfg.client, cfg.seed, ray.get(data[0]), self.n_items,
                                           self.n_users, cfg.launch.shard_device)
        return self.population.data.fingerprint()

    def ping(self) -> bool:
        return True

    def train(self, round_idx: int, users: np.ndarray, glob) -> Upload:
        started = time.perf_counter()
        upload = self.population.train(round_idx, users, as_tensors(glob))
        self.timing.record(time.perf_counter() - started)
        return upload

    def ranks(self, glob):
        return self.population.ranks(as_tensors(glob))

    def reliance(self, glob, altered: list):
        return self.population.reliance(as_tensors(glob), [as_tensors(a) for a in altered])

    def router_weights(self, glob):
        return self.population.router_weights(as_tensors(glob))

    def save(self, folder: str, index: int) -> None:
        checkpoint.save_shard(Path(folder), index, *self.population.checkpoint_state())

    def load(self, folder: str) -> None:
        self.population.load_state_dict(checkpoint.load_users_state(Path(folder), self.population.data.users))

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()
