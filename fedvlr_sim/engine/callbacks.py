"""The loop's side duties, one callback each: best-round selection, early stopping, history,
checkpoints, progress and TensorBoard scalars. `Federation.run` calls `on_evaluation` after a
round is evaluated on valid and `on_round_end` after every round, in the order the callbacks were
given; a callback with a `key` keeps JSON state that checkpoints save and restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.engine.messages import RoundRecord
from fedvlr_sim.engine.metrics import spearman
from fedvlr_sim.errors import FedVLRError


class Callback:
    """Does nothing; subclasses override the events they need."""

    key = ""   # the name of its state in checkpoints ("" = no state)

    def on_evaluation(self, fed, record: RoundRecord, glob: dict, test: dict, test_ranks: np.ndarray) -> None:
        pass

    def on_round_end(self, fed, record: RoundRecord) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BestRound(Callback):
    """Keeps the round with the best valid metric: its valid and test metrics, and (when asked)
    the users' router weights and modality reliance (with planted weights, its agreement)."""

    key = "best"

    def __init__(self, select_metric: str, measure_reliance: bool = False, keep_router_weights: bool = False):
        self.select_metric = select_metric
        self.measure_reliance, self.keep_router_weights = measure_reliance, keep_router_weights
        self.round, self.best, self.router_weights, self.reliance = 0, None, None, None
        self.test_ranks = None   # every user's test rank at the best round (for paired tests over users)

    def on_evaluation(self, fed, record, glob, test, test_ranks):
        value = record.valid[self.select_metric]
        if self.best is not None and not value > self.best["valid"][self.select_metric]:
            return
        self.round = record.round
        self.best = {"valid": record.valid, "test": test}
        self.test_ranks = test_ranks.tolist()
        if self.keep_router_weights:
            self.router_weights = fed.pool.router_weights(glob).tolist()
        if self.measure_reliance:
            shares = reliance_shares(fed.pool.reliance(glob, [fed.server.altered_globals(m) for m in MODALITIES]))
            self.reliance = shares.tolist()
            self.best["modality_reliance"] = dict(zip(MODALITIES, shares.mean(axis=0).tolist()))
            if fed.problem.planted_weights is not None:
                self.best["modality_spearman"] = modality_spearman(shares, fed.problem.planted_weights)

    def state_dict(self):
        return {"round": self.round, "best": self.best, "router_weights": self.router_weights,
                "reliance": self.reliance, "test_ranks": self.test_ranks}

    def load_state_dict(self, state):
        self.round, self.best, self.router_weights = state["round"], state["best"], state["router_weights"]
        self.reliance, self.test_ranks = state.get("reliance"), state.get("test_ranks")


def reliance_shares(reliance: np.ndarray) -> np.ndarray:
    """Each user's reliance on each modality as a share of the user's total (equal shares for a
    user whose scores do not move at all), so a user's overall score scale cancels out."""
    total = reliance.sum(axis=1, keepdims=True)
    return np.where(total > 0, reliance / np.where(total > 0, total, 1.0), 1.0 / reliance.shape[1])


def modality_spearman(shares: np.ndarray, planted: np.ndarray) -> dict:
    """Per modality, Spearman across users between measured reliance share and planted weight."""
    out = {m: spearman(shares[:, j], planted[:, j]) for j, m in enumerate(MODALITIES)}
    finite = [v for v in out.values() if np.isfinite(v)]
    out["mean"] = float(np.mean(finite)) if finite else float("nan")
    return out


class EarlyStopping(Callback):
    """Stops the run when the best valid round is `patience` rounds old, counting only rounds
    after `min_rounds` (some backbones sit on a plateau before they learn)."""

    def __init__(self, patience: int, min_rounds: int = 0):
        self.patience, self.min_rounds = patience, min_rounds

    def on_round_end(self, fed, record):
        best = fed.callback(BestRound)
        waited = fed.round - max(best.round, self.min_rounds)
        if best.best is not None and waited >= self.patience and not fed.stop_reason:
            fed.stop(f"early stopping: valid {best.select_metric} has not improved for {self.patience} rounds "
                     f"since round {best.round}" + (f" (counted after round {self.min_rounds})" if self.min_rounds else ""))


class History(Callback):
    """Every round's record; with `metrics_file`, also written as parquet after each round."""

    key = "history"

    def __init__(self, metrics_file: Path | None = None):
        self.records: list[RoundRecord] = []
        self.metrics_file = metrics_file

    def on_round_end(self, fed, record):
        self.records.append(record)
        if self.metrics_file is not None:
            import polars as pl

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


class TensorBoardWriter(Callback):
    """Writes each round's loss, client updates per second and valid metrics (when evaluated) as
    TensorBoard scalars to `<run_dir>/tensorboard/`, flushed every round."""

    def __init__(self, run_dir: Path):
        self.writer = summary_writer(Path(run_dir) / "tensorboard")

    def on_round_end(self, fed, record):
        scalars = {"train/loss": record.loss, "train/client_updates_per_second": record.updates_per_second}
        scalars |= {f"valid/{name}": value for name, value in (record.valid or {}).items()}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record.round)
        self.writer.flush()


def summary_writer(folder: Path):
    """torch's TensorBoard SummaryWriter on `folder`; a clear error without `tensorboard`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FedVLRError("--tensorboard needs the `tensorboard` package, which is not installed: "
                          "pip install tensorboard") from None
    return SummaryWriter(log_dir=str(folder))
