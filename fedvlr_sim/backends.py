"""One set-up path for both backends: the server and client pool of a run, in this process
(`--backend local`) or in Ray actors (`--backend ray`). `run`, `sweep` and `bench` all open a
backend here and drive the same engine loop over it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.federation import Federation, Problem
from fedvlr_sim.engine.simulation import local_pool, make_server


class LocalBackend:
    """Server and client shards in this process."""

    def __init__(self, cfg: RunConfig, dataset, problem: Problem):
        n_shards = max(1, cfg.launch.shards)
        self.server = make_server(cfg, dataset)
        self.pool = local_pool(cfg, problem, n_shards)
        self.callbacks = []
        self.info = {"shards": len(self.pool.shards), "server_device": "cpu"}

    def run(self, fed: Federation, run_dir: Path | None) -> None:
        fed.run()


@contextlib.contextmanager
def open_backend(cfg: RunConfig, dataset, problem: Problem, run_name: str = "run",
                 on_status: Callable[[str], None] = lambda text: None):
    """Yield the backend `cfg.launch.backend` names (server, pool, callbacks, info, run);
    `on_status` hears each set-up step."""
    if cfg.launch.backend == "local":
        on_status("building the server and client shards in this process")
        yield LocalBackend(cfg, dataset, problem)
        return
    from fedvlr_sim.actors.launch import ray_backend

    with ray_backend(cfg, dataset, problem, run_name, on_status) as backend:
        yield backend
