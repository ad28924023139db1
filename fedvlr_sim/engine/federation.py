"""The federated training loop (SPEC.md sections 5-6), independent of where clients live.

`Federation` drives rounds against a `server` (publish / apply) and a `pool` of client shards
(train / ranks / reliance / router_weights / save / load). `LocalPool` keeps the shards in this
process (`--backend local`); the Ray backend passes actor-backed equivalents, so both run the
very same loop and engine code. The loop names no algorithm and does no side duty itself:
selection, early stopping, history, checkpoints, progress and metrics are callbacks
(engine/callbacks.py) that it calls at fixed points of each round.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedvlr_sim.config import LoopConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.client import ClientPopulation
from fedvlr_sim.engine.messages import RoundRecord, Upload
from fedvlr_sim.engine.metrics import best_cold_prior, expected_random_metrics, metrics_from_ranks, reference_ranks
from fedvlr_sim.engine.rng import Stream, uniform
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.errors import FedVLRError


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
        return self.data.item_counts

    def cold(self, split: str = "test") -> np.ndarray:
        """Users whose held-out item of `split` never occurs in train."""
        return self.item_train_counts[self.data.valid if split == "valid" else self.data.test] == 0

    def candidates(self, split: str, block_users: int = 4096) -> np.ndarray:
        """How many items each user's held-out item of `split` is ranked among."""
        rows = np.arange(self.n_users)
        return np.concatenate([(~self.data.excluded(chunk, self.n_items, split)).sum(dim=1).numpy()
                               for chunk in np.array_split(rows, max(1, self.n_users // block_users))])

    def split_metrics(self, test_ranks: np.ndarray, metrics=metrics_from_ranks, split: str = "test") -> dict:
        """Metrics over all users, users with a cold held-out item, and the rest; `metrics` maps
        per-user values (ranks by default) of a group to its metrics."""
        cold = self.cold(split)
        return {"all": metrics(test_ranks), "cold": metrics(test_ranks[cold]),
                "warm": metrics(test_ranks[~cold]), "n_cold": int(cold.sum())}

    def reference_metrics(self, seed: int = 0, split: str = "test") -> dict:
        """Metrics of the reference rankings on `split`, split like a model's: popularity, cold
        items first (random order among them, from `seed`), and the exact expectation of a
        uniformly random ranking."""
        ranks = reference_ranks(self.data, self.item_train_counts, seed, split)
        out = {name: self.split_metrics(r, split=split) for name, r in ranks.items()}
        out["random"] = self.split_metrics(self.candidates(split), expected_random_metrics, split)
        return out


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
            checkpoint.save_shard(folder, index, *shard.checkpoint_state())

    def load(self, folder: Path) -> None:
        for shard in self.shards:
            shard.load_state_dict(checkpoint.load_users_state(folder, shard.data.users))


class Federation:
    """Runs rounds and evaluates on valid; callbacks do everything else."""

    def __init__(self, loop: LoopConfig, seed: int, problem: Problem, server, pool: Pool, callbacks=()):
        self.loop, self.seed, self.problem, self.server, self.pool = loop, seed, problem, server, pool
        self.callbacks = list(callbacks)
        self.round = 0
        self.seconds = 0.0
        self.stop_reason = ""

    def callback(self, kind: type):
        """The first callback of class `kind`, or None."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current round, saying why."""
        self.stop_reason = reason

    def evaluate(self, glob: dict) -> tuple[dict, dict, np.ndarray]:
        """(valid metrics, test metrics split cold/warm, every user's test rank) of the current
        model; the test metrics carry `cold_prior`, the model plus a valid-tuned prior for
        never-trained items (a reference), when the data knows those items."""
        ranks = self.pool.ranks(glob)
        test = self.problem.split_metrics(ranks[:, 1, 0])
        if ranks.shape[2] > 1:
            test["cold_prior"] = best_cold_prior(ranks[:, 0, 1:], ranks[:, 1, 1:], self.loop.select_metric,
                                                 self.problem.split_metrics)
        return metrics_from_ranks(ranks[:, 0, 0]), test, ranks[:, 1, 0]

    def run_round(self, round_idx: int) -> RoundRecord:
        """One round of Algorithm 1 (no evaluation)."""
        start = time.perf_counter()
        users = sample_clients(self.seed, round_idx, self.problem.n_users, self.loop.sample_ratio)
        glob = self.server.publish()
        upload = self.pool.train(round_idx, users, glob)
        grad_norm = self.server.apply(upload)
        seconds = time.perf_counter() - start
        return RoundRecord(round=round_idx, loss=upload.loss_sum / max(upload.n_users, 1), clients=upload.n_users,
                           grad_norm=grad_norm, train_seconds=seconds,
                           updates_per_second=upload.n_users / max(seconds, 1e-9))

    def run(self) -> None:
        """Train until `rounds` or until a callback stops the run."""
        loop = self.loop
        while self.round < loop.rounds and not self.stop_reason:
            round_idx = self.round + 1
            started = time.perf_counter()
            record = self.run_round(round_idx)
            _check_finite(record)
            if round_idx % loop.eval_every == 0 or round_idx == loop.rounds:
                glob = self.server.publish()
                _check_scorable(round_idx, self.server.largest_published())
                record.valid, test, test_ranks = self.evaluate(glob)
                for c in self.callbacks:
                    c.on_evaluation(self, record, glob, test, test_ranks)
            self.round = round_idx
            self.seconds += time.perf_counter() - started
            record.seconds = self.seconds
            if round_idx == loop.rounds and not self.stop_reason:
                self.stop(f"reached --rounds {loop.rounds}")
            for c in self.callbacks:
                c.on_round_end(self, record)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The loop's own state and every callback's (JSON)."""
        return {"round": self.round, "seconds": self.seconds, "stop_reason": self.stop_reason,
                "data_fingerprint": self.problem.data.fingerprint(),
                "callbacks": {c.key: c.state_dict() for c in self.callbacks if c.key}}

    def save_checkpoint(self, run_dir: Path) -> None:
        tmp = checkpoint.begin(run_dir)
        self.pool.save(tmp)
        checkpoint.commit(run_dir, tmp, self.server.full_state(), self.state_dict())

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint folder: server, every client, the loop and its callbacks."""
        server_state, state = checkpoint.read(folder)
        state = _upgrade_loop_state(state)
        fingerprint = self.problem.data.fingerprint()
        if state.get("data_fingerprint", fingerprint) != fingerprint:
            raise FedVLRError(f"--resume: {folder} was trained on other data than dataset {self.problem.name!r} "
                              "holds now (re-prepared or changed?); resume needs the same prepared dataset")
        self.server.load_full_state(server_state)
        self.pool.load(folder)
        self.round, self.seconds = int(state["round"]), float(state["seconds"])
        self.stop_reason = state.get("stop_reason", "") if self.round >= self.loop.rounds else ""
        for c in self.callbacks:
            if c.key in state["callbacks"]:
                c.load_state_dict(state["callbacks"][c.key])


DIVERGED_ADVICE = ("lower --lr or --server-lr (or --dp-noise, --weight-decay or a regulariser's weight); the metrics "
                   "and the last checkpoint of the rounds before it are kept")
# a float32 score sums w products of two such entries: past this they overflow (3.4e38)
SCORABLE = 1e18


def _check_finite(record: RoundRecord) -> None:
    """A diverged round ends the run: nothing after it could be trusted."""
    if not (math.isfinite(record.loss) and math.isfinite(record.grad_norm)):
        raise FedVLRError(f"round {record.round} diverged (training loss {record.loss}, gradient norm "
                          f"{record.grad_norm}): {DIVERGED_ADVICE}")


def _check_scorable(round_idx: int, largest: float) -> None:
    """The round's server step diverged if the globals published after it (`largest`, their
    largest magnitude) are not finite or too large to score: caught before evaluation, since the
    last round has no next loss to show it."""
    if not largest <= SCORABLE:   # NaN too
        raise FedVLRError(f"round {round_idx} diverged (the server's global parameters reach {largest:.3g} after its "
                          f"step): {DIVERGED_ADVICE}")


def _upgrade_loop_state(state: dict) -> dict:
    """Read the loop state of checkpoints written before callbacks held their own state."""
    if "callbacks" in state:
        return state
    best = {"round": state["best_round"], "best": state["best"], "router_weights": state["router_weights"]}
    return {"round": state["round"], "seconds": state["seconds"],
            "callbacks": {"best": best, "history": {"records": state["history"]}}}
