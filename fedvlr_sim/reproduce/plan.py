"""An experiment's cells on the chosen datasets and seeds turned into run folders (jobs), with
the cells a dataset cannot run set aside with their reason.

Tuned cells follow the usual protocol: their hyper-parameters are chosen on valid with seed 0
only, and seeds 1..N-1 rerun the chosen point. Seed 0 tunes in stages (`grid.py`): stage 1 is
the client lr grid at the backbone's own hyper-parameters as configured (FedRAP: the default
lambda and mu), stage 2 the backbone's own grid (FedRAP: lambda x mu) at stage 1's best lr,
stage 3 the other negative-sampling exponents at the best point so far. As later runs depend on
earlier outcomes, a plan hands out its runs in phases (`Plan.next_jobs`, asked again as
outcomes come in): phase 1 holds stage 1 of every tuned cell and every untuned run, phase 2
FedRAP's stage 2 and the other cells' stage 3, phase 3 FedRAP's stage 3 and the other seeds of
the other cells, phase 4 the other seeds of FedRAP. The executor does not wait for a whole phase: a run starts
as soon as its inputs are in, the first in table order (`Plan.order`) first. A replicate whose runs all
diverged selects nothing; its other seeds then have no point to rerun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fedvlr_sim.config import RunConfig, require_folder
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.experiment import Cell, Choices, Experiment
from fedvlr_sim.reproduce.grid import backbone_stage, best_on_valid, lr_stage, negatives_stage, point_name
from fedvlr_sim.reproduce.jobs import Job, finished, load_cached


@dataclass(eq=False)
class Replicate:
    """One cell on one dataset with one seed, and the runs given to it so far: one run when the
    cell is untuned; on seed 0 of a tuned cell one per grid point of each tuning stage
    (folder/<point>); on another seed of a tuned cell the point seed 0 chose (folder/<point>)."""

    dataset: str
    cell: Cell
    seed: int
    cfg: RunConfig                      # the cell's configuration with this seed
    folder: Path                        # out/<name>/<dataset>/<cell>/seed<k>
    tuned_on: Replicate | None = None   # seed 0 of the same tuned cell (for the other seeds)
    points: list[dict] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    stage: int = 0                      # tuning stages started
    complete: bool = False              # no run left to add

    def add(self, points: list[dict]) -> list[Job]:
        """Jobs for the points not run yet (a point shared by two stages runs once)."""
        new = [p for i, p in enumerate(points) if p not in self.points and p not in points[:i]]
        jobs = [Job(self.cfg.replace(**p), self.folder / point_name(p) if p else self.folder) for p in new]
        self.points += new
        self.jobs += jobs
        return jobs

    @property
    def done(self) -> bool:
        """No run left to add, and every run's folder holds its outcome (a finished run on disk)."""
        return self.complete and all(finished(job.run_dir) for job in self.jobs)

    def waiting(self, outcomes: dict[Path, dict]) -> bool:
        return any(job.run_dir not in outcomes for job in self.jobs)

    def selected(self, outcomes: dict[Path, dict], metric: str) -> dict | None:
        """The grid point of the best finished (not diverged) run on valid, or None."""
        results = [outcomes[job.run_dir] for job in self.jobs if job.run_dir in outcomes]
        best = best_on_valid(results, metric)
        return next((p for p, job in zip(self.points, self.jobs) if outcomes.get(job.run_dir) is best), None)


@dataclass
class Plan:
    """Every replicate to run, and the (dataset, cell) pairs skipped with the reason."""

    experiment: Experiment
    datasets: list[str]
    seeds: int
    cells: list[Cell]
    metric: str                         # the valid metric runs are selected on
    replicates: list[Replicate] = field(default_factory=list)
    skipped: dict[tuple[str, Cell], str] = field(default_factory=dict)
    ranks: dict[Path, tuple[int, int]] = field(default_factory=dict)   # run folder -> (replicate, run)

    @property
    def most_runs(self) -> int:
        """How many runs the plan hands out when no tuning run diverges."""
        return sum(_stage_sizes(r) for r in self.replicates)

    def next_jobs(self, outcomes: dict[Path, dict]) -> list[Job]:
        """The runs that can start now that `outcomes` holds the outcome of every run handed out
        before (by run folder); [] once every replicate is complete."""
        new: list[Job] = []
        for index, replicate in enumerate(self.replicates):   # seed 0 of a cell precedes its other seeds
            if not replicate.complete and not replicate.waiting(outcomes):
                jobs = self._advance(replicate, outcomes)
                self.ranks |= {job.run_dir: (index, len(replicate.jobs) - len(jobs) + i) for i, job in enumerate(jobs)}
                new += jobs
        return new

    def order(self, job: Job) -> tuple[int, int]:
        """A job's place in table order (dataset, cell, seed, then grid point): the executor
        starts the first ready one, so a cell's seeds finish before the next cell starts."""
        return self.ranks[job.run_dir]

    def _advance(self, r: Replicate, outcomes: dict[Path, dict]) -> list[Job]:
        if not r.cell.tuned:
            r.complete = True
            return r.add([{}])
        if r.tuned_on is not None:
            if not r.tuned_on.complete:
                return []
            r.complete = True
            chosen = r.tuned_on.selected(outcomes, self.metric)
            return r.add([chosen]) if chosen is not None else []
        r.stage += 1
        backbone, settings = r.cfg.model.backbone_def, r.cfg.flat()
        if r.stage == 1:
            return r.add(lr_stage(backbone, settings))
        chosen = r.selected(outcomes, self.metric)
        if chosen is None or r.stage > 3:   # all diverged, or the last stage's outcomes are in
            r.complete = True
            return []
        if r.stage == 2 and (jobs := r.add(backbone_stage(backbone, chosen["lr"]))):
            return jobs
        r.stage = 3
        jobs = r.add(negatives_stage(chosen, settings))
        r.complete = not jobs
        return jobs


def _stage_sizes(r: Replicate) -> int:
    if not r.cell.tuned or r.seed > 0:
        return 1
    backbone, settings = r.cfg.model.backbone_def, r.cfg.flat()
    first = lr_stage(backbone, settings)
    return (len(first) + sum(p not in first for p in backbone_stage(backbone, first[0]["lr"]))
            + len(negatives_stage(first[0], settings)))


def slug(name: str) -> str:
    """A dataset name as a folder name (synthetic:tiny -> synthetic-tiny)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def plan(experiment: Experiment, datasets: list[str], seeds: int, base: RunConfig, choices: Choices,
         out: Path) -> Plan:
    """The replicates of `experiment` under out/<name>/<dataset>/<cell>/seed<k>[/<grid point>];
    their runs are handed out by `Plan.next_jobs`."""
    if seeds < 1:
        raise FedVLRError(f"--seeds must be a positive integer, got {seeds}")
    if not datasets:
        raise FedVLRError("--dataset: name at least one dataset")
    cells = experiment.cells(choices)
    result = Plan(experiment, list(dict.fromkeys(datasets)), seeds, cells, base.loop.select_metric)
    for name in result.datasets:
        has_features = features_present(base.replace(dataset=name))
        for cell in cells:
            cfg = base.replace(dataset=name, **cell.options)
            if cfg.model.variant_def.uses_features and not has_features:
                result.skipped[(name, cell)] = (f"--variant {cfg.model.variant} needs item features and {name} has "
                                                f"none (fedvlr-sim features --dataset {name})")
                continue
            first = None
            for seed in range(seeds):
                folder = out / experiment.name / slug(name) / cell.slug / f"seed{seed}"
                replicate = Replicate(name, cell, seed, cfg.replace(seed=seed), folder,
                                      tuned_on=first if cell.tuned else None)
                first = first or replicate
                result.replicates.append(replicate)
    if not result.replicates:
        reasons = sorted(set(result.skipped.values()))
        raise FedVLRError(f"reproduce {experiment.name}: no cell can run on {', '.join(datasets)}: {reasons[0]}")
    return result


def features_present(cfg: RunConfig) -> bool:
    """Whether the dataset of `cfg` has vision and text features (an unknown dataset is an error)."""
    require_folder("--data-dir", Path(cfg.launch.data_dir), "of prepared datasets")
    dataset = load_cached(cfg.launch.dataset, cfg.launch.data_dir, cfg.seed)
    return dataset.vision is not None and dataset.text is not None
