"""Run one configuration end to end: load data, train on the chosen backend, write results.

A run folder holds `config.json` (the resolved configuration), `metrics.parquet` (one row per
round, written as the run goes), `summary.json` (the final table), `router_weights.npy` (for
`ours`, per-user weights at the selected round), the checkpoint, and the PNG plots of
`fedvlr-sim report`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.callbacks import BestRound, History
from fedvlr_sim.engine.messages import RoundRecord, RunSummary
from fedvlr_sim.engine.simulation import METRICS_FILE, build_federation, problem_of, summarize
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.runlock import run_lock


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.launch.dataset.replace(":", "-")
    return Path("runs") / f"{name}-{cfg.model.backbone}-{cfg.model.variant}-{stamp}"


def prepare_run_dir(cfg: RunConfig) -> tuple[RunConfig, Path]:
    """The run's folder, created fresh, and the config with `out` set to it; an existing run is
    never overwritten."""
    run_dir = Path(cfg.launch.out) if cfg.launch.out else default_run_dir(cfg)
    _refuse_taken(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(out=str(run_dir))
    write_json(run_dir / "config.json", cfg.flat())
    return cfg, run_dir


@contextlib.contextmanager
def new_run(cfg: RunConfig):
    """Yield (config, run folder) for a fresh run, the folder locked against a second run for the
    whole block. A start that fails before leaving anything to resume removes what it created."""
    run_dir = Path(cfg.launch.out) if cfg.launch.out else default_run_dir(cfg)
    _refuse_taken(run_dir)   # before the lock too, so a refused run touches nothing
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):
            yield prepare_run_dir(cfg.replace(out=str(run_dir)))
    except BaseException:
        if created and checkpoint.latest(run_dir) is None and not (run_dir / METRICS_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _refuse_taken(run_dir: Path) -> None:
    """Raise unless `run_dir` can take a new run (absent, or a folder without a run)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FedVLRError(f"--out {run_dir}: is a file, expected a folder for the run's results")
    if (run_dir / "summary.json").exists() or checkpoint.latest(run_dir) is not None:
        raise FedVLRError(f"--out {run_dir}: already holds a run; use --resume {run_dir} to continue it or choose another --out")


EXTENDABLE = ("rounds", "patience")


def resume_config(run_dir: Path, extend: dict | None = None) -> tuple[RunConfig, Path, int]:
    """The configuration, newest checkpoint and rounds done of an interrupted run. `extend` may
    raise `rounds` or `patience` (to continue a finished run); any other option is refused,
    since changing it would make the resumed run a different experiment."""
    run_dir = Path(run_dir)
    cfg = RunConfig.from_file(run_dir / "config.json")
    folder = checkpoint.latest(run_dir)
    if folder is None:
        raise FedVLRError(f"--resume {run_dir}: no checkpoint found (was --checkpoint-every 0?)")
    current = cfg.flat()
    changed = {k: v for k, v in (extend or {}).items() if current[k] != v}
    refused = sorted(set(changed) - set(EXTENDABLE))
    if refused:
        raise FedVLRError(f"--resume continues {run_dir} with its own config.json; --{refused[0].replace('_', '-')} "
                          f"cannot change (only --rounds and --patience can)")
    cfg = cfg.replace(**changed)
    write_json(run_dir / "config.json", cfg.flat())
    _, loop_state = checkpoint.read(folder)
    return cfg, folder, int(loop_state["round"])


@dataclass
class Outcome:
    """What a finished run produced: its summary, every round's record, and (for `ours`) the
    users' router weights at the selected round."""

    summary: RunSummary
    history: list[RoundRecord]
    router_weights: list | None


def train(cfg: RunConfig, dataset, run_dir: Path | None = None, on_round: Callable | None = None,
          resume: Path | None = None) -> Outcome:
    """Train `cfg` on `dataset` with the configured backend (checkpoints and metrics go to
    `run_dir` when given); continue from the checkpoint folder `resume` when given."""
    problem = problem_of(dataset)
    run_dir = Path(run_dir) if run_dir else None
    run_name = run_dir.name if run_dir else "run"
    with open_backend(cfg, dataset, problem, run_name) as backend:
        fed = build_federation(cfg, problem, backend.server, backend.pool, run_dir, on_round, backend.callbacks)
        if resume:
            fed.restore(resume)
        backend.run(fed, run_dir)
        summary = summarize(cfg, fed, backend.info)
    return Outcome(summary, fed.callback(History).records, fed.callback(BestRound).router_weights)


def execute(cfg: RunConfig, dataset, run_dir: Path, on_round: Callable | None = None,
            resume: Path | None = None) -> RunSummary:
    """Train `cfg` on `dataset` and write the results folder."""
    outcome = train(cfg, dataset, run_dir, on_round, resume)
    write_results(run_dir, outcome.summary, outcome.router_weights)
    return outcome.summary


def json_safe(value):
    """The value with every NaN or infinity replaced by None (standard JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, value) -> None:
    """Write standard JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False))
    tmp.replace(path)


def write_results(run_dir: Path, summary: RunSummary, router_weights) -> None:
    """summary.json, router_weights.npy and the report plots (metrics.parquet is written as the
    run goes)."""
    if router_weights is not None:
        np.save(run_dir / "router_weights.npy", np.asarray(router_weights, dtype=np.float32))
    write_json(run_dir / "summary.json", summary.to_dict())
    from fedvlr_sim.report import draw_report

    draw_report(run_dir)
