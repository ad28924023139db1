"""`fedvlr-sim reproduce NAME`: one of the paper's experiments on any prepared dataset.

An experiment is data (its cells, `catalogue.py`); one planner turns cells, datasets and seeds
into run folders (`plan.py`; tuned cells choose their hyper-parameters on valid with seed 0
only, in stages, and rerun the chosen point on the other seeds), one executor brings them to a
finished state as their inputs come in (a tuning stage needs the outcomes of the one before),
resuming what an interruption left (`jobs.py`), and one writer turns the selected runs into
OUT/NAME.parquet, OUT/NAME.md and, where the paper has a figure, OUT/NAME.png (`results.py`,
`tables.py`, `figures.py`). Table 3 is measured, not trained (`sizes.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedvlr_sim.config import RunConfig, create_folder, parse_settings, resolve
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.catalogue import EXPERIMENTS
from fedvlr_sim.reproduce.experiment import Choices

# cells train in process (see jobs.py); every other option has the run defaults (docs/defaults.md)
DEFAULTS = {"backend": "local"}
SETTINGS_SHOWN = ("dim", "lr", "server_lr", "server_optimizer", "local_epochs", "neg_ratio", "neg_popularity",
                  "batch_size", "rounds",
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
              report: Callable[[str], None] = print, train: bool = True) -> list[Path]:
    """Run experiment `name` (finished runs kept) and write its files into `out`; return them.
    With `train=False` nothing is trained: the files hold the replicates finished so far."""
    from fedvlr_sim.reproduce.plan import plan as plan_runs
    from fedvlr_sim.reproduce.results import result_rows, write_parquet
    from fedvlr_sim.reproduce.tables import result_markdown, write_text

    experiment = experiment_named(name)
    command = command or f"fedvlr-sim reproduce {name}"
    create_folder("--out", out)
    if experiment.measured:
        return _measured(experiment, datasets, base, choices, out, command, report)
    plan = plan_runs(experiment, datasets, seeds, base, choices, out)
    outcomes = _run(plan, max_parallel, address, report) if train else _finished(plan, report)
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
    """Every run's outcome by run folder, reporting each as it finishes. A run joins the pool
    once the outcomes it depends on are in (`Plan.next_jobs`: a tuning stage needs the one
    before, another seed the point seed 0 chose); of the ready runs the one earliest in table
    order starts first, so that cells finish (every seed) one after another rather than all at
    the end, at most `max_parallel` at once."""
    from fedvlr_sim.reproduce.jobs import run_pool

    tuned = any(c.tuned for c in plan.cells)
    most = plan.most_runs
    report(f"{plan.experiment.name}: {len(plan.replicates)} cell-seed replicates on {', '.join(plan.datasets)}, "
           f"{most} runs" + (" at most (hyper-parameters tuned on seed 0, in stages)" if tuned else ""))
    done = [0]

    def on_done(job, outcome, kept):
        done[0] += 1
        what = ("diverged" if "failed" in outcome
                else f"valid {plan.metric} {outcome['valid'].get(plan.metric, float('nan')):.4f}")
        report(f"[{done[0]}/{most}] {job.run_dir}: {what}{' (finished earlier)' if kept else ''}")

    return run_pool(plan.next_jobs, max_parallel, address, on_done, order=plan.order)


def _finished(plan, report: Callable[[str], None]) -> dict:
    """The outcomes of the runs already finished, following the phases as far as they go."""
    from fedvlr_sim.reproduce.jobs import finished, outcome

    outcomes: dict = {}
    while jobs := plan.next_jobs(outcomes):
        outcomes |= {job.run_dir: outcome(job.run_dir) for job in jobs if finished(job.run_dir)}
    complete = sum(r.complete and not r.waiting(outcomes) for r in plan.replicates)
    report(f"{plan.experiment.name}: {len(outcomes)} runs finished, {complete} of {len(plan.replicates)} cell-seed "
           "replicates complete (nothing trained)")
    return outcomes


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
