"""`fedvlr-sim sweep`: the learning-rate grid {1e-3, 1e-2, 1e-1, 1}, then popularity-weighted
negatives (exponents 0.5 and 1) at its best point; one run folder per point, the point selected on
the VALID metric only (never on test), and --resume keeping finished points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedvlr_sim.reproduce.jobs
from fedvlr_sim.cli import app
from fedvlr_sim.engine.messages import RunSummary

LR_GRID = [1e-3, 1e-2, 1e-1, 1.0]
TINY_RUNS = {"rounds": 2, "local_epochs": 1, "dim": 16, "backend": "local", "checkpoint_every": 0}


def sweep_cli(out, config, *extra):
    return CliRunner().invoke(app, ["sweep", "--dataset", "synthetic:tiny", "--out", str(out),
                                    "--config", str(config), "--data-dir", str(out.parent), *extra])


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_RUNS))
    return path


def test_sweep_runs_the_grid_and_selects_the_best_valid_point(tmp_path, tiny_config):
    out = tmp_path / "sweep"
    result = sweep_cli(out, tiny_config, "--variant", "none")
    assert result.exit_code == 0, result.output

    grid = json.loads((out / "sweep.json").read_text())
    lr_points = [{"lr": lr} for lr in LR_GRID]
    assert [point["point"] for point in grid[:4]] == lr_points
    best_lr = max(grid[:4], key=lambda point: point["valid"]["ndcg@50"])["point"]["lr"]
    assert [point["point"] for point in grid[4:]] == [{"lr": best_lr, "neg_popularity": beta} for beta in (0.5, 1.0)]
    for point in grid:
        run_dir = Path(point["run"])
        assert run_dir.parent == out
        run_summary = json.loads((run_dir / "summary.json").read_text())
        assert run_summary["config"]["lr"] == point["point"]["lr"]
        assert run_summary["config"]["neg_popularity"] == point["point"].get("neg_popularity", 0.0)
        assert run_summary["config"]["rounds"] == TINY_RUNS["rounds"]   # the config file applied
        assert run_summary["valid"] == point["valid"] and run_summary["test"] == point["test"]

    selected = json.loads((out / "summary.json").read_text())
    best_valid = max(point["valid"]["ndcg@50"] for point in grid)
    assert selected["valid"]["ndcg@50"] == best_valid
    assert selected["sweep"]["selected_on"] == "valid ndcg@50"
    chosen = next(p for p in grid if p["point"] == selected["sweep"]["selected"])
    assert chosen["valid"]["ndcg@50"] == best_valid
    assert selected["test"] == chosen["test"] and selected["config"]["lr"] == chosen["point"]["lr"]
    assert selected["config"]["neg_popularity"] == chosen["point"].get("neg_popularity", 0.0)


def test_sweep_selection_ignores_test_metrics(tmp_path, tiny_config, monkeypatch):
    """With runs whose valid and test metrics disagree, the point with the best valid metric is
    selected even though another point is best on test; the negatives stage runs at the best lr."""
    valid_of = {(1.0, 0.0): 0.10, (1e-3, 0.0): 0.40, (1e-2, 0.0): 0.20, (1e-1, 0.0): 0.05, (1e-3, 0.5): 0.30,
                (1e-3, 1.0): 0.45}
    test_of = {(1.0, 0.0): 0.90, (1e-3, 0.0): 0.01, (1e-2, 0.0): 0.50, (1e-1, 0.0): 0.70, (1e-3, 0.5): 0.80,
               (1e-3, 1.0): 0.02}
    started = []

    def fake_execute(cfg, dataset, run_dir, on_round=None, resume=None):
        started.append(cfg.client.lr)
        metrics = lambda x: {f"{m}@{k}": x for k in (10, 20, 50) for m in ("hr", "ndcg")}
        lr = (cfg.client.lr, cfg.client.neg_popularity)
        summary = RunSummary(dataset="synthetic:tiny", backbone=cfg.model.backbone, variant=cfg.model.variant,
                             best_round=1, rounds_run=1, selected_on="valid ndcg@50", valid=metrics(valid_of[lr]),
                             test=metrics(test_of[lr]), test_cold=metrics(0.0), test_warm=metrics(0.0), n_users=1,
                             n_cold_test_users=0, baselines={}, baselines_cold={}, baselines_warm={}, seconds=0.0,
                             config=cfg.flat())
        (run_dir / "summary.json").write_text(json.dumps(summary.to_dict()))
        return summary

    monkeypatch.setattr(fedvlr_sim.reproduce.jobs, "execute", fake_execute)
    out = tmp_path / "sweep"
    result = sweep_cli(out, tiny_config)
    assert result.exit_code == 0, result.output
    selected = json.loads((out / "summary.json").read_text())
    assert selected["sweep"]["selected"] == {"lr": 1e-3, "neg_popularity": 1.0}
    assert selected["valid"]["ndcg@50"] == 0.45 and selected["test"]["ndcg@50"] == 0.02
    assert "selected" in result.output and "{'lr'" not in result.output   # a table, not a dict

    # a second sweep into the folder needs --resume, which keeps the finished points
    (out / "lr0.01" / "summary.json").unlink()
    result = sweep_cli(out, tiny_config)
    assert result.exit_code == 2 and "--resume" in result.output
    started.clear()
    result = sweep_cli(out, tiny_config, "--resume")
    assert result.exit_code == 0, result.output
    assert started == [1e-2]
