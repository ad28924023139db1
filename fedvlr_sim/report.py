"""Plots of a run folder: convergence curves and the distribution of router weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from fedvlr_sim.errors import FedVLRError

VIEW_NAMES = ("sum", "mlp", "gate")


def draw_report(run_dir: Path) -> list[Path]:
    """Write convergence.png (and router_weights.png for `ours`) into run_dir; return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.parquet"
    if not metrics_file.exists():
        raise FedVLRError(f"{metrics_file}: not found (is {run_dir} a fedvlr-sim run folder?)")
    history = pl.read_parquet(metrics_file)
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
    written.append(run_dir / "convergence.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    weights_file = run_dir / "router_weights.npy"
    if weights_file.exists():
        weights = np.load(weights_file)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.boxplot([weights[:, j] for j in range(weights.shape[1])], showfliers=False)
        ax.set_xticks(range(1, weights.shape[1] + 1), VIEW_NAMES[: weights.shape[1]])
        ax.set(ylabel="router weight", title=f"router weights across {len(weights)} users\n{title}")
        fig.tight_layout()
        written.append(run_dir / "router_weights.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def _title(run_dir: Path) -> str:
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
        return f"{s['dataset']} {s['backbone']}+{s['variant']}"
    return run_dir.name
