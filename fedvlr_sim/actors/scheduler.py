"""The Scheduler actor: samples clients, dispatches one call per shard, gathers with ray.wait,
drives the server, evaluation, early stopping, checkpoints, metrics and failure recovery.

It runs the engine's `Federation` loop unchanged, with a `RayPool` in place of the in-process
pool: the answers are those of `--backend local`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.client import Upload
from fedvlr_sim.engine.federation import Federation, Problem, gather_by_user
from fedvlr_sim.actors.parameter_server import ServerProxy

MAX_RECOVERIES = 3
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
    """The engine's pool interface over ClientShard actors (one call per shard per round)."""

    def __init__(self, shards: list, shard_users: list[np.ndarray], n_users: int):
        self.shards, self.shard_users, self.n_users = shards, shard_users, n_users

    def train(self, round_idx: int, users: np.ndarray, glob) -> Upload:
        refs = [s.train.remote(round_idx, np.intersect1d(users, mine), glob)
                for s, mine in zip(self.shards, self.shard_users)]
        parts = gather(refs)
        return sum(parts[1:], parts[0])

    def ranks(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.ranks.remote(glob) for s in self.shards]))

    def reliance(self, glob, altered: list) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.reliance.remote(glob, altered) for s in self.shards]))

    def router_weights(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, gather([s.router_weights.remote(glob) for s in self.shards]))

    def save(self, folder: Path) -> None:
        gather([s.save.remote(str(folder), i) for i, s in enumerate(self.shards)])

    def load(self, folder: Path) -> None:
        gather([s.load.remote(str(folder)) for s in self.shards])

    def wait_alive(self, timeout_s: float = 120.0) -> None:
        """Block until every shard answers (a restarted one has finished its constructor)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                gather([s.users.remote() for s in self.shards])
                return
            except SHARD_FAILURES:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class RunMetrics:
    """Custom metrics shown on the Ray dashboard and exported to Prometheus."""

    def __init__(self, run_name: str):
        from ray.util.metrics import Counter, Gauge

        tags = ("run",)
        self.rounds = Counter("fedvlr_rounds_completed", description="Federated rounds completed.", tag_keys=tags)
        self.updates = Gauge("fedvlr_client_updates_per_second", description="Client updates per second in the last round.", tag_keys=tags)
        self.bytes_put = Gauge("fedvlr_bytes_put_per_round", description="Bytes of global tensors put in the object store per round.", tag_keys=tags)
        self.hr = Gauge("fedvlr_valid_hr_at_50", description="Validation HR@50.", tag_keys=tags)
        self.ndcg = Gauge("fedvlr_valid_ndcg_at_50", description="Validation NDCG@50.", tag_keys=tags)
        for metric in (self.rounds, self.updates, self.bytes_put, self.hr, self.ndcg):
            metric.set_default_tags({"run": run_name})

    def record(self, record: dict, bytes_put: int) -> None:
        self.rounds.inc()
        self.updates.set(record["updates_per_second"])
        self.bytes_put.set(bytes_put)
        if "valid_hr@50" in record:
            self.hr.set(record["valid_hr@50"])
            self.ndcg.set(record["valid_ndcg@50"])


@ray.remote(num_cpus=0, max_concurrency=2)
class Scheduler:
    """Drives one federated run; `progress()` may be polled while `run()` is in flight."""

    def __init__(self, cfg: RunConfig, problem: Problem, server, shards: list, shard_users: list,
                 run_dir: str, resume: str | None = None):
        self.server_actor = server
        self.pool = RayPool(shards, shard_users, problem.n_users)
        self.run_dir = Path(run_dir)
        self.metrics = RunMetrics(self.run_dir.name)
        self.records: list[dict] = []
        self.recoveries = 0
        self.federation = Federation(cfg, problem, ServerProxy(server), self.pool, self.run_dir, self._on_round)
        if resume:
            self.federation.restore(Path(resume))

    def _on_round(self, record: dict) -> None:
        self.records.append(record)
        self.metrics.record(record, ray.get(self.server_actor.last_bytes_put.remote()))

    def progress(self, since: int = 0) -> list[dict]:
        """Round records from index `since` on."""
        return self.records[since:]

    def run(self) -> dict:
        """Train to the end; a shard that dies is restarted by Ray and the run resumes from the
        last checkpoint (replaying rounds exactly: every draw is keyed by seed, round and user)."""
        fed = self.federation
        if fed.cfg.checkpoint_every and checkpoint.latest(self.run_dir) is None:
            fed.save_checkpoint()
        while True:
            try:
                fed.run()
                outcome = fed.outcome()
                outcome["summary"]["recoveries"] = self.recoveries
                return outcome
            except SHARD_FAILURES:
                folder = checkpoint.latest(self.run_dir)
                if self.recoveries >= MAX_RECOVERIES or folder is None:
                    raise
                self.recoveries += 1
                self.pool.wait_alive()
                fed.restore(folder)
