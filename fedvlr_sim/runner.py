"""Run one configuration end to end: load data, train on the chosen backend, write results.

A run folder holds `config.json` (the resolved configuration with `out` cleared, so that passed
back with --config it runs the experiment again in a new folder), `metrics.parquet` (one row per
round, written as the run goes), `summary.json` (the final table), `router_weights.npy` (for
`ours`, per-user weights at the selected round), the checkpoint, and the PNG plots of
`fedvlr-sim report`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig, require_folder
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.accounting import resolve_noise
from fedvlr_sim.engine.callbacks import BestRound, History, TensorBoardWriter
from fedvlr_sim.engine.messages import RoundRecord, RunSummary
from fedvlr_sim.engine.simulation import METRICS_FILE, build_federation, problem_of, summarize
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.memory import check_memory
from fedvlr_sim.runlock import run_lock

CONFIG_FILE = "config.json"


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<dataset>-<backbone>-<variant>-<time>, with a -2, -3, ... suffix if that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.launch.dataset.replace(':', '-')}-{cfg.model.backbone}-{cfg.model.variant}-{stamp}"
    candidates = (base.with_name(f"{base.name}-{n}") if n > 1 else base for n in itertools.count(1))
    return next(path for path in candidates if not path.exists())


def run_dir_of(cfg: RunConfig) -> Path:
    """The folder a new run of `cfg` writes: --out, or a fresh default one."""
    return Path(cfg.launch.out) if cfg.launch.out else default_run_dir(cfg)


def prepare_run_dir(cfg: RunConfig) -> tuple[RunConfig, Path]:
    """The run's folder, created fresh, and the config the run records in its config.json: every
    option but `out` (cleared: the folder is where a run is, not what it is, so the file passed
    back with --config runs the experiment again in a new folder). An existing run is never
    overwritten."""
    run_dir = run_dir_of(cfg)
    _refuse_taken(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(out="")
    write_json(run_dir / CONFIG_FILE, cfg.flat())
    return cfg, run_dir


@contextlib.contextmanager
def new_run(cfg: RunConfig):
    """Yield (config, run folder) for a fresh run, the folder locked against a second run for the
    whole block. A start that fails before leaving anything to resume removes what it created;
    a run refused the lock removes nothing (the folder is the holder's, even if this run saw it
    absent a moment before)."""
    run_dir = run_dir_of(cfg)
    _refuse_taken(run_dir)   # before the lock too, so a refused run touches nothing
    created = not run_dir.exists()
    with run_lock(run_dir):
        try:
            yield prepare_run_dir(cfg.replace(out=str(run_dir)))
        except BaseException:
            if created and checkpoint.latest(run_dir) is None and not (run_dir / METRICS_FILE).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _refuse_taken(run_dir: Path) -> None:
    """Raise unless `run_dir` can take a new run (absent, or a folder without a run)."""
    require_folder("--out", run_dir, "for the run's results")
    if (run_dir / "summary.json").exists() or checkpoint.latest(run_dir) is not None:
        raise FedVLRError(f"--out {run_dir}: already holds a run; use --resume {run_dir} to continue it or choose another --out")


def load_checked(cfg: RunConfig):
    """The run's dataset, once everything that can be checked before training has been: the
    data folder, the features its variant needs, and the memory the run will take."""
    from fedvlr_sim.datasets import load_dataset
    from fedvlr_sim.engine.simulation import features_of

    data_dir = require_folder("--data-dir", Path(cfg.launch.data_dir), "of prepared datasets")
    dataset = load_dataset(cfg.launch.dataset, data_dir, seed=cfg.seed)
    features_of(dataset, cfg)
    check_memory(cfg, dataset)
    return dataset


EXTENDABLE = ("rounds", "patience")


def saved_config(run_dir: Path, extend: dict | None = None) -> RunConfig:
    """The configuration of the run in `run_dir` (its config.json), with `rounds` or `patience`
    raised by `extend` (to continue a finished run); any other change is refused, since it would
    make the resumed run a different experiment. A config.json of an older version that names
    its `out` reads the same."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FedVLRError(f"--resume {run_dir}: no {CONFIG_FILE} (expected a run folder with {CONFIG_FILE} and a "
                          f"checkpoint)")
    current = RunConfig.from_file(run_dir / CONFIG_FILE).replace(out="")
    changed = {k: v for k, v in (extend or {}).items() if current.flat()[k] != v}
    refused = sorted(set(changed) - set(EXTENDABLE))
    if refused:
        raise FedVLRError(f"--resume continues {run_dir} with its own {CONFIG_FILE}; --{refused[0].replace('_', '-')} "
                          f"cannot change (only --rounds and --patience can)")
    if "rounds" in changed and current.client.dp_epsilon > 0:
        raise FedVLRError(f"--rounds cannot change on --resume of a run with --dp-epsilon: its noise was solved for "
                          f"{current.loop.rounds} rounds, and more rounds would spend more than the target epsilon")
    return current.replace(**changed)


def resume_config(run_dir: Path, extend: dict | None = None) -> tuple[RunConfig, Path, int]:
    """The configuration (see `saved_config`; written back when `extend` changed it), newest
    checkpoint and rounds done of an interrupted run."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir, extend)
    folder = latest_checkpoint(run_dir)
    _, loop_state = checkpoint.read(folder)
    done = int(loop_state["round"])
    if cfg.loop.rounds < done:
        raise FedVLRError(f"--rounds {cfg.loop.rounds}: {run_dir} has already run {done} rounds (--resume can raise "
                          "--rounds, not lower it below that)")
    if cfg != saved_config(run_dir):
        write_json(run_dir / CONFIG_FILE, cfg.flat())
    return cfg, folder, done


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run; if there is none, why (damage or absence)."""
    folder = checkpoint.latest(run_dir)
    if folder is not None:
        return folder
    for name in (checkpoint.CHECKPOINT, checkpoint.TMP, checkpoint.OLD):
        if (run_dir / name).is_dir():
            checkpoint.verify(run_dir / name)   # raises a one-line description of the damage
    raise FedVLRError(f"--resume {run_dir}: no checkpoint found (was --checkpoint-every 0?)")


def run(config: RunConfig | dict | str | Path) -> RunSummary:
    """Run one configuration (a RunConfig, a dict of flat options, or a JSON, TOML or YAML
    config file) into a new run folder (its `out`, or runs/...) and return its summary."""
    cfg = as_config(config)
    dataset = load_checked(cfg)
    with new_run(cfg) as (cfg, run_dir):
        return execute(cfg, dataset, run_dir)


def as_config(config: RunConfig | dict | str | Path) -> RunConfig:
    """A RunConfig from any of the forms `run` accepts."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.from_dict(config, source="config")
    if isinstance(config, (str, Path)):
        return RunConfig.from_file(Path(config))
    raise FedVLRError(f"config: expected a RunConfig, a dict of options or a config file path, got "
                      f"{type(config).__name__}")


@dataclass
class Outcome:
    """What a finished run produced: its summary, every round's record, and (for `ours`) the
    users' router weights at the selected round."""

    summary: RunSummary
    history: list[RoundRecord]
    router_weights: list | None
    reliance: list | None = None        # per-user reliance shares over vision, text, id
    test_ranks: list | None = None      # every user's test rank at the selected round


def train(cfg: RunConfig, dataset, run_dir: Path | None = None, on_round: Callable | None = None,
          resume: Path | None = None, on_status: Callable[[str], None] | None = None) -> Outcome:
    """Train `cfg` on `dataset` with the configured backend (checkpoints and metrics go to
    `run_dir` when given); continue from the checkpoint folder `resume` when given. `on_status`
    hears what the run is doing before its first round."""
    problem = problem_of(dataset)
    run_dir = Path(run_dir) if run_dir else None
    run_name = run_dir.name if run_dir else "run"
    extra = [TensorBoardWriter(run_dir)] if cfg.launch.tensorboard and run_dir else []   # fails before Ray starts
    noised = resolve_noise(cfg, problem.n_users)   # a --dp-epsilon target becomes a noise multiplier
    with open_backend(noised, dataset, problem, run_name, on_status or (lambda text: None)) as backend:
        fed = build_federation(cfg, problem, backend.server, backend.pool, run_dir, on_round,
                               [*backend.callbacks, *extra])
        if resume:
            _restore(fed, resume)
        backend.run(fed, run_dir)
        summary = summarize(cfg, fed, backend.info)
    best = fed.callback(BestRound)
    return Outcome(summary, fed.callback(History).records, best.router_weights, best.reliance, best.test_ranks)


def _restore(fed, folder: Path) -> None:
    """Continue `fed` from a checkpoint folder; a checkpoint that does not fit the configuration
    (config.json edited after the run started) is a one-line error, not a torch traceback."""
    try:
        fed.restore(folder)
    except (RuntimeError, KeyError) as err:
        problem = " ".join(str(err).split())[:200]
        raise FedVLRError(f"--resume: {folder} does not fit the run's {CONFIG_FILE} ({problem}); resume with the "
                          f"{CONFIG_FILE} the run was started with") from None


def execute(cfg: RunConfig, dataset, run_dir: Path, on_round: Callable | None = None,
            resume: Path | None = None, on_status: Callable[[str], None] | None = None) -> RunSummary:
    """Train `cfg` on `dataset` and write the results folder."""
    outcome = train(cfg, dataset, run_dir, on_round, resume, on_status)
    write_results(run_dir, outcome)
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


def write_results(run_dir: Path, outcome: Outcome) -> None:
    """summary.json, the per-user router_weights.npy and modality_reliance.npy (users x vision,
    text, id shares) where measured, test_ranks.npy (every user's test rank at the selected
    round, for paired tests over users), and the report plots (metrics.parquet is written as
    the run goes)."""
    for name, values, dtype in (("router_weights", outcome.router_weights, np.float32),
                                ("modality_reliance", outcome.reliance, np.float32),
                                ("test_ranks", outcome.test_ranks, np.int32)):
        if values is not None:
            np.save(run_dir / f"{name}.npy", np.asarray(values, dtype=dtype))
    write_json(run_dir / "summary.json", outcome.summary.to_dict())
    from fedvlr_sim.report import draw_report

    draw_report(run_dir)
