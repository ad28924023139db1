"""What an experiment of the paper is, as data: its cells (the runs that fill one table cell),
the choices a command line makes about them, the axes of a grid of cells, and how its table reads."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Choices:
    """What `fedvlr-sim reproduce` lets a user choose about the cells themselves."""

    backbone: str = "fcf"
    dp_clip: float = 1.0
    dp_noise: float = 0.1


@dataclass(frozen=True)
class Cell:
    """One table cell: the row and column it fills and the run options that make it; `tuned`
    cells choose the client lr (and the backbone's own grid) on valid."""

    row: str
    column: str
    options: dict = field(hash=False)
    tuned: bool = False

    @property
    def slug(self) -> str:
        """A folder name for the cell."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.row}-{self.column}").strip("-").lower()


@dataclass(frozen=True)
class GridAxis:
    """One run option varied over a grid of cells: the option, how rows or columns and the
    figure name it, and its values in order."""

    option: str
    label: str
    values: tuple[float, ...]

    def name(self, value: float) -> str:
        """A row or column label, e.g. `lr 0.01`."""
        return f"{self.label} {value:g}"


@dataclass(frozen=True)
class Experiment:
    """A table (and figure) of the paper: `cells(choices)` lists its cells in table order;
    `paired` names two columns compared row by row with a paired test; `figure(rows, path)`
    draws it from the result rows; `measured` experiments are measured, not trained."""

    name: str
    title: str
    cells: Callable[[Choices], list[Cell]]
    metrics: tuple[str, ...] = ("hr@50", "ndcg@50")
    paired: tuple[str, str] | None = None
    figure: Callable | None = None
    measured: bool = False

    def reads(self, choices: Choices, **other) -> bool:
        """Whether the cells change when `choices` take the `other` values (so a command line
        that reproduces this experiment must name them)."""
        return self.cells(choices) != self.cells(dataclasses.replace(choices, **other))
