"""Run one configuration end to end: load data, train on the chosen backend, write results.

A run folder holds `config.json` (the resolved configuration), `metrics.parquet` (one row per
round), `summary.json` (the final table), `router_weights.npy` (for `ours`, per-user weights at
the selected round), the checkpoint, and the PNG plots of `fedvlr-sim report`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.errors import FedVLRError


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.dataset.replace(":", "-")
    return Path("runs") / f"{name}-{cfg.backbone}-{cfg.variant}-{stamp}"


def prepare_run_dir(cfg: RunConfig) -> Path:
    """The run's folder, created fresh; an existing finished run is never overwritten."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if (run_dir / "summary.json").exists() or checkpoint.latest(run_dir) is not None:
        raise FedVLRError(f"--out {run_dir}: already holds a run; use --resume {run_dir} to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.out = str(run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return run_dir


EXTENDABLE = ("rounds", "patience")


def resume_config(run_dir: Path, extend: dict | None = None) -> tuple[RunConfig, Path, int]:
    """The configuration, newest checkpoint and rounds done of an interrupted run. `extend` may
    raise `rounds` or `patience` (to continue a finished run); any other option is refused,
    since changing it would make the resumed run a different experiment."""
    run_dir = Path(run_dir)
    cfg = RunConfig.from_file(run_dir / "config.json").validate()
    folder = checkpoint.latest(run_dir)
    if folder is None:
        raise FedVLRError(f"--resume {run_dir}: no checkpoint found (was --checkpoint-every 0?)")
    changed = {k: v for k, v in (extend or {}).items() if getattr(cfg, k) != v}
    refused = sorted(set(changed) - set(EXTENDABLE))
    if refused:
        raise FedVLRError(f"--resume continues {run_dir} with its own config.json; --{refused[0].replace('_', '-')} "
                          f"cannot change (only --rounds and --patience can)")
    for name, value in changed.items():
        setattr(cfg, name, value)
    cfg.validate()
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    _, loop_state = checkpoint.read(folder)
    return cfg, folder, int(loop_state["round"])


def execute(cfg: RunConfig, dataset, run_dir: Path, on_round: Callable[[dict], None],
            resume: Path | None = None) -> dict:
    """Train `cfg` on `dataset` with the configured backend and write the results folder."""
    if cfg.backend == "local":
        from fedvlr_sim.engine.simulation import local_federation

        federation = local_federation(cfg, dataset, run_dir, on_round, n_shards=max(1, cfg.shards))
        if resume:
            federation.restore(resume)
        federation.run()
        outcome = federation.outcome()
    else:
        from fedvlr_sim.actors.launch import run_on_ray

        outcome = run_on_ray(cfg, dataset, run_dir, on_round, resume)
    write_results(run_dir, **outcome)
    return outcome["summary"]


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


def write_results(run_dir: Path, summary: dict, history: list[dict], router_weights) -> None:
    """summary.json, metrics.parquet, router_weights.npy and the report plots."""
    if history:
        pl.DataFrame(history).write_parquet(run_dir / "metrics.parquet")
    if router_weights is not None:
        np.save(run_dir / "router_weights.npy", np.asarray(router_weights, dtype=np.float32))
    write_json(run_dir / "summary.json", summary)
    from fedvlr_sim.report import draw_report

    draw_report(run_dir)
