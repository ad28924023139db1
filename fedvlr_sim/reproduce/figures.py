"""The paper's figures drawn from an experiment's result rows: convergence curves of several
cells overlaid (from each run's metrics.parquet), a metric against the client sampling ratio, and
a heatmap of a metric over a two-option grid of cells. The helpers lay out and save any figure."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from fedvlr_sim.reproduce.experiment import GridAxis
from fedvlr_sim.reproduce.stats import mean_interval

CURVE = "valid_ndcg@50"
HEAT = "test_ndcg@50"


def figure_axes(n_rows: int, n_cols: int):
    """(pyplot, figure, axes as an n_rows x n_cols array) on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, 4 * n_rows), squeeze=False)
    return plt, fig, axes


def datasets_of(rows: list[dict]) -> list[str]:
    """The datasets of the rows, in their order."""
    return list(dict.fromkeys(r["dataset"] for r in rows))


def save_figure(plt, fig, path: Path) -> None:
    """Write the figure as PNG atomically (temp file, then rename) and close it."""
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def convergence_figure(rows: list[dict], path: Path) -> None:
    """Valid NDCG@50 per round, mean over seeds, one line per cell, one panel per dataset."""
    import polars as pl

    datasets = datasets_of(rows)
    plt, fig, axes = figure_axes(1, len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        curves = defaultdict(list)
        for r in (r for r in rows if r["dataset"] == dataset):
            history = pl.read_parquet(Path(r["run"]) / "metrics.parquet").filter(pl.col(CURVE).is_not_null())
            curves[r["row"]].append(dict(zip(history["round"].to_list(), history[CURVE].to_list())))
        for label, runs in curves.items():
            rounds = sorted(set().union(*runs))
            ax.plot(rounds, [np.mean([run[t] for run in runs if t in run]) for t in rounds], marker=".", label=label)
        ax.set(xlabel="round", ylabel="valid NDCG@50", title=dataset)
        ax.legend()
    save_figure(plt, fig, path)


def sampling_figure(rows: list[dict], path: Path) -> None:
    """Test HR@50 and NDCG@50 (mean and 95% interval over seeds) against the sampling ratio."""
    datasets = datasets_of(rows)
    plt, fig, axes = figure_axes(1, len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        ratios = sorted({r["sample_ratio"] for r in mine})
        for metric in ("hr@50", "ndcg@50"):
            stats = [mean_interval([r[f"test_{metric}"] for r in mine if r["sample_ratio"] == x]) for x in ratios]
            ax.errorbar(ratios, [m for m, _ in stats], yerr=[0 if h != h else h for _, h in stats], marker="o",
                        capsize=3, label=f"test {metric.upper()}")
        ax.set(xlabel="client sampling ratio", ylabel="metric", title=dataset, xscale="log")
        ax.legend()
    save_figure(plt, fig, path)


def grid_matrix(rows: list[dict], y: GridAxis, x: GridAxis, metric: str = HEAT) -> np.ndarray:
    """The mean of `metric` over seeds at every grid point, shape (len(y.values), len(x.values));
    NaN where no run finished (every seed diverged)."""
    at = ([y.values.index(r[y.option]) for r in rows], [x.values.index(r[x.option]) for r in rows])
    shape = (len(y.values), len(x.values))
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, at, [r[metric] for r in rows])
    np.add.at(counts, at, 1)
    return np.divide(sums, counts, out=np.full(shape, np.nan), where=counts > 0)


def grid_figure(rows: list[dict], path: Path, y: GridAxis, x: GridAxis, metric: str = HEAT) -> None:
    """A heatmap of `metric` (percent, mean over seeds, annotated) over the y x x grid, one panel
    per dataset; a point where every seed diverged reads n/a."""
    split, name = metric.split("_", 1)
    datasets = datasets_of(rows)
    plt, fig, axes = figure_axes(1, len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        matrix = 100 * grid_matrix([r for r in rows if r["dataset"] == dataset], y, x, metric)
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", origin="lower")
        for (i, j), value in np.ndenumerate(matrix):
            missing = value != value
            ax.text(j, i, "n/a" if missing else f"{value:.2f}", ha="center", va="center", color="k" if missing else "w")
        ax.set_xticks(range(len(x.values)), [f"{v:g}" for v in x.values])
        ax.set_yticks(range(len(y.values)), [f"{v:g}" for v in y.values])
        ax.set(xlabel=x.label, ylabel=y.label, title=f"{dataset}: {split} {name.upper()} (%, mean over seeds)")
        fig.colorbar(image, ax=ax)
    save_figure(plt, fig, path)
