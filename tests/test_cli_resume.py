"""Checkpoint and resume at the CLI level: a run stopped after some rounds and continued from its
folder ends with exactly the results of an uninterrupted run (every random draw is keyed by
seed, round and user, so the round counter is the whole random position)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from fedvlr_sim.cli import app
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.runner import execute, prepare_run_dir, resume_config

ROUNDS = 3


class Interrupted(Exception):
    """Stands in for Ctrl-C or a lost machine in the middle of a run."""


def config(run_dir, **extra) -> RunConfig:
    # FedRAP + ours: server state, routers and personal item tables must all survive a restart
    values = dict(dataset="synthetic:tiny", backbone="fedrap", variant="ours", dim=16, rounds=ROUNDS,
                  local_epochs=1, checkpoint_every=1, seed=0, backend="local", out=str(run_dir))
    return RunConfig.create(**(values | extra))


def interrupt_at(round_idx: int):
    """A progress callback that stops the run once round `round_idx` has been trained (its
    checkpoint is never written, so the last checkpoint is the one of round_idx - 1)."""
    def on_round(record):
        if record.round == round_idx:
            raise Interrupted
    return on_round


def read_summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """The reference: the same configuration run in one go, through the same runner."""
    cfg, run_dir = prepare_run_dir(config(tmp_path_factory.mktemp("resume") / "uninterrupted"))
    execute(cfg, tiny, run_dir)
    return read_summary(run_dir), pl.read_parquet(run_dir / "metrics.parquet")


def test_an_interrupted_run_resumed_with_the_cli_ends_as_the_uninterrupted_run(
        tiny, tmp_path, uninterrupted, assert_same_metrics):
    cfg = config(tmp_path / "run")
    cfg, run_dir = prepare_run_dir(cfg)
    with pytest.raises(Interrupted):
        execute(cfg, tiny, run_dir, on_round=interrupt_at(ROUNDS))
    assert not (run_dir / "summary.json").exists()
    assert checkpoint.read(checkpoint.latest(run_dir))[1]["round"] == ROUNDS - 1

    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output

    expected_summary, expected_history = uninterrupted
    got = read_summary(run_dir)
    assert_same_metrics(got, expected_summary)
    # a Spearman over users moves when float noise swaps two users' reliance shares (seen: 2.2e-5)
    assert got["modality_spearman"] == pytest.approx(expected_summary["modality_spearman"], abs=1e-3)
    history = pl.read_parquet(run_dir / "metrics.parquet")
    assert history["round"].to_list() == list(range(1, ROUNDS + 1))
    # the same losses, to float round-off (torch's multi-threaded reductions)
    assert history["loss"].to_list() == pytest.approx(expected_history["loss"].to_list(), rel=1e-6)
    assert history["valid_ndcg@50"].to_list() == pytest.approx(expected_history["valid_ndcg@50"].to_list(), abs=1e-5)


def test_a_finished_run_continued_with_more_rounds_ends_as_the_longer_run(
        tiny, tmp_path, uninterrupted, assert_same_metrics):
    """The public way to extend a run: raise `rounds` in its config.json, then resume it."""
    short = config(tmp_path / "run", rounds=ROUNDS - 1)
    short, run_dir = prepare_run_dir(short)
    execute(short, tiny, run_dir)
    assert read_summary(run_dir)["rounds_run"] == ROUNDS - 1

    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(saved | {"rounds": ROUNDS}))
    cfg, folder, _ = resume_config(run_dir)
    assert cfg.loop.rounds == ROUNDS and checkpoint.read(folder)[1]["round"] == ROUNDS - 1
    execute(cfg, tiny, run_dir, resume=folder)

    got = read_summary(run_dir)
    assert_same_metrics(got, uninterrupted[0])
    assert pl.read_parquet(run_dir / "metrics.parquet")["round"].to_list() == list(range(1, ROUNDS + 1))


def test_resume_needs_a_checkpoint(tmp_path, tiny):
    """A folder without a checkpoint (here: a run with --checkpoint-every 0) cannot be resumed."""
    cfg = config(tmp_path / "run", variant="none", rounds=1, checkpoint_every=0)
    cfg, run_dir = prepare_run_dir(cfg)
    execute(cfg, tiny, run_dir)
    summary_before = (run_dir / "summary.json").read_bytes()

    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0], result.stderr
    assert "checkpoint" in lines[0]
    assert (run_dir / "summary.json").read_bytes() == summary_before


def test_resume_of_a_folder_that_is_not_a_run_fails_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "config.json" in lines[0]
    assert "Traceback" not in result.output


def test_options_given_with_resume_are_applied_or_refused(tmp_path, tiny):
    cfg = config(tmp_path / "run", variant="none", rounds=1)
    cfg, run_dir = prepare_run_dir(cfg)
    execute(cfg, tiny, run_dir)

    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--rounds", str(ROUNDS)])
    refused = result.exit_code == 2 and "--rounds" in result.stderr
    applied = result.exit_code == 0 and read_summary(run_dir)["rounds_run"] == ROUNDS
    assert refused or applied, f"exit {result.exit_code}, rounds_run {read_summary(run_dir)['rounds_run']}"


def test_a_run_interrupted_in_process_continues_on_ray_with_the_same_result(
        ray_local, tiny, tmp_path, uninterrupted, assert_same_metrics):
    """Checkpoints do not depend on the backend or the shard layout: a local run's checkpoint
    is resumed by `run --resume` on Ray with two shards (set in the run's config.json)."""
    cfg = config(tmp_path / "run")
    cfg, run_dir = prepare_run_dir(cfg)
    with pytest.raises(Interrupted):
        execute(cfg, tiny, run_dir, on_round=interrupt_at(ROUNDS))
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(saved | {"backend": "ray", "shards": 2}))

    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    got = read_summary(run_dir)
    assert got["shards"] == 2 and got["recoveries"] == 0
    assert_same_metrics(got, uninterrupted[0])
    assert pl.read_parquet(run_dir / "metrics.parquet")["round"].to_list() == list(range(1, ROUNDS + 1))
