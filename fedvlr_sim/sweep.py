"""The hyper-parameter grid of one configuration (reproduce/grid.py), selected on valid only:
one run folder per point, run in parallel and resumable like the cells of `reproduce`. The
grid (lr x the backbone's own) runs first, then the other negative-sampling exponents at its
best point."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig, create_folder
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.grid import best_on_valid, grid_points, negatives_stage, point_name
from fedvlr_sim.reproduce.jobs import Job, run_jobs
from fedvlr_sim.runner import CONFIG_FILE, write_json


def sweep_jobs(cfg: RunConfig, out: Path, points: list[dict]) -> list[Job]:
    """A run per grid point, in out/<point>/."""
    return [Job(cfg.replace(**point), out / point_name(point)) for point in points]


def sweep(cfg: RunConfig, out: Path, resume: bool = False, max_parallel: int = 1,
          on_run: Callable[[Job, dict, bool], None] = lambda job, outcome, kept: None) -> dict:
    """Run every grid point, then the negatives stage at the best one (with `resume`, keep the
    finished runs and resume the others), pick the best on valid; write out/sweep.json (every
    point) and out/summary.json (the selected run's summary plus the grid); return the latter."""
    if (out / CONFIG_FILE).exists():
        raise FedVLRError(f"--out {out}: holds a single run ({CONFIG_FILE}), not a sweep; choose another --out")
    points = grid_points(cfg.model.backbone_def)
    jobs = sweep_jobs(cfg, out, points)
    started = [job.run_dir for job in jobs if job.run_dir.exists()]
    if started and not resume:
        raise FedVLRError(f"--out {out}: already holds this sweep's runs ({started[0].name}, ...); add --resume to "
                          "continue it or choose another --out")
    if resume and not started:
        raise FedVLRError(f"--resume: {out} holds no run of this sweep to continue; drop --resume to start it")
    create_folder("--out", out)
    address = cfg.launch.address if cfg.launch.backend == "local" else ""
    metric = cfg.loop.select_metric
    outcomes = run_jobs(jobs, max_parallel, address, on_run)
    best = best_on_valid(outcomes, metric)
    if best is None:
        raise FedVLRError(f"--out {out}: every grid point diverged ({outcomes[0]['failed']})")
    later = negatives_stage(points[_index_of(outcomes, best)], cfg.flat())
    later_jobs = sweep_jobs(cfg, out, later)
    outcomes += run_jobs(later_jobs, max_parallel, address, on_run)
    jobs, points = jobs + later_jobs, points + later
    grid = [{"point": point, "run": str(job.run_dir), "valid": o.get("valid"), "test": o.get("test"),
             "failed": o.get("failed")} for point, job, o in zip(points, jobs, outcomes)]
    best = best_on_valid(outcomes, metric)
    chosen = grid[_index_of(outcomes, best)]
    selected = best | {"sweep": {"selected_on": f"valid {metric}", "selected": chosen["point"], "grid": grid}}
    write_json(out / "sweep.json", grid)
    write_json(out / "summary.json", selected)
    return selected


def _index_of(outcomes: list[dict], outcome: dict) -> int:
    return next(i for i, o in enumerate(outcomes) if o is outcome)
