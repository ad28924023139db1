"""The paper's hyper-parameter grid, selected on valid only (SPEC.md section 7)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig
from fedvlr_sim.runner import execute, prepare_run_dir, write_json

LR_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
FEDRAP_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def grid(cfg: RunConfig) -> list[dict]:
    """The learning-rate grid; for FedRAP also the lambda x mu grid (at every learning rate)."""
    points = [{"lr": lr} for lr in LR_GRID]
    if cfg.backbone == "fedrap":
        points = [{"lr": lr, "fedrap_lambda": lam, "fedrap_mu": mu}
                  for lr in LR_GRID for lam in FEDRAP_GRID for mu in FEDRAP_GRID]
    return points


def point_name(point: dict) -> str:
    return "-".join(f"{k.replace('fedrap_', '')}{v:g}" for k, v in point.items())


def sweep(cfg: RunConfig, dataset, out: Path, on_run: Callable[[str, dict], None] = lambda n, s: None,
          points: list[dict] | None = None) -> dict:
    """Run every grid point into out/<point>/, pick the best on valid, write out/sweep.json and
    out/summary.json (the selected run's summary plus the whole grid)."""
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for point in points or grid(cfg):
        run_cfg = dataclasses.replace(cfg, out=str(out / point_name(point)), **point)
        run_dir = prepare_run_dir(run_cfg)
        summary = execute(run_cfg, dataset, run_dir, on_round=lambda record: None)
        results.append({"point": point, "run": str(run_dir), "valid": summary["valid"], "test": summary["test"]})
        on_run(point_name(point), summary)
    metric = cfg.select_metric
    best = max(results, key=lambda r: r["valid"].get(metric, float("-inf")))
    selected = json.loads((Path(best["run"]) / "summary.json").read_text())
    selected["sweep"] = {"selected_on": f"valid {metric}", "selected": best["point"], "grid": results}
    write_json(out / "sweep.json", results)
    write_json(out / "summary.json", selected)
    return selected
