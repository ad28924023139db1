"""Plots of a run folder: convergence curves and the distribution of router weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from fedvlr_sim.errors import FedVLRError

VIEW_NAMES = ("sum", "mlp", "gate", "vision", "text", "id")   # operator views, then modality-only views


def draw_report(run_dir: Path) -> list[Path]:
    """Write convergence.png (and router_weights.png for `ours`) into run_dir; return paths.
    Every input is read (and refused in one line when damaged) before anything is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    history = read_history(run_dir / "metrics.parquet", run_dir)
    weights = read_router_weights(run_dir / "router_weights.npy")
    title = _title(run_dir)
    written = []

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(history["round"], history["loss"], marker=".")
    ax_loss.set(xlabel="round", ylabel="mean local training loss", title="loss")
    for column in ("valid_hr@50", "valid_ndcg@50"):
        if column in history.columns:
            rows = history.filter(pl.col(column).is_not_null())
            ax_metric.plot(rows["round"], rows[column], marker=".", label=column.replace("valid_", "valid "))
    ax_metric.set(xlabel="round", ylabel="metric", title="validation")
    ax_metric.legend()
    fig.suptitle(title)
    fig.tight_layout()
    written.append(_save(fig, run_dir / "convergence.png"))

    if weights is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.boxplot([weights[:, j] for j in range(weights.shape[1])], showfliers=False)
        ax.set_xticks(range(1, weights.shape[1] + 1), VIEW_NAMES[: weights.shape[1]])
        ax.set(ylabel="router weight", title=f"router weights across {len(weights)} users\n{title}")
        fig.tight_layout()
        written.append(_save(fig, run_dir / "router_weights.png"))
    return written


def _save(fig, path: Path) -> Path:
    """Write a figure as PNG and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise FedVLRError(f"{path}: cannot write the plot ({err.strerror or err})") from None
    finally:
        plt.close(fig)
    return path


def read_history(path: Path, run_dir: Path) -> pl.DataFrame:
    """The per-round metrics of a run, with at least its `round` and `loss` columns."""
    if not path.is_file():
        raise FedVLRError(f"{path}: not found (is {run_dir} a fedvlr-sim run folder?)")
    try:
        history = pl.read_parquet(path)
    except Exception as err:   # polars and pyarrow raise many types for a damaged file
        raise FedVLRError(f"{path}: not a readable parquet file ({_first_line(err)}); expected the run's "
                          f"per-round metrics") from None
    missing = sorted({"round", "loss"} - set(history.columns))
    if missing:
        raise FedVLRError(f"{path}: no column {missing[0]!r}; expected the run's per-round metrics")
    return history


def read_router_weights(path: Path) -> np.ndarray | None:
    """The users' router weights (users x views), or None for runs without routers."""
    if not path.exists():
        return None
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FedVLRError(f"{path}: not a readable .npy file ({_first_line(err)}); expected the users' router "
                          f"weights") from None
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.number):
        raise FedVLRError(f"{path}: shape {weights.shape} of {weights.dtype}; expected users x views numbers")
    return weights


def _title(run_dir: Path) -> str:
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        return f"{s['dataset']} {s['backbone']}+{s['variant']}"
    except (OSError, ValueError, KeyError, TypeError):   # absent (unfinished run) or unreadable
        return run_dir.name


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__
