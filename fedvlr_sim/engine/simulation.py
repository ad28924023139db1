"""Assemble a federation from a dataset and a config: the problem, the server, the client
populations, the loop with its standard callbacks, and the run summary. Both backends use it:
`--backend local` holds server and populations in this process, the Ray backend in actors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.accounting import dp_report
from fedvlr_sim.engine.callbacks import BestRound, Checkpointing, EarlyStopping, History, OnRound
from fedvlr_sim.engine.client import ClientPopulation, table_dtype
from fedvlr_sim.engine.federation import Federation, LocalPool, Problem, shard_users
from fedvlr_sim.engine.messages import RunSummary
from fedvlr_sim.engine.server import Server
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.errors import FedVLRError

METRICS_FILE = "metrics.parquet"
# a share of valid or test items never seen in train from which uniform negatives earn a warning
# (Beauty 7.9% of valid and 27.3% of test items, KU 22.5% and 43.1%, MovieLens none)
NEW_ITEMS_NOTABLE = 0.05


def problem_of(dataset) -> Problem:
    """The engine's view of a loaded dataset (see fedvlr_sim.datasets.Dataset)."""
    data = UserData.from_interactions(dataset.n_users, dataset.user, dataset.item, dataset.split, dataset.n_items)
    saturated = np.flatnonzero(data.train_counts >= dataset.n_items)
    if len(saturated):
        raise FedVLRError(f"dataset {dataset.name!r}: user {saturated[0]} has every item in train, "
                          "so no negative can be sampled (expected fewer train items than items)")
    return Problem(dataset.name, dataset.n_users, dataset.n_items, data, dataset.planted_weights)


def features_of(dataset, cfg: RunConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The vision and text features a variant needs, or a clear error when they are missing."""
    if not cfg.model.variant_def.uses_features:
        return None, None
    missing = [part for part in ("vision", "text") if getattr(dataset, part) is None]
    if len(missing) == 1:
        (kept,) = {"vision", "text"} - set(missing)
        raise FedVLRError(f"--variant {cfg.model.variant} needs item features but dataset {dataset.name!r} has no "
                          f"features/{missing[0]}.npy beside features/{kept}.npy: restore it, or embed both again "
                          "with `fedvlr-sim features`")
    if missing:
        raise FedVLRError(
            f"--variant {cfg.model.variant} needs item features but dataset {dataset.name!r} has none: "
            f"run `fedvlr-sim features --dataset {dataset.name}` first (or use --variant none)")
    return torch.from_numpy(np.asarray(dataset.vision, np.float32)), torch.from_numpy(np.asarray(dataset.text, np.float32))


def make_server(cfg: RunConfig, dataset, device: str = "cpu") -> Server:
    vision, text = features_of(dataset, cfg)
    return Server(cfg.model, cfg.server, cfg.seed, dataset.n_items, vision, text, device=device)


def make_population(cfg: RunConfig, problem: Problem, users: np.ndarray) -> ClientPopulation:
    """The client population of `users` (a contiguous slice of the federation's users), on the
    configured shard device."""
    if cfg.launch.shard_device == "cuda" and not torch.cuda.is_available():
        raise FedVLRError("--shard-device cuda: torch sees no CUDA device here")
    return ClientPopulation(cfg.model, cfg.client, cfg.seed, problem.data.subset(users), problem.n_items,
                            problem.n_users, cfg.launch.shard_device)


def local_pool(cfg: RunConfig, problem: Problem, n_shards: int) -> LocalPool:
    """In-process client shards, each a contiguous slice of users."""
    return LocalPool([make_population(cfg, problem, users) for users in shard_users(problem.n_users, n_shards)],
                     problem.n_users)


def table_storage(cfg: RunConfig, dataset) -> str | None:
    """A log line on how personal item tables are stored, for backbones that have them."""
    if not cfg.model.backbone_def.has_item_table:
        return None
    width = cfg.model.variant_def.width(cfg.model.dim)
    dtype = table_dtype(cfg.client.table_dtype, dataset.n_users, dataset.n_items, width)
    size = dataset.n_users * dataset.n_items * width * dtype.itemsize / 1024**3
    return (f"{cfg.model.backbone} personal item tables: {dataset.n_users} users x {dataset.n_items} items x {width} "
            f"stored as {str(dtype).removeprefix('torch.')} ({size:.2f} GiB, computed in float32)")


def build_federation(cfg: RunConfig, problem: Problem, server, pool, run_dir: Path | None = None,
                     on_round: Callable | None = None, extra_callbacks=()) -> Federation:
    """The loop with its standard callbacks: best round, history (written to the run folder as it
    goes), progress, early stopping, checkpoints (with a run folder), then `extra_callbacks`."""
    variant = cfg.model.variant_def
    callbacks = [BestRound(cfg.loop.select_metric, measure_reliance=variant.uses_features,
                           keep_router_weights=variant.uses_router),
                 History(Path(run_dir) / METRICS_FILE if run_dir else None)]
    if on_round is not None:
        callbacks.append(OnRound(on_round))
    callbacks.append(EarlyStopping(cfg.loop.patience, cfg.loop.min_rounds))
    if run_dir and cfg.loop.checkpoint_every:
        callbacks.append(Checkpointing(Path(run_dir), cfg.loop.checkpoint_every))
    return Federation(cfg.loop, cfg.seed, problem, server, pool, [*callbacks, *extra_callbacks])


def local_federation(cfg: RunConfig, dataset, run_dir: Path | None = None, on_round: Callable | None = None,
                     n_shards: int = 1) -> Federation:
    """A federation whose server and client shards all live in this process."""
    problem = problem_of(dataset)
    return build_federation(cfg, problem, make_server(cfg, dataset), local_pool(cfg, problem, n_shards),
                            run_dir, on_round)


def summarize(cfg: RunConfig, fed: Federation, run_info: dict | None = None) -> RunSummary:
    """The run's summary: test metrics at the best-valid round beside the reference rankings,
    the share of cold held-out items, the (epsilon, delta) of DP noise, and warnings a reader
    should not miss."""
    best_round = fed.callback(BestRound)
    best = best_round.best or {"valid": {}, "test": {"all": {}, "cold": {}, "warm": {}, "n_cold": 0}}
    problem, metric = fed.problem, cfg.loop.select_metric
    references = problem.reference_metrics(cfg.seed)
    valid_references = {k: v["all"] for k, v in problem.reference_metrics(cfg.seed, "valid").items()}
    cold_prior = best["test"].get("cold_prior")
    if cold_prior:   # this model plus a valid-tuned prior for never-trained items
        references["cold_prior"], valid_references["cold_prior"] = cold_prior["test"], cold_prior["valid"]
    cold_share = {split: float(problem.cold(split).mean()) for split in ("valid", "test")}
    warnings = []
    for reference, ranking in (("popularity", "the popularity ranking"), ("random", "a uniform random ranking")):
        if best["valid"] and best["valid"][metric] < valid_references[reference][metric]:
            warnings.append(f"the selected model is below {ranking} on valid {metric} "
                            f"({best['valid'][metric]:.4f} < {valid_references[reference][metric]:.4f})")
    if cfg.client.neg_popularity == 0 and max(cold_share.values()) >= NEW_ITEMS_NOTABLE:
        warnings.append(f"{100 * cold_share['test']:.0f}% of the test items and {100 * cold_share['valid']:.0f}% "
                        "of the valid items never occur in train; uniform negatives only ever push such items "
                        "down, so models learn to rank them low (docs/findings.md); --neg-popularity 1 does not "
                        "(docs/defaults.md Q9), and `fedvlr-sim sweep` chooses it on valid")
    if cfg.client.neg_popularity > 0 and cfg.client.dp_clip > 0:
        warnings.append("--neg-popularity hands every client the items' train counts; the reported "
                        "(epsilon, delta) covers the uploads only, not those counts")
    return RunSummary(
        dataset=problem.name, backbone=cfg.model.backbone, variant=cfg.model.variant,
        best_round=best_round.round, rounds_run=fed.round, selected_on=f"valid {metric}",
        valid=best["valid"], test=best["test"]["all"], test_cold=best["test"]["cold"],
        test_warm=best["test"]["warm"], n_users=problem.n_users, n_cold_test_users=best["test"]["n_cold"],
        baselines={k: v["all"] for k, v in references.items()},
        baselines_cold={k: v["cold"] for k, v in references.items()},
        baselines_warm={k: v["warm"] for k, v in references.items()},
        seconds=fed.seconds, config=cfg.flat(), stopped=fed.stop_reason, baselines_valid=valid_references,
        cold_share=cold_share, warnings=warnings,
        cold_prior_beta=cold_prior["beta"] if cold_prior else None, modality_spearman=best.get("modality_spearman"), modality_reliance=best.get("modality_reliance"),
        dp=dp_report(cfg, problem.n_users, fed.round), run_info=dict(run_info or {}))
