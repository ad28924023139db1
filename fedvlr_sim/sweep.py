"""The hyper-parameter grid, selected on valid only (SPEC.md section 7): the client learning
rate, and any grid the backbone declares (FedRAP: lambda x mu)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig
from fedvlr_sim.runner import execute, new_run, write_json

LR_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def grid(cfg: RunConfig) -> list[dict]:
    """Every combination of the learning rates and the backbone's own grid."""
    axes = {"lr": LR_GRID} | cfg.model.backbone_def.hyper_grid
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def point_name(point: dict) -> str:
    return "-".join(f"{k.replace('fedrap_', '')}{v:g}" for k, v in point.items())


def sweep(cfg: RunConfig, dataset, out: Path, on_run: Callable = lambda name, summary: None,
          points: list[dict] | None = None) -> dict:
    """Run every grid point into out/<point>/, pick the best on valid, write out/sweep.json and
    out/summary.json (the selected run's summary plus the whole grid)."""
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for point in points or grid(cfg):
        with new_run(cfg.replace(out=str(out / point_name(point)), **point)) as (run_cfg, run_dir):
            summary = execute(run_cfg, dataset, run_dir)
        results.append({"point": point, "run": str(run_dir), "valid": summary.valid, "test": summary.test})
        on_run(point_name(point), summary)
    metric = cfg.loop.select_metric
    best = max(results, key=lambda r: r["valid"].get(metric, float("-inf")))
    selected = json.loads((Path(best["run"]) / "summary.json").read_text())
    selected["sweep"] = {"selected_on": f"valid {metric}", "selected": best["point"], "grid": results}
    write_json(out / "sweep.json", results)
    write_json(out / "summary.json", selected)
    return selected
