"""Start (or join) Ray, place the actors of a run, and run its loop with shard recovery.

The loop itself runs in the driver (`fedvlr-sim run`, or the entrypoint of `ray job submit`,
which Ray keeps running on the head node): it samples clients, makes one call per shard per
round and gathers the partial uploads with ray.wait. A shard that dies is restarted by Ray;
every shard then reloads the last checkpoint and the lost rounds are replayed exactly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray

from fedvlr_sim.actors.client_shard import ClientShard
from fedvlr_sim.actors.metrics import RayMetrics
from fedvlr_sim.actors.parameter_server import ParameterServer, ServerProxy
from fedvlr_sim.actors.pool import SHARD_FAILURES, RayPool
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.federation import Federation, Problem, shard_users
from fedvlr_sim.engine.simulation import features_of
from fedvlr_sim.errors import FedVLRError

MAX_RECOVERIES = 3


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
    """The actors of one run, and the object-store references of the shards' data (held while
    the actors live, so that Ray can restart a shard with its data)."""

    server: object
    shards: list
    shard_users: list
    server_device: str
    shard_data: list
    fingerprints: list

    def hand_out_data(self) -> None:
        """Give every shard its users' data; remove the actors and raise unless each one holds
        exactly what it was given."""
        received = ray.get([s.receive.remote([ref]) for s, ref in zip(self.shards, self.shard_data)])
        if received != self.fingerprints:
            self.kill()
            raise FedVLRError("the client shards received different user data than the driver put in the object "
                              "store; check that every node runs the same fedvlr-sim version")

    def kill(self) -> None:
        for actor in [self.server, *self.shards]:
            ray.kill(actor)


def place_actors(cfg: RunConfig, dataset, problem: Problem, run_name: str) -> Placement:
    """A ParameterServer (on a GPU when the cluster has one) and one ClientShard per CPU (or
    `--shards`), each owning a contiguous slice of users. The driver puts each slice's data in
    the object store, so only the driver's node reads the dataset."""
    resources = ray.cluster_resources()
    if int(resources.get("CPU", 0)) < 1:
        raise FedVLRError("--address: the Ray cluster has no CPU to place a client shard on")
    tag = f"{run_name}-{uuid.uuid4().hex[:6]}"
    vision, text = features_of(dataset, cfg)
    gpus = resources.get("GPU", 0)
    shards_on_gpu = cfg.launch.shard_device == "cuda"
    if shards_on_gpu and gpus < 1:
        raise FedVLRError("--shard-device cuda: the Ray cluster has no GPU")
    users = shard_users(problem.n_users, cfg.launch.shards or int(resources["CPU"]))
    # the GPUs go to the shards when they train there (the server step is light), else to the server
    server_gpus = 1 if gpus >= 1 and not shards_on_gpu else 0
    shard_gpus = min(1.0, gpus / len(users)) if shards_on_gpu else 0
    server = ParameterServer.options(name=f"fedvlr-parameter-server-{tag}", num_gpus=server_gpus).remote(
        cfg, dataset.n_items, vision, text)
    _, _, device = ray.get(server.shape.remote())
    data = [problem.data.subset(mine) for mine in users]
    refs = [ray.put(part) for part in data]
    shards = [ClientShard.options(name=f"fedvlr-shard-{i}-{tag}", max_restarts=MAX_RECOVERIES, max_task_retries=0,
                                  num_gpus=shard_gpus)
              .remote(cfg, problem.n_items, problem.n_users, run_name, i) for i in range(len(users))]
    placement = Placement(server, shards, users, device, refs, [part.fingerprint() for part in data])
    placement.hand_out_data()
    return placement


class RayBackend:
    """A run's server and pool in actors, with the Ray metrics callback and shard recovery."""

    def __init__(self, placement: Placement, problem: Problem, run_name: str):
        self.placement = placement
        self.server = ServerProxy(placement.server)
        self.pool = RayPool(placement.shards, placement.shard_users, problem.n_users)
        self.callbacks = [RayMetrics(run_name, self.server)]
        self.info = {"shards": len(placement.shards), "server_device": placement.server_device, "recoveries": 0}

    def run(self, fed: Federation, run_dir: Path | None) -> None:
        """`fed.run()`, recovering from dead shards through the last checkpoint."""
        if run_dir and fed.loop.checkpoint_every and checkpoint.latest(run_dir) is None:
            fed.save_checkpoint(run_dir)
        while True:
            try:
                return fed.run()
            except SHARD_FAILURES as err:
                folder = checkpoint.latest(run_dir) if run_dir else None
                if self.info["recoveries"] >= MAX_RECOVERIES or folder is None:
                    raise _lost(err) from None
                self.info["recoveries"] += 1
                try:
                    self.pool.wait_alive()
                    self.placement.hand_out_data()
                    fed.restore(folder)
                except SHARD_FAILURES as again:   # the parameter server has no replica
                    raise _lost(again) from None


def _lost(err: Exception) -> FedVLRError:
    reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
    return FedVLRError("an actor of the run died and the run could not recover (out of memory? the Ray logs say "
                       "more; with --checkpoint-every N a restarted client shard resumes from the last checkpoint, "
                       f"a lost parameter server cannot): {reason}")


@contextlib.contextmanager
def ray_backend(cfg: RunConfig, dataset, problem: Problem, run_name: str = "run",
                on_status: Callable[[str], None] = lambda text: None):
    """Join or start Ray, place the actors, yield a RayBackend; remove the actors afterwards."""
    on_status(f"joining the Ray cluster at {cfg.launch.address}" if cfg.launch.address
              else "starting a private Ray instance")
    with ray_session(cfg.launch.address):
        on_status("placing the parameter server and client shards, handing each shard its users' data")
        placement = place_actors(cfg, dataset, problem, run_name)
        on_status(f"training on {len(placement.shards)} client shards")
        try:
            yield RayBackend(placement, problem, run_name)
        finally:
            placement.kill()
