"""Run folders brought to a finished state, one run each: a finished folder is kept, a
half-finished one resumes from its checkpoint (or restarts when it has none), a new one starts.
Many run in this process one after another, or as Ray tasks at most `max_parallel` at once on
this machine or the cluster at `address`: a fixed list (`run_jobs`), or a pool that jobs join as
the outcomes they depend on come in (`run_pool`; reproduce's tuning stages).

A run is finished when its folder holds `summary.json`, or `failed.json` when it diverged (a
grid point with too large a learning rate): a diverged point is an outcome, not an error, and
is never re-run.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedvlr_sim.config import LaunchConfig, RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.runlock import run_lock
from fedvlr_sim.runner import CONFIG_FILE, execute, new_run, resume_config, write_json

SUMMARY, FAILED = "summary.json", "failed.json"
DIVERGED = re.compile(r"^round \d+ diverged")   # the engine's message for a non-finite round
# options that say where or how often, not what is computed: a run may be kept under other values
PLACEMENT = frozenset({f for f in LaunchConfig.__dataclass_fields__ if f != "dataset"} | {"checkpoint_every",
                                                                                          "chunk_elements"})


@dataclass(frozen=True)
class Job:
    """One run: its configuration (its `out` is ignored) and its folder."""

    cfg: RunConfig
    run_dir: Path


def finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).is_file() or (run_dir / FAILED).is_file()


def outcome(run_dir: Path) -> dict:
    """A finished run's summary.json, or {"failed": reason} for a diverged one."""
    name = SUMMARY if (run_dir / SUMMARY).is_file() else FAILED
    return json.loads((run_dir / name).read_text())


def run_job(job: Job) -> dict:
    """Bring `job`'s folder to a finished state and return its outcome."""
    run_dir = job.run_dir
    if run_dir.exists():
        _check_same_experiment(job)
    if finished(run_dir):
        return outcome(run_dir)
    dataset = checked_dataset(job.cfg)
    try:
        if checkpoint.latest(run_dir) is not None:
            with run_lock(run_dir):
                cfg, folder, _ = resume_config(run_dir)
                execute(cfg, dataset, run_dir, resume=folder)
        else:
            _clear(run_dir)
            with new_run(job.cfg.replace(out=str(run_dir))) as (cfg, folder):
                execute(cfg, dataset, folder)
    except FedVLRError as err:
        if not DIVERGED.match(str(err)):
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / FAILED, {"failed": str(err)})
    return outcome(run_dir)


def _check_same_experiment(job: Job) -> None:
    """Refuse a folder that holds a run of another configuration (placement options aside)."""
    saved_file = job.run_dir / CONFIG_FILE
    if not saved_file.is_file():
        return
    saved = _applied(RunConfig.from_file(saved_file))
    wanted = _applied(job.cfg)
    changed = sorted(k for k in wanted if k not in PLACEMENT and saved.get(k) != wanted[k])
    if changed:
        key = changed[0]
        raise FedVLRError(f"{job.run_dir} holds a run with {key}={saved.get(key)!r}, not {wanted[key]!r}: choose "
                          f"another --out (or repeat the options it was started with)")


def _applied(cfg: RunConfig) -> dict:
    """cfg's flat options with the fusion-input choices as its variant applies them (a plain
    run ignores --view-norm, so a plain run made under another default is the same run)."""
    variant = cfg.model.variant_def
    return cfg.flat() | {"center_features": variant.center_features, "view_norm": variant.view_norm,
                         "modality_views": variant.modality_views}


def _clear(run_dir: Path) -> None:
    """Remove what a run that left no checkpoint wrote (refused while another process runs it)."""
    if run_dir.exists():
        with run_lock(run_dir):
            pass
        shutil.rmtree(run_dir)


@functools.lru_cache(maxsize=4)
def load_cached(name: str, data_dir: str, seed: int):
    from fedvlr_sim.datasets import load_dataset

    return load_dataset(name, Path(data_dir), seed=seed)


def checked_dataset(cfg: RunConfig):
    """The run's dataset (loaded once per process), with its features and memory checked."""
    from fedvlr_sim.engine.simulation import features_of
    from fedvlr_sim.memory import check_memory

    dataset = load_cached(cfg.launch.dataset, cfg.launch.data_dir, cfg.seed)
    features_of(dataset, cfg)
    check_memory(cfg, dataset)
    return dataset


OnDone = Callable[[Job, dict, bool], None]   # (job, outcome, whether it was finished before)
MoreJobs = Callable[[dict[Path, dict]], list[Job]]   # outcomes so far -> the jobs they make ready


def run_jobs(jobs: list[Job], max_parallel: int = 1, address: str = "",
             on_done: OnDone = lambda job, result, kept: None) -> list[dict]:
    """Every job's outcome, in order. In this process one after another, unless `address` or
    `max_parallel > 1` asks for Ray tasks (runs inside a task use the in-process engine)."""
    given = [jobs]
    outcomes = run_pool(lambda done: given.pop() if given else [], max_parallel, address, on_done)
    return [outcomes[job.run_dir] for job in jobs]


def run_pool(more: MoreJobs, max_parallel: int = 1, address: str = "", on_done: OnDone = lambda job, result, kept: None,
             order: Callable[[Job], object] | None = None) -> dict[Path, dict]:
    """Every job `more` hands out brought to its outcome, by run folder. `more(outcomes)` is
    asked again after each outcome for the jobs that outcome made ready (a job whose inputs are
    earlier outcomes, such as a tuning stage); of the ready jobs the first by `order` (else the
    first handed out) starts next, at most `max_parallel` at once. A job already finished is
    only read; in this process one after another unless `address` or `max_parallel > 1` asks
    for Ray tasks."""
    if max_parallel < 1:
        raise FedVLRError(f"--max-parallel must be a positive integer, got {max_parallel}")
    outcomes: dict[Path, dict] = {}
    ready: list[Job] = []

    def refill() -> None:
        ready.extend(more(outcomes))
        if order is not None:
            ready.sort(key=order)

    def record(job: Job, result: dict, kept: bool) -> None:
        outcomes[job.run_dir] = result
        on_done(job, result, kept)
        refill()

    refill()
    if max_parallel == 1 and not address:
        while ready:
            job = ready.pop(0)
            kept = finished(job.run_dir)
            record(job, run_job(job), kept)
        return outcomes
    _on_ray(ready, max_parallel, address, record)
    return outcomes


def _on_ray(ready: list[Job], max_parallel: int, address: str, record: OnDone) -> None:
    """The ready jobs as Ray tasks of one CPU each, at most `max_parallel` at a time; `record`
    takes each outcome (and may add jobs to `ready`)."""
    if any(job.cfg.launch.backend == "ray" for job in ready):
        raise FedVLRError("--backend ray runs its own actors; with --max-parallel > 1 or --address each run is a Ray "
                          "task with the in-process engine: use --set backend=local (or --max-parallel 1)")
    import ray

    from fedvlr_sim.actors.launch import ray_session

    with ray_session(address):
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        running: dict = {}
        while ready or running:
            while ready and len(running) < max_parallel:
                job = ready.pop(0)
                if finished(job.run_dir):
                    record(job, run_job(job), True)
                else:
                    running[task.remote(_absolute(job))] = job
            if not running:
                continue
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                for other in running:
                    ray.cancel(other)
                raise FedVLRError(_task_error(job, err)) from None
            record(job, result, False)


def _absolute(job: Job) -> Job:
    """The job with absolute paths, which a Ray worker (started elsewhere) resolves alike."""
    data_dir = str(Path(job.cfg.launch.data_dir).resolve())
    return Job(job.cfg.replace(data_dir=data_dir), job.run_dir.resolve())


def _task_error(job: Job, err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(cause, FedVLRError):
        return str(cause)
    text = str(cause or err).strip()
    return f"{job.run_dir}: the run failed in its Ray task: {text.splitlines()[-1] if text else type(err).__name__}"
