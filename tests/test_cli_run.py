"""`fedvlr-sim run` and `fedvlr-sim report`: what a finished run leaves in its results folder,
and that a finished run is never overwritten."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from fedvlr_sim.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CUTOFFS = (10, 20, 50)
METRIC_KEYS = {f"{m}@{k}" for k in CUTOFFS for m in ("hr", "ndcg")}
ROUNDS = 2


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ranking_metrics(values: dict, where: str) -> None:
    """HR and NDCG at 10, 20 and 50 as fractions, HR growing with K, NDCG at most HR."""
    assert set(values) == METRIC_KEYS, where
    for key, value in values.items():
        assert 0.0 <= value <= 1.0, f"{where} {key} = {value}"
    assert values["hr@10"] <= values["hr@20"] <= values["hr@50"], where
    for k in CUTOFFS:
        assert values[f"ndcg@{k}"] <= values[f"hr@{k}"], where


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished local run of the default variant (ours) on the synthetic world."""
    out = tmp_path_factory.mktemp("cli-run") / "run"
    result = run_cli("run", "--backend", "local", "--dataset", "synthetic:tiny", "--rounds", ROUNDS,
                     "--local-epochs", 1, "--dim", 16, "--out", out,
                     "--data-dir", tmp_path_factory.mktemp("data"))
    assert result.exit_code == 0, result.output
    return out, result


def summary_of(folder) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_a_run_writes_the_results_folder(finished):
    out, result = finished
    for name in ("config.json", "summary.json", "metrics.parquet", "convergence.png", "router_weights.npy",
                 "modality_reliance.npy", "test_ranks.npy"):
        assert (out / name).is_file(), name
    assert (out / "convergence.png").read_bytes().startswith(PNG_MAGIC)
    summary = summary_of(out)
    ranks = np.load(out / "test_ranks.npy")
    assert ranks.shape == (summary["n_users"],)
    assert (ranks < 50).mean() == pytest.approx(summary["test"]["hr@50"]), "the ranks behind the test metrics"
    shares = np.load(out / "modality_reliance.npy")
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    assert f"results: {out}" in result.stdout


def test_the_summary_has_the_required_keys_and_metrics_as_fractions(finished):
    out, _ = finished
    s = summary_of(out)
    for key in ("dataset", "backbone", "variant", "best_round", "valid", "test", "test_cold", "test_warm",
                "baselines", "seconds", "config", "modality_spearman"):
        assert key in s, key
    assert (s["dataset"], s["backbone"], s["variant"]) == ("synthetic:tiny", "fcf", "ours")
    assert 1 <= s["best_round"] <= ROUNDS
    assert s["seconds"] > 0
    assert_ranking_metrics(s["valid"], "valid")
    assert_ranking_metrics(s["test"], "test")
    assert_ranking_metrics(s["test_warm"], "test_warm")
    if s["n_cold_test_users"]:
        assert_ranking_metrics(s["test_cold"], "test_cold")
    else:   # no user's test item is cold in this world: the cold split is undefined, not 0
        assert set(s["test_cold"]) == METRIC_KEYS and all(v is None for v in s["test_cold"].values())  # no cold test item: undefined
    assert set(s["baselines"]) == {"popularity", "cold_first", "random", "cold_prior"}
    for name, values in s["baselines"].items():
        assert_ranking_metrics(values, f"baseline {name}")


def test_the_summary_records_the_resolved_configuration(finished):
    out, _ = finished
    s = summary_of(out)
    config = json.loads((out / "config.json").read_text())
    assert s["config"] == config
    assert config["rounds"] == ROUNDS and config["local_epochs"] == 1 and config["dim"] == 16
    assert config["backend"] == "local" and config["dataset"] == "synthetic:tiny"
    assert config["out"] == ""   # the folder is where the run is, not what it is


def test_modality_spearman_compares_routers_with_the_planted_weights(finished):
    out, _ = finished
    rho = summary_of(out)["modality_spearman"]
    assert set(rho) == {"vision", "text", "id", "mean"}
    for modality in ("vision", "text", "id"):
        assert -1.0 <= rho[modality] <= 1.0
    assert rho["mean"] == pytest.approx(np.mean([rho["vision"], rho["text"], rho["id"]]))


def test_per_round_metrics_and_selection_on_valid(finished):
    out, _ = finished
    s = summary_of(out)
    history = pl.read_parquet(out / "metrics.parquet")
    assert history["round"].to_list() == list(range(1, ROUNDS + 1))
    assert {"loss", "valid_hr@50", "valid_ndcg@50"} <= set(history.columns)
    selected = history.filter(pl.col("round") == s["best_round"])
    assert selected["valid_ndcg@50"].item() == pytest.approx(s["valid"]["ndcg@50"])
    assert s["valid"]["ndcg@50"] == pytest.approx(history["valid_ndcg@50"].max())


def test_router_weights_are_one_mixture_per_user(finished):
    out, _ = finished
    weights = np.load(out / "router_weights.npy")
    assert weights.shape == (300, 6)   # one weight per view (sum, mlp, gate, x_v, x_c, x_d) for each user
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_report_draws_the_plots_of_a_run_folder(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished[0], copy)
    for png in copy.glob("*.png"):
        png.unlink()
    result = run_cli("report", copy)
    assert result.exit_code == 0, result.output
    written = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    assert written == {str(copy / "convergence.png"), str(copy / "router_weights.png")}
    for path in written:
        assert open(path, "rb").read(8) == PNG_MAGIC


def test_report_on_a_folder_that_is_not_a_run_fails_cleanly(tmp_path):
    result = run_cli("report", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "metrics.parquet" in result.stderr


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(finished):
    out, _ = finished
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    result = run_cli("run", "--backend", "local", "--dataset", "synthetic:tiny", "--rounds", 1,
                     "--local-epochs", 1, "--dim", 16, "--out", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "--out" in lines[0] and str(out) in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in result.output
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    assert after == before


def test_summary_json_is_standard_json(finished):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    json.loads((finished[0] / "summary.json").read_text(), parse_constant=refuse)
