"""A live terminal progress bar for a run: round, loss, client updates per second, valid HR@50,
and with DP noise the epsilon spent so far."""

from __future__ import annotations

import contextlib
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedvlr_sim.engine.messages import RoundRecord


@contextlib.contextmanager
def round_progress(total_rounds: int, label: str, start_round: int = 0,
                   epsilon_after: Callable[[int], float] | None = None):
    """Yield (on_round, on_status): on_round advances the bar by one round record, on_status
    says what the run is doing before its first round (starting Ray, placing actors);
    `epsilon_after` (accounting.epsilon_tracker) gives the epsilon spent after a round."""
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=total_rounds, completed=start_round, status="starting")
        best = {"hr": None}

        def on_status(text: str) -> None:
            bar.update(task, status=text)

        def on_round(record: RoundRecord) -> None:
            if record.valid:
                best["hr"] = record.valid["hr@50"]
            status = f"loss {record.loss:.4f}  {record.updates_per_second:.0f} clients/s"
            if best["hr"] is not None:
                status += f"  valid HR@50 {best['hr']:.4f}"
            if epsilon_after is not None:
                status += f"  epsilon {epsilon_after(record.round):.3g}"
            bar.update(task, completed=record.round, status=status)
            if not console.is_terminal:
                console.print(f"round {record.round}/{total_rounds}  {status}")

        yield on_round, on_status
