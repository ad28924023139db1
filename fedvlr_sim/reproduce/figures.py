"""The paper's figures drawn from an experiment's result rows: convergence curves of several
cells overlaid (from each run's metrics.parquet), and a metric against the client sampling ratio."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from fedvlr_sim.reproduce.stats import mean_interval

CURVE = "valid_ndcg@50"


def _axes(n_panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def convergence_figure(rows: list[dict], path: Path) -> None:
    """Valid NDCG@50 per round, mean over seeds, one line per cell, one panel per dataset."""
    import polars as pl

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    plt, fig, axes = _axes(len(datasets))
    for ax, dataset in zip(axes, datasets):
        curves = defaultdict(list)
        for r in (r for r in rows if r["dataset"] == dataset):
            history = pl.read_parquet(Path(r["run"]) / "metrics.parquet").filter(pl.col(CURVE).is_not_null())
            curves[r["row"]].append(dict(zip(history["round"].to_list(), history[CURVE].to_list())))
        for label, runs in curves.items():
            rounds = sorted(set().union(*runs))
            ax.plot(rounds, [np.mean([run[t] for run in runs if t in run]) for t in rounds], marker=".", label=label)
        ax.set(xlabel="round", ylabel="valid NDCG@50", title=dataset)
        ax.legend()
    _save(plt, fig, path)


def sampling_figure(rows: list[dict], path: Path) -> None:
    """Test HR@50 and NDCG@50 (mean and 95% interval over seeds) against the sampling ratio."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    plt, fig, axes = _axes(len(datasets))
    for ax, dataset in zip(axes, datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        ratios = sorted({r["sample_ratio"] for r in mine})
        for metric in ("hr@50", "ndcg@50"):
            stats = [mean_interval([r[f"test_{metric}"] for r in mine if r["sample_ratio"] == x]) for x in ratios]
            ax.errorbar(ratios, [m for m, _ in stats], yerr=[0 if h != h else h for _, h in stats], marker="o",
                        capsize=3, label=f"test {metric.upper()}")
        ax.set(xlabel="client sampling ratio", ylabel="metric", title=dataset, xscale="log")
        ax.legend()
    _save(plt, fig, path)
