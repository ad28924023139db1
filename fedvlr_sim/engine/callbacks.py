"""The loop's side duties, one callback each: best-round selection, early stopping, history,
checkpoints and progress. `Federation.run` calls `on_evaluation` after a round is evaluated on
valid and `on_round_end` after every round, in the order the callbacks were given; a callback
with a `key` keeps JSON state that checkpoints save and restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.engine.messages import RoundRecord
from fedvlr_sim.engine.metrics import spearman


class Callback:
    """Does nothing; subclasses override the events they need."""

    key = ""   # the name of its state in checkpoints ("" = no state)

    def on_evaluation(self, fed, record: RoundRecord, glob: dict, test: dict) -> None:
        pass

    def on_round_end(self, fed, record: RoundRecord) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BestRound(Callback):
    """Keeps the round with the best valid metric: its valid and test metrics, and (when asked)
    the users' router weights and the modality reliance against planted weights."""

    key = "best"

    def __init__(self, select_metric: str, measure_reliance: bool = False, keep_router_weights: bool = False):
        self.select_metric = select_metric
        self.measure_reliance, self.keep_router_weights = measure_reliance, keep_router_weights
        self.round, self.best, self.router_weights = 0, None, None

    def on_evaluation(self, fed, record, glob, test):
        value = record.valid[self.select_metric]
        if self.best is not None and not value > self.best["valid"][self.select_metric]:
            return
        self.round = record.round
        self.best = {"valid": record.valid, "test": test, "modality_spearman": self._modality_spearman(fed, glob)}
        if self.keep_router_weights:
            self.router_weights = fed.pool.router_weights(glob).tolist()

    def _modality_spearman(self, fed, glob: dict) -> dict | None:
        """Per modality, Spearman across users between measured reliance and planted weight."""
        planted = fed.problem.planted_weights
        if planted is None or not self.measure_reliance:
            return None
        reliance = fed.pool.reliance(glob, [fed.server.altered_globals(m) for m in MODALITIES])
        out = {m: spearman(reliance[:, j], planted[:, j]) for j, m in enumerate(MODALITIES)}
        finite = [v for v in out.values() if np.isfinite(v)]
        out["mean"] = float(np.mean(finite)) if finite else float("nan")
        return out

    def state_dict(self):
        return {"round": self.round, "best": self.best, "router_weights": self.router_weights}

    def load_state_dict(self, state):
        self.round, self.best, self.router_weights = state["round"], state["best"], state["router_weights"]


class EarlyStopping(Callback):
    """Stops the run when the best valid round is `patience` rounds old."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_round_end(self, fed, record):
        best = fed.callback(BestRound)
        if best.best is not None and fed.round - best.round >= self.patience and not fed.stop_reason:
            fed.stop(f"early stopping: valid {best.select_metric} has not improved for {self.patience} rounds "
                     f"since round {best.round}")


class History(Callback):
    """Every round's record; with `metrics_file`, also written as parquet after each round."""

    key = "history"

    def __init__(self, metrics_file: Path | None = None):
        self.records: list[RoundRecord] = []
        self.metrics_file = metrics_file

    def on_round_end(self, fed, record):
        self.records.append(record)
        if self.metrics_file is not None:
            tmp = self.metrics_file.with_name(self.metrics_file.name + ".tmp")
            pl.DataFrame([r.row() for r in self.records]).write_parquet(tmp)
            tmp.replace(self.metrics_file)

    def state_dict(self):
        return {"records": [r.row() for r in self.records]}

    def load_state_dict(self, state):
        self.records = [RoundRecord.from_row(row) for row in state["records"]]


class Checkpointing(Callback):
    """Saves a checkpoint every `every` rounds and when the run ends."""

    def __init__(self, run_dir: Path, every: int):
        self.run_dir, self.every = run_dir, every

    def on_round_end(self, fed, record):
        if fed.round % self.every == 0 or fed.stop_reason:
            fed.save_checkpoint(self.run_dir)


class OnRound(Callback):
    """Hands each finished round's record to a function (a progress display)."""

    def __init__(self, report: Callable[[RoundRecord], None]):
        self.report = report

    def on_round_end(self, fed, record):
        self.report(record)
