"""Figure 3, client heterogeneity, from the +ours runs of one backbone on each dataset: (a) the
users' train interactions, (b) each user's modality reliance shares (the run's
modality_reliance.npy: users x MODALITIES, at the selected round) on a triangle whose corners are
the modalities, coloured by activity, and (c) test HR@50 and NDCG@50 per activity group (from
each run's test_ranks.npy), mean and 95% interval over seeds. Activity is read from the run's
own dataset (its config.json), so a synthetic world drawn per seed groups its own users."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.reproduce.figures import datasets_of, figure_axes, save_figure
from fedvlr_sim.reproduce.rundata import run_users
from fedvlr_sim.reproduce.stats import mean_interval
from fedvlr_sim.reproduce.tables import user_metric

N_GROUPS = 5
GROUP_METRICS = ("hr@50", "ndcg@50")
CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])   # one per modality, MODALITIES order


def activity_groups(counts: np.ndarray, n_groups: int = N_GROUPS) -> np.ndarray:
    """Each user's activity group, 0 (fewest train interactions) to n_groups - 1: equal-sized
    groups of users ordered by train interactions, ties by user id."""
    order = np.argsort(counts, kind="stable")
    groups = np.empty(len(counts), dtype=np.int64)
    groups[order] = np.arange(len(counts)) * n_groups // len(counts)
    return groups


def group_ranges(counts: np.ndarray, n_groups: int = N_GROUPS) -> list[str]:
    """The train interactions each activity group spans, e.g. `3-5`."""
    ordered = np.sort(counts)
    starts = -(-np.arange(n_groups + 1) * len(counts) // n_groups)   # first position of each group, then the end
    return [f"{lo}-{hi}" for lo, hi in zip(ordered[starts[:-1]], ordered[starts[1:] - 1])]


def group_metrics(run_dir: Path, n_groups: int = N_GROUPS) -> np.ndarray:
    """The run's mean test metric per activity group, shape (len(GROUP_METRICS), n_groups)."""
    groups = activity_groups(run_users(run_dir).train_counts, n_groups)
    sizes = np.bincount(groups, minlength=n_groups)
    return np.stack([np.bincount(groups, weights=user_metric(run_dir, m), minlength=n_groups) / sizes
                     for m in GROUP_METRICS])


def heterogeneity_figure(rows: list[dict], path: Path) -> None:
    """Per dataset a row of panels (a) activity, (b) reliance shares, (c) accuracy by activity;
    (a) and (b) show the first seed's run, (c) every seed's."""
    datasets = datasets_of(rows)
    plt, fig, axes = figure_axes(len(datasets), 3)
    for (activity, reliance, accuracy), dataset in zip(axes, datasets):
        runs = [Path(r["run"]) for r in rows if r["dataset"] == dataset]
        counts = run_users(runs[0]).train_counts
        _activity_panel(activity, counts, dataset)
        _reliance_panel(fig, reliance, np.load(runs[0] / "modality_reliance.npy"), counts)
        _accuracy_panel(accuracy, np.stack([group_metrics(run) for run in runs]), group_ranges(counts))
    save_figure(plt, fig, path)


def _activity_panel(ax, counts: np.ndarray, dataset: str) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.hist(counts, bins=np.unique(np.geomspace(counts.min(), counts.max() + 1, 30).astype(int)))
    ax.set(xscale="log", xlabel="train interactions per user", ylabel="users", title=f"{dataset}: (a) user activity")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _reliance_panel(fig, ax, shares: np.ndarray, counts: np.ndarray) -> None:
    from matplotlib.colors import LogNorm

    dots = ax.scatter(*(shares @ CORNERS).T, c=counts, s=8, cmap="viridis", norm=LogNorm())
    ax.plot(*CORNERS[[0, 1, 2, 0]].T, color="k", linewidth=0.8)
    for corner, modality, offset in zip(CORNERS, MODALITIES, ((-8, -12), (8, -12), (0, 6))):
        ax.annotate(modality, corner, xytext=offset, textcoords="offset points", ha="center")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("(b) modality reliance shares per user")
    fig.colorbar(dots, ax=ax, label="train interactions")


def _accuracy_panel(ax, per_run: np.ndarray, ranges: list[str]) -> None:
    """Grouped bars: per metric, the mean over runs of each group's value with its interval."""
    positions = np.arange(per_run.shape[2])
    width = 0.8 / len(GROUP_METRICS)
    for k, metric in enumerate(GROUP_METRICS):
        stats = np.array([mean_interval(100 * per_run[:, k, g]) for g in positions])
        ax.bar(positions + (k - (len(GROUP_METRICS) - 1) / 2) * width, stats[:, 0], width,
               yerr=np.nan_to_num(stats[:, 1]), capsize=3, label=f"test {metric.upper()}")
    ax.set_xticks(positions, [f"G{g + 1}\n{r}" for g, r in enumerate(ranges)])
    ax.set(xlabel="activity group (train interactions)", ylabel="%", title="(c) accuracy by user activity")
    ax.legend()
