"""The engine's pool interface over ClientShard actors: one call per shard per round, results
gathered with ray.wait as they complete."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError

from fedvlr_sim.engine.federation import gather_by_user
from fedvlr_sim.engine.messages import Upload

try:  # the exception a call to a restarting actor raises (newer Ray versions)
    from ray.exceptions import ActorUnavailableError
    SHARD_FAILURES = (RayActorError, ActorUnavailableError)
except ImportError:  # pragma: no cover
    SHARD_FAILURES = (RayActorError,)


def gather(refs: list) -> list:
    """Results of `refs` in their original order, collected as they complete with ray.wait."""
    pending, done_values = list(refs), {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            done_values[ref] = ray.get(ref)
    return [done_values[ref] for ref in refs]


class RayPool:
    """Client shards in actors; the same methods as the engine's LocalPool."""

    def __init__(self, shards: list, shard_users: list[np.ndarray], n_users: int):
        self.shards, self.shard_users, self.n_users = shards, shard_users, n_users

    def train(self, round_idx: int, users: np.ndarray, glob) -> Upload:
        parts = gather([s.train.remote(round_idx, np.intersect1d(users, mine), glob)
                        for s, mine in zip(self.shards, self.shard_users)])
        return sum(parts[1:], parts[0])

    def ranks(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.ranks.remote(glob) for s in self.shards]))

    def reliance(self, glob, altered: list) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.reliance.remote(glob, altered) for s in self.shards]))

    def router_weights(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.router_weights.remote(glob) for s in self.shards]))

    def save(self, folder: Path) -> None:
        gather([s.save.remote(str(Path(folder).resolve()), i) for i, s in enumerate(self.shards)])

    def load(self, folder: Path) -> None:
        gather([s.load.remote(str(Path(folder).resolve())) for s in self.shards])

    def wait_alive(self, timeout_s: float = 120.0) -> None:
        """Block until every shard answers (a restarted one has finished its constructor)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                gather([s.ping.remote() for s in self.shards])
                return
            except SHARD_FAILURES:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
