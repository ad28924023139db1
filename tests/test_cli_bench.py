"""`fedvlr-sim bench --json`: one JSON object per dataset, timing Ray shards against the naive
sequential per-user loop. Runs in this process, on the test session's Ray instance (the bench
joins an initialised session instead of starting its own)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedvlr_sim.cli import app

POSITIVE = ("seconds_per_round", "sequential_seconds_per_round", "speedup", "updates_per_second", "peak_rss_gb",
            "eval_seconds")


def test_bench_prints_one_json_object_per_dataset(ray_local, tmp_path):
    result = CliRunner().invoke(app, ["bench", "--dataset", "synthetic:tiny", "--rounds", "1",
                                      "--sample-users", "5", "--local-epochs", "1", "--shards", "2",
                                      "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    row = json.loads(lines[0])

    assert (row["dataset"], row["backbone"], row["variant"], row["views"]) == ("synthetic:tiny", "fcf", "ours", 6)
    assert row["users"] == 300 and row["shards"] == 2
    for key in POSITIVE:
        assert isinstance(row[key], float) and row[key] > 0, key
    # the derived columns follow from the timings
    assert row["speedup"] == row["sequential_seconds_per_round"] / row["seconds_per_round"]
    assert row["speedup_per_shard"] == row["speedup"] / 2
    assert row["updates_per_second"] == 300 / row["seconds_per_round"]
    # 5 users were timed one at a time and the loop extrapolated to all 300
    assert row["sequential_users_timed"] == 5 and row["sequential_extrapolated"] is True
    assert row["peak_rss_gb"] < 64


def test_bench_times_several_user_counts_and_draws_the_scaling_plot(ray_local, tmp_path):
    plot = tmp_path / "scaling.png"
    result = CliRunner().invoke(app, ["bench", "--dataset", "synthetic:tiny", "--users", "60", "--users", "120",
                                      "--rounds", "1", "--sample-users", "3", "--local-epochs", "1", "--shards", "2",
                                      "--view-norm", "none", "--no-modality-views",
                                      "--data-dir", str(tmp_path), "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [row["users"] for row in rows] == [60, 120]
    assert {row["views"] for row in rows} == {3}, "the paper's three views, as asked"
    assert plot.stat().st_size > 0
    assert "timing" in result.stderr, "progress is reported while the bench runs"


def test_the_compared_loops_run_on_one_thread_and_the_caller_keeps_its_threads():
    import torch

    from fedvlr_sim.bench import one_thread

    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
