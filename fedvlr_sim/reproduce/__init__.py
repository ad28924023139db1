"""`fedvlr-sim reproduce NAME`: one of the paper's experiments on any prepared dataset.

An experiment is data (its cells, `catalogue.py`); one planner turns cells, datasets and seeds
into run folders (`plan.py`), one executor brings them to a finished state, resuming what an
interruption left (`jobs.py`), and one writer turns the selected runs into OUT/NAME.parquet,
OUT/NAME.md and, where the paper has a figure, OUT/NAME.png (`results.py`, `tables.py`,
`figures.py`). Table 3 is measured, not trained (`sizes.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig, parse_settings, resolve
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.catalogue import EXPERIMENTS
from fedvlr_sim.reproduce.experiment import Choices

# cells train in process (see jobs.py); every other option has the run defaults (docs/defaults.md)
DEFAULTS = {"backend": "local"}
SETTINGS_SHOWN = ("dim", "lr", "server_lr", "server_optimizer", "local_epochs", "neg_ratio", "batch_size", "rounds",
                  "patience", "min_rounds", "sample_ratio", "select_metric")


def base_config(settings: list[str], options: dict) -> RunConfig:
    """The options every cell shares: DEFAULTS < --set assignments < the given command-line options."""
    return resolve([(None, DEFAULTS), *parse_settings(settings),
                    (None, {k: v for k, v in options.items() if v is not None})])


def experiment_named(name: str):
    if name not in EXPERIMENTS:
        raise FedVLRError(f"unknown experiment {name!r} (expected one of {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]


def reproduce(name: str, datasets: list[str], seeds: int, out: Path, base: RunConfig, choices: Choices = Choices(),
              max_parallel: int = 1, address: str = "", command: str = "",
              report: Callable[[str], None] = print) -> list[Path]:
    """Run experiment `name` (finished runs kept) and write its files into `out`; return them."""
    from fedvlr_sim.reproduce.plan import plan as plan_runs
    from fedvlr_sim.reproduce.results import result_rows, write_parquet
    from fedvlr_sim.reproduce.tables import result_markdown, write_text

    experiment = experiment_named(name)
    command = command or f"fedvlr-sim reproduce {name}"
    out.mkdir(parents=True, exist_ok=True)
    if experiment.measured:
        return _measured(experiment, datasets, base, choices, out, command, report)
    plan = plan_runs(experiment, datasets, seeds, base, choices, out)
    outcomes = _run(plan, max_parallel, address, report)
    rows = result_rows(plan, outcomes, plan.metric)
    written = [out / f"{name}.parquet", out / f"{name}.md"]
    write_parquet(written[0], rows)
    settings = {k: v for k, v in base.flat().items() if k in SETTINGS_SHOWN} | {"seeds": seeds}
    write_text(written[1], result_markdown(plan, rows, command, settings, plan.metric))
    if experiment.figure and rows:
        written.append(out / f"{name}.png")
        experiment.figure(rows, written[-1])
    return written


def _run(plan, max_parallel: int, address: str, report: Callable[[str], None]) -> dict:
    """Every job's outcome by run folder, reporting each as it finishes."""
    from fedvlr_sim.reproduce.jobs import run_jobs

    jobs = plan.jobs
    report(f"{plan.experiment.name}: {len(jobs)} runs ({len(plan.replicates)} cell-seed replicates) on "
           f"{', '.join(plan.datasets)}")
    done = [0]

    def on_done(job, outcome, kept):
        done[0] += 1
        what = ("diverged" if "failed" in outcome
                else f"valid {plan.metric} {outcome['valid'].get(plan.metric, float('nan')):.4f}")
        report(f"[{done[0]}/{len(jobs)}] {job.run_dir}: {what}{' (finished earlier)' if kept else ''}")

    results = run_jobs(jobs, max_parallel, address, on_done)
    return {job.run_dir: result for job, result in zip(jobs, results)}


def _measured(experiment, datasets, base, choices, out, command, report) -> list[Path]:
    """Table 3: measured on each dataset's shape, printed and written."""
    from fedvlr_sim.reproduce.results import write_parquet
    from fedvlr_sim.reproduce.sizes import size_markdown, size_rows
    from fedvlr_sim.reproduce.tables import write_text

    cells = experiment.cells(choices)
    rows, skipped = size_rows(cells, list(dict.fromkeys(datasets)), base)
    if not rows:
        raise FedVLRError(f"reproduce {experiment.name}: no cell can be measured on {', '.join(datasets)}: "
                          "no item features")
    text = size_markdown(rows, skipped, cells, command)
    written = [out / f"{experiment.name}.parquet", out / f"{experiment.name}.md"]
    write_parquet(written[0], rows)
    write_text(written[1], text)
    report(text)
    return written
