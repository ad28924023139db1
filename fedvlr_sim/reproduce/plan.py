"""An experiment's cells on the chosen datasets and seeds turned into run folders (jobs), with
the cells a dataset cannot run set aside with their reason."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fedvlr_sim.config import RunConfig, require_folder
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.experiment import Cell, Choices, Experiment
from fedvlr_sim.reproduce.grid import grid_points, point_name
from fedvlr_sim.reproduce.jobs import Job, load_cached


@dataclass
class Replicate:
    """One cell on one dataset with one seed: a run per grid point (one point when untuned)."""

    dataset: str
    cell: Cell
    seed: int
    points: list[dict]
    jobs: list[Job]


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

    @property
    def jobs(self) -> list[Job]:
        return [job for r in self.replicates for job in r.jobs]


def slug(name: str) -> str:
    """A dataset name as a folder name (synthetic:tiny -> synthetic-tiny)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def plan(experiment: Experiment, datasets: list[str], seeds: int, base: RunConfig, choices: Choices,
         out: Path) -> Plan:
    """The runs of `experiment` under out/<name>/<dataset>/<cell>/seed<k>[/<grid point>]."""
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
            for seed in range(seeds):
                folder = out / experiment.name / slug(name) / cell.slug / f"seed{seed}"
                points = grid_points(cfg.model.backbone_def) if cell.tuned else [{}]
                jobs = [Job(cfg.replace(seed=seed, **p), folder / point_name(p) if p else folder) for p in points]
                result.replicates.append(Replicate(name, cell, seed, points, jobs))
    if not result.replicates:
        reasons = sorted(set(result.skipped.values()))
        raise FedVLRError(f"reproduce {experiment.name}: no cell can run on {', '.join(datasets)}: {reasons[0]}")
    return result


def features_present(cfg: RunConfig) -> bool:
    """Whether the dataset of `cfg` has vision and text features (an unknown dataset is an error)."""
    require_folder("--data-dir", Path(cfg.launch.data_dir), "of prepared datasets")
    dataset = load_cached(cfg.launch.dataset, cfg.launch.data_dir, cfg.seed)
    return dataset.vision is not None and dataset.text is not None
