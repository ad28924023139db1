"""What a finished run folder gives the figures beyond its summary: its configuration
(config.json), its dataset loaded as `reproduce` loads it, and that dataset's users as the
engine sees them (train histories, held-out items)."""

from __future__ import annotations

from pathlib import Path

from fedvlr_sim.config import RunConfig
from fedvlr_sim.datasets.dataset import Dataset
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.reproduce.jobs import load_cached
from fedvlr_sim.runner import CONFIG_FILE


def run_dataset(run_dir: Path) -> tuple[RunConfig, Dataset]:
    """(the run's configuration, its dataset drawn with the run's seed)."""
    cfg = RunConfig.from_file(Path(run_dir) / CONFIG_FILE)
    return cfg, load_cached(cfg.launch.dataset, cfg.launch.data_dir, cfg.seed)


def run_users(run_dir: Path) -> UserData:
    """The users of the run's dataset: train histories (repeats counted once) and held-out items."""
    _, dataset = run_dataset(run_dir)
    return UserData.from_interactions(dataset.n_users, dataset.user, dataset.item, dataset.split)
