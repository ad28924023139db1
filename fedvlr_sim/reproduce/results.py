"""The result rows of an experiment: one per cell, dataset and seed, from the run selected on
valid among its grid points (seed 0 of a tuned cell: among every point of its tuning stages;
another seed: its one run, at the point seed 0 chose); written as parquet atomically."""

from __future__ import annotations

import json
from pathlib import Path

from fedvlr_sim.config import METRICS, MODALITIES
from fedvlr_sim.reproduce.grid import best_on_valid
from fedvlr_sim.reproduce.plan import Plan, Replicate


def result_rows(plan: Plan, outcomes: dict[Path, dict], metric: str) -> list[dict]:
    """A row per complete replicate (every run finished; with `reproduce --report-only` some may
    not be) that has a finished (not diverged) run: the cell's options, seed, valid and test
    metrics, selected hyper-parameters (`selected`: the grid point as JSON, {} when untuned) and
    run folder."""
    option_keys = list(dict.fromkeys(k for r in plan.replicates for k in r.cell.options))
    rows = []
    for replicate in plan.replicates:
        if not replicate.complete or replicate.waiting(outcomes):
            continue
        by_summary = [(outcomes[job.run_dir], job, point) for job, point in zip(replicate.jobs, replicate.points)]
        best = best_on_valid([summary for summary, _, _ in by_summary], metric)
        if best is None:
            continue
        _, job, point = next(item for item in by_summary if item[0] is best)
        rows.append(_row(plan, replicate, best, point, job.run_dir, option_keys))
    return rows


def _row(plan: Plan, replicate: Replicate, summary: dict, point: dict, run_dir: Path, option_keys: list[str]) -> dict:
    config = summary["config"]
    row = {"experiment": plan.experiment.name, "dataset": replicate.dataset, "row": replicate.cell.row,
           "column": replicate.cell.column, "seed": replicate.seed}
    row |= {k: _readable(config[k]) for k in option_keys}
    row |= {"lr": config["lr"], "selected": json.dumps(point)}
    row |= {f"valid_{m}": summary["valid"].get(m) for m in METRICS}
    row |= {f"test_{m}": summary["test"].get(m) for m in METRICS}
    row |= {"best_round": summary["best_round"], "rounds_run": summary["rounds_run"],
            "dp_epsilon": (summary.get("dp") or {}).get("epsilon"), "run": str(run_dir),
            "baselines": json.dumps(summary.get("baselines", {}))}
    return row


def _readable(value):
    """An option as a table value: an ablation as `vision=drop` (or `keep`), others as they are."""
    if isinstance(value, dict):
        changed = [f"{m}={value[m]}" for m in MODALITIES if value.get(m, "keep") != "keep"]
        return ",".join(changed) or "keep"
    return value


def write_parquet(path: Path, rows: list[dict]) -> None:
    """The rows as parquet, atomically (temp file, then rename)."""
    import polars as pl

    tmp = path.with_name(path.name + ".tmp")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(tmp)
    tmp.replace(path)
