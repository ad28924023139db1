"""Start (or join) Ray, place the actors, and follow a run from the driver."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray

from fedvlr_sim.actors.client_shard import ClientShard
from fedvlr_sim.actors.parameter_server import ParameterServer
from fedvlr_sim.actors.scheduler import SHARD_FAILURES, Scheduler
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.federation import shard_users
from fedvlr_sim.engine.simulation import features_of, problem_of
from fedvlr_sim.errors import FedVLRError


@contextlib.contextmanager
def ray_session(address: str = "", dashboard: bool = False):
    """Join `address` (or `auto`), or start a quiet private local instance shut down on exit.

    A session that is already initialised in this process is reused and left running."""
    if address and address != "auto" and "://" not in address:
        _probe(address)
    if ray.is_initialized():
        yield
        return
    started = not address
    if started:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # a private single-user instance
    try:
        ray.init(address=address or "local", include_dashboard=dashboard if started else None,
                 logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    except Exception as err:  # ray raises ConnectionError, RuntimeError, ValueError... by version
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedVLRError(f"--address: could not start or join {where}: {message}") from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when nothing listens at a host:port cluster address (ray.init
    itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FedVLRError(f"--address {address!r}: expected host:port of a Ray head node, 'auto', or empty")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise FedVLRError(f"--address {address}: no Ray cluster answers there ({err.strerror or type(err).__name__})") from None


@dataclass
class Placement:
    """The actors of one run, before any Scheduler drives them."""

    server: object
    shards: list
    shard_users: list
    server_device: str


def place_actors(cfg: RunConfig, dataset, problem, tag: str) -> Placement:
    """A ParameterServer (on a GPU when the cluster has one) and one ClientShard per CPU (or
    `cfg.shards`), each owning a contiguous slice of users."""
    resources = ray.cluster_resources()
    if int(resources.get("CPU", 0)) < 1:
        raise FedVLRError("--address: the Ray cluster has no CPU to place a client shard on")
    vision, text = features_of(dataset, cfg)
    use_gpu = resources.get("GPU", 0) >= 1
    server = ParameterServer.options(name=f"fedvlr-parameter-server-{tag}", num_gpus=1 if use_gpu else 0).remote(
        cfg, dataset.n_items, vision, text)
    n_views, width, device = ray.get(server.shape.remote())
    users = shard_users(problem.n_users, cfg.shards or int(resources["CPU"]))
    shards = [ClientShard.options(name=f"fedvlr-shard-{i}-{tag}", max_restarts=3, max_task_retries=0).remote(
                  cfg, int(mine[0]), int(mine[-1]) + 1, n_views, width)
              for i, mine in enumerate(users)]
    expected = [problem.data.subset(mine).fingerprint() for mine in users]
    if ray.get([s.fingerprint.remote() for s in shards]) != expected:
        for actor in [server, *shards]:
            ray.kill(actor)
        raise FedVLRError(f"--data-dir {cfg.data_dir}: the client shards loaded different data for dataset "
                          f"{cfg.dataset!r} (seed {cfg.seed}) than the driver; the prepared dataset must be the "
                          "same and readable on every node")
    return Placement(server, shards, users, device)


class RayRun:
    """One run's actors: a ParameterServer, ClientShards and the Scheduler that drives them."""

    def __init__(self, cfg: RunConfig, dataset, run_dir: Path, resume: Path | None = None):
        problem = problem_of(dataset)
        cfg = dataclasses.replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()))   # actors' cwd differs
        run_dir = Path(run_dir).resolve()
        tag = f"{run_dir.name}-{uuid.uuid4().hex[:6]}"
        placed = place_actors(cfg, dataset, problem, tag)
        self.server, self.shards, self.server_device = placed.server, placed.shards, placed.server_device
        self.scheduler = Scheduler.options(name=f"fedvlr-scheduler-{tag}").remote(
            cfg, problem, self.server, self.shards, placed.shard_users, str(run_dir),
            str(Path(resume).resolve()) if resume else None)
        self._result = None
        self._seen = 0

    def start(self) -> "RayRun":
        self._result = self.scheduler.run.remote()
        return self

    def poll(self) -> list[dict]:
        """Round records produced since the last poll."""
        records = ray.get(self.scheduler.progress.remote(self._seen))
        self._seen += len(records)
        return records

    def wait(self, on_round: Callable[[dict], None] = lambda r: None, interval: float = 0.3) -> dict:
        """Follow the run to its end, reporting each round; return its outcome
        (`Federation.outcome()`: summary, history, router weights)."""
        if self._result is None:
            self.start()
        while True:
            done, _ = ray.wait([self._result], timeout=interval)
            for record in self.poll():
                on_round(record)
            if done:
                outcome = ray.get(self._result)
                outcome["summary"] |= {"shards": len(self.shards), "server_device": self.server_device}
                return outcome

    def close(self) -> None:
        for actor in [self.scheduler, self.server, *self.shards]:
            ray.kill(actor)


def run_on_ray(cfg: RunConfig, dataset, run_dir: Path, on_round: Callable[[dict], None],
               resume: Path | None = None) -> dict:
    """Run a federation on Ray (joining `cfg.address` or a private local instance); return its
    outcome (summary, history, router weights)."""
    with ray_session(cfg.address):
        run = RayRun(cfg, dataset, run_dir, resume)
        try:
            return run.wait(on_round)
        except SHARD_FAILURES as err:
            reason = str(err).strip().splitlines()[-1][:300]
            raise FedVLRError(
                f"a client shard died and the run could not recover (out of memory? the Ray logs say more; with "
                f"--checkpoint-every N a restarted shard resumes from the last checkpoint): {reason}") from None
        finally:
            run.close()
