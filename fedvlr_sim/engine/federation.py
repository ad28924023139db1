"""The federated training loop (SPEC.md sections 5-6), independent of where clients live.

`Federation` drives rounds against a `server` (publish / apply) and a `pool` of client shards
(train / ranks / reliance / router_weights / save / load). `LocalPool` keeps the shards in this
process (`--backend local`); the Ray backend passes actor-backed equivalents, so both run the
very same loop and engine code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.client import ClientPopulation, Upload
from fedvlr_sim.engine.metrics import metrics_from_ranks, reference_scores, spearman
from fedvlr_sim.engine.rng import Stream, uniform
from fedvlr_sim.engine.userdata import UserData

MODALITIES = ("vision", "text", "id")


@dataclass
class Problem:
    """What the loop needs to know about the data: all users' items and planted truths."""

    name: str
    n_users: int
    n_items: int
    data: UserData
    planted_weights: np.ndarray | None = None

    @property
    def item_train_counts(self) -> np.ndarray:
        return np.bincount(self.data.train_items, minlength=self.n_items)

    @property
    def cold_test(self) -> np.ndarray:
        """Users whose test item never occurs in train."""
        return self.item_train_counts[self.data.test] == 0


def sample_clients(seed: int, round_idx: int, n_users: int, ratio: float) -> np.ndarray:
    """ceil(ratio * n) users drawn uniformly without replacement, keyed by (seed, round)."""
    if ratio >= 1.0:
        return np.arange(n_users)
    keys = uniform(seed, Stream.SAMPLE_CLIENTS, round_idx, np.arange(n_users), [0])[:, 0]
    n_sampled = math.ceil(round(ratio * n_users, 9))   # 0.07 * 100 is 7.000000000000001
    return np.sort(np.argsort(keys, kind="stable")[:n_sampled])


def shard_users(n_users: int, n_shards: int) -> list[np.ndarray]:
    """Contiguous, balanced slices of user ids, one per shard."""
    return [s for s in np.array_split(np.arange(n_users), max(1, min(n_shards, n_users))) if len(s)]


def gather_by_user(n_users: int, per_shard: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Assemble (user ids, values) pairs from several shards into one array indexed by user."""
    users, values = zip(*per_shard)
    out = np.zeros((n_users, *values[0].shape[1:]), dtype=values[0].dtype)
    for u, v in zip(users, values):
        out[u] = v
    return out


class Pool(Protocol):
    def train(self, round_idx: int, users: np.ndarray, glob: dict) -> Upload: ...
    def ranks(self, glob: dict) -> np.ndarray: ...
    def reliance(self, glob: dict, altered: list[dict]) -> np.ndarray: ...
    def router_weights(self, glob: dict) -> np.ndarray: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path) -> None: ...


class LocalPool:
    """Client shards held in this process."""

    def __init__(self, shards: list[ClientPopulation], n_users: int):
        self.shards = shards
        self.n_users = n_users

    def train(self, round_idx, users, glob) -> Upload:
        parts = [s.train(round_idx, np.intersect1d(users, s.data.users), glob) for s in self.shards]
        return sum(parts[1:], parts[0])

    def ranks(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, [s.ranks(glob) for s in self.shards])

    def reliance(self, glob, altered) -> np.ndarray:
        return gather_by_user(self.n_users, [s.reliance(glob, altered) for s in self.shards])

    def router_weights(self, glob) -> np.ndarray:
        return gather_by_user(self.n_users, [s.router_weights(glob) for s in self.shards])

    def save(self, folder: Path) -> None:
        for index, shard in enumerate(self.shards):
            checkpoint.save_shard(folder, index, shard.data.users, shard.state_dict())

    def load(self, folder: Path) -> None:
        for shard in self.shards:
            shard.load_state_dict(checkpoint.load_users_state(folder, shard.data.users))


class Federation:
    """Runs rounds, evaluates on valid, selects on valid, checkpoints, and summarises."""

    def __init__(self, cfg: RunConfig, problem: Problem, server, pool: Pool, run_dir: Path | None = None,
                 on_round: Callable[[dict], None] | None = None):
        self.cfg, self.problem, self.server, self.pool = cfg, problem, server, pool
        self.run_dir = Path(run_dir) if run_dir else None
        self.on_round = on_round or (lambda record: None)
        self.state = {"round": 0, "best_round": 0, "best": None, "history": [], "seconds": 0.0,
                      "router_weights": None}
        self.baselines = self._reference_metrics()

    # ------------------------------------------------------------ evaluation
    def _reference_metrics(self) -> dict:
        data, out = self.problem.data, {}
        rows = np.arange(self.problem.n_users)
        for name, scores in reference_scores(self.problem.item_train_counts).items():
            ranks = np.zeros(len(rows), dtype=np.int64)
            for chunk in np.array_split(rows, max(1, len(rows) * self.problem.n_items // 2**24)):
                table = torch.from_numpy(scores).expand(len(chunk), -1)
                ranks[chunk] = data.rank_targets(chunk, table, "test")
            out[name] = self._split_metrics(ranks)
        return out

    def _split_metrics(self, ranks: np.ndarray) -> dict:
        cold = self.problem.cold_test
        return {"all": metrics_from_ranks(ranks), "cold": metrics_from_ranks(ranks[cold]),
                "warm": metrics_from_ranks(ranks[~cold]), "n_cold": int(cold.sum())}

    def evaluate(self, glob: dict) -> tuple[dict, dict]:
        """(valid metrics, test metrics split cold/warm) of the current model."""
        ranks = self.pool.ranks(glob)
        return metrics_from_ranks(ranks[:, 0]), self._split_metrics(ranks[:, 1])

    def modality_spearman(self, glob: dict) -> dict | None:
        """Per modality, Spearman across users between measured reliance and planted weight."""
        planted = self.problem.planted_weights
        if planted is None or not self.cfg.uses_features:
            return None
        altered = [self.server.altered_globals(m) for m in MODALITIES]
        reliance = self.pool.reliance(glob, altered)
        out = {m: spearman(reliance[:, j], planted[:, j]) for j, m in enumerate(MODALITIES)}
        finite = [v for v in out.values() if np.isfinite(v)]
        out["mean"] = float(np.mean(finite)) if finite else float("nan")
        return out

    # ------------------------------------------------------------ the loop
    def run_round(self, round_idx: int) -> dict:
        """One round of Algorithm 1; returns its record (loss, timings)."""
        cfg = self.cfg
        start = time.perf_counter()
        users = sample_clients(cfg.seed, round_idx, self.problem.n_users, cfg.sample_ratio)
        glob = self.server.publish()
        upload = self.pool.train(round_idx, users, glob)
        grad_norm = self.server.apply(upload)
        seconds = time.perf_counter() - start
        return {"round": round_idx, "loss": upload.loss_sum / max(upload.n_users, 1), "clients": upload.n_users,
                "grad_norm": grad_norm, "train_seconds": seconds,
                "updates_per_second": upload.n_users / max(seconds, 1e-9)}

    def run(self) -> dict:
        """Train until `rounds` or early stopping; return the summary."""
        cfg, state = self.cfg, self.state
        while state["round"] < cfg.rounds:
            round_idx = state["round"] + 1
            started = time.perf_counter()
            record = self.run_round(round_idx)
            if round_idx % cfg.eval_every == 0 or round_idx == cfg.rounds:
                self._evaluate_round(record)
            state["round"] = round_idx
            state["seconds"] += time.perf_counter() - started
            record["seconds"] = state["seconds"]
            state["history"].append(record)
            self.on_round(record)
            stop = round_idx - state["best_round"] >= cfg.patience and state["best"] is not None
            if self.run_dir and cfg.checkpoint_every and (round_idx % cfg.checkpoint_every == 0 or stop):
                self.save_checkpoint()
            if stop:
                break
        return self.summary()

    def _evaluate_round(self, record: dict) -> None:
        glob = self.server.publish()
        valid, test = self.evaluate(glob)
        record.update({f"valid_{k}": v for k, v in valid.items()})
        best = self.state["best"]
        if best is None or valid[self.cfg.select_metric] > best["valid"][self.cfg.select_metric]:
            self.state["best_round"] = record["round"]
            self.state["best"] = {"valid": valid, "test": test, "modality_spearman": self.modality_spearman(glob)}
            if self.cfg.uses_router:
                self.state["router_weights"] = self.pool.router_weights(glob).tolist()

    def summary(self) -> dict:
        best = self.state["best"] or {"valid": {}, "test": {"all": {}, "cold": {}, "warm": {}, "n_cold": 0}}
        cfg = self.cfg
        out = {
            "dataset": self.problem.name, "backbone": cfg.backbone, "variant": cfg.variant,
            "best_round": self.state["best_round"], "rounds_run": self.state["round"],
            "selected_on": f"valid {cfg.select_metric}",
            "valid": best["valid"], "test": best["test"]["all"], "test_cold": best["test"]["cold"],
            "test_warm": best["test"]["warm"], "n_users": self.problem.n_users,
            "n_cold_test_users": best["test"]["n_cold"],
            "baselines": {k: v["all"] for k, v in self.baselines.items()},
            "baselines_cold": {k: v["cold"] for k, v in self.baselines.items()},
            "baselines_warm": {k: v["warm"] for k, v in self.baselines.items()},
            "seconds": self.state["seconds"], "config": cfg.to_dict(),
        }
        if best.get("modality_spearman") is not None:
            out["modality_spearman"] = best["modality_spearman"]
        return out

    def outcome(self) -> dict:
        """Everything a results folder needs: the summary, per-round records, router weights."""
        return {"summary": self.summary(), "history": self.state["history"],
                "router_weights": self.state["router_weights"]}

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        tmp = checkpoint.begin(self.run_dir)
        self.pool.save(tmp)
        checkpoint.commit(self.run_dir, tmp, self.server.full_state(), self.state)

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint folder: server, every client, and the loop's state."""
        server_state, loop_state = checkpoint.read(folder)
        self.server.load_full_state(server_state)
        self.pool.load(folder)
        self.state = loop_state
