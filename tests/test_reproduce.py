"""`fedvlr-sim reproduce`: an experiment's cells run (finished runs kept on a second call),
its parquet rows and markdown intervals; table 3 measured against the declared shapes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import fedvlr_sim.reproduce.jobs as jobs
from fedvlr_sim.cli import app
from fedvlr_sim.config import RunConfig
from fedvlr_sim.reproduce.catalogue import EXPERIMENTS
from fedvlr_sim.reproduce.experiment import Choices
from fedvlr_sim.reproduce.stats import mean_interval, wilcoxon

TINY = ("--set", "dim=8", "--set", "local_epochs=1", "--set", "checkpoint_every=0")
ABLATION_ROWS = ["full", "without vision", "without text", "without id", "random vision", "random text", "random id"]


def reproduce_cli(*args):
    return CliRunner().invoke(app, ["reproduce", *args])


@pytest.fixture
def counted_runs(monkeypatch):
    """Every run the executor trains, by folder."""
    started = []
    real = jobs.execute

    def counting(cfg, dataset, run_dir, *args, **kwargs):
        started.append(run_dir)
        return real(cfg, dataset, run_dir, *args, **kwargs)

    monkeypatch.setattr(jobs, "execute", counting)
    return started


def test_table5_writes_rows_and_intervals_and_resumes(tmp_path, counted_runs):
    out = tmp_path / "out"
    args = ("table5", "--dataset", "synthetic:tiny", "--seeds", "2", "--rounds", "2", "--out", str(out),
            "--data-dir", str(tmp_path), *TINY)
    result = reproduce_cli(*args)
    assert result.exit_code == 0, result.output
    assert len(counted_runs) == 7 * 2

    rows = pl.read_parquet(out / "table5.parquet")
    assert rows.height == 14
    assert sorted(rows["seed"].unique().to_list()) == [0, 1]
    assert rows["row"].unique(maintain_order=True).to_list() == ABLATION_ROWS
    assert set(rows["ablation"]) == {"keep", "vision=drop", "text=drop", "id=drop", "vision=noise", "text=noise",
                                     "id=noise"}
    for row in rows.iter_rows(named=True):
        assert (out.joinpath(row["run"]) / "summary.json").is_file()
        assert 0 <= row["test_ndcg@50"] <= row["test_hr@50"] <= 1 and row["lr"] == 0.1

    text = (out / "table5.md").read_text()
    assert "Student-t" in text
    for label in ABLATION_ROWS:
        line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        values = rows.filter(pl.col("row") == label)["test_hr@50"].to_list()
        mean, half = mean_interval(values)
        assert f"{100 * mean:.2f} ± {100 * half:.2f}" in line

    # a second call keeps the finished runs; a run without summary (and no checkpoint) restarts
    (out.joinpath(rows["run"][3]) / "summary.json").unlink()
    counted_runs.clear()
    result = reproduce_cli(*args)
    assert result.exit_code == 0, result.output
    assert [str(p) for p in counted_runs] == [rows["run"][3]]
    assert pl.read_parquet(out / "table5.parquet").height == 14

    # another configuration is refused in one line rather than mixed in
    result = reproduce_cli(*args[:-len(TINY)], "--set", "dim=16", "--set", "local_epochs=1", "--set", "checkpoint_every=0")
    assert result.exit_code == 2 and "dim=8" in result.output


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = RunConfig.create(dataset="synthetic:tiny", data_dir=str(tmp_path), backend="local", variant="none", dim=8,
                           rounds=2, local_epochs=1, checkpoint_every=1)
    job = jobs.Job(cfg, tmp_path / "run")
    first = jobs.run_job(job)
    (job.run_dir / "summary.json").unlink()
    resumed_from = []
    real = jobs.execute
    monkeypatch.setattr(jobs, "execute", lambda *a, resume=None: resumed_from.append(resume) or real(*a, resume=resume))
    again = jobs.run_job(job)
    assert resumed_from and resumed_from[0] is not None
    assert again["test"] == first["test"]


def test_table3_counts_match_the_declared_shapes(tmp_path):
    from fedvlr_sim.engine import model

    out = tmp_path / "out"
    result = reproduce_cli("table3", "--dataset", "synthetic:tiny", "--out", str(out), "--data-dir", str(tmp_path),
                           "--set", "dim=8")
    assert result.exit_code == 0, result.output
    assert "| fedrap |" in result.output   # printed too
    rows = pl.read_parquet(out / "table3.parquet")
    assert rows.height == len(EXPERIMENTS["table3"].cells(Choices()))
    for row in rows.iter_rows(named=True):
        cfg = RunConfig.create(backbone=row["backbone"], variant=row["variant"], dim=8).model
        width = cfg.variant_def.width(8)
        local = model.local_shapes(cfg, width, row["n_items"])
        assert row["client_params"] == sum(math.prod(s) for s in local.values())
        views = cfg.variant_def.n_views * row["n_items"] * width
        globals_ = views + sum(math.prod(s) for s in cfg.backbone_def.global_shapes(width).values())
        assert row["down_bytes"] == row["up_bytes"] == 4 * globals_


def test_a_dataset_without_features_cannot_run_a_fusion_experiment(tmp_path):
    from fedvlr_sim.datasets import prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{100 + i},4.0,{1_600_000_000 + 1000 * u + i}"
                                                   for u in range(1, 9) for i in range(8)]
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n")
    prepare_dataset("ML", raw, tmp_path / "data")
    out = tmp_path / "out"
    result = reproduce_cli("table5", "--dataset", "ML", "--out", str(out), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2
    assert "no cell can run" in result.output and "features" in result.output
    assert not (out / "table5.md").exists()


def test_interval_and_paired_test():
    mean, half = mean_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_interval([0.5])[1])
    assert wilcoxon([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)   # 1 of 8 sign patterns each side
    rng = np.random.default_rng(0)
    a = rng.normal(size=80)
    assert wilcoxon(a + 1.0, a) < 1e-6 and wilcoxon(a, a[::-1]) > 0.05


def test_the_paired_test_is_over_users_from_each_runs_test_ranks(tmp_path):
    from fedvlr_sim.reproduce.tables import _paired_p, user_metric

    rng = np.random.default_rng(1)
    better, worse = [], []
    for seed in (0, 1):
        ranks = rng.integers(0, 200, size=120)
        for runs, shift in ((better, 0), (worse, 40)):
            run_dir = tmp_path / f"shift{shift}-seed{seed}"
            run_dir.mkdir()
            np.save(run_dir / "test_ranks.npy", (ranks + shift).astype(np.int32))
            runs.append({"seed": seed, "run": str(run_dir)})
    hits = user_metric(tmp_path / "shift0-seed0", "hr@50")
    assert hits.shape == (120,) and set(np.unique(hits)) <= {0.0, 1.0}
    text = _paired_p(better, worse, "ndcg@50")
    p, n = float(text.split(" ")[0]), text.split("n=")[1].rstrip(")")
    assert p < 1e-3 and n == "120", "120 users, each better in the first cell or tied"
