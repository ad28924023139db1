"""Fault tolerance on Ray: a client shard that dies mid-run is restarted by Ray, every shard
reloads the last checkpoint, the lost rounds are replayed exactly, and the run ends with the
result of an unbroken run. A failure that cannot be recovered ends the run with an error
instead of hanging."""

from __future__ import annotations

import threading
import time

import pytest

from fedvlr_sim.actors.launch import RayRun
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.simulation import local_federation

GUARD_S = 150   # no run here may take longer: a hang fails the test instead of blocking the suite


def config(**extra) -> RunConfig:
    values = dict(dataset="synthetic:tiny", backbone="fcf", variant="ours", dim=16, rounds=6, eval_every=2,
                  local_epochs=1, checkpoint_every=1, seed=0, shards=2)
    return RunConfig(**(values | extra)).validate()


def wait_guarded(run: RayRun) -> dict:
    """`run.wait()` in a thread; fails (and tears the run down) if it does not end in GUARD_S."""
    result: dict = {}

    def target():
        try:
            result["outcome"] = run.wait(interval=0.05)
        except BaseException as err:   # reported to the test thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    if thread.is_alive():
        run.close()   # unblocks the waiting thread
        pytest.fail(f"the Ray run did not finish within {GUARD_S} s (hang)")
    return result


def poll_until(run: RayRun, rounds_done: int, timeout_s: float = GUARD_S) -> list[dict]:
    records, deadline = [], time.monotonic() + timeout_s
    while len(records) < rounds_done:
        assert time.monotonic() < deadline, f"fewer than {rounds_done} rounds after {timeout_s} s"
        records += run.poll()
        time.sleep(0.02)
    return records


def test_a_killed_shard_is_recovered_and_the_run_ends_as_an_unbroken_one(ray_local, tiny, tmp_path,
                                                                         assert_same_metrics):
    cfg = config()
    unbroken = local_federation(RunConfig(**(cfg.to_dict() | {"backend": "local"})), tiny).run()

    run = RayRun(cfg, tiny, tmp_path).start()
    try:
        before_kill = poll_until(run, rounds_done=2)
        assert len(before_kill) < cfg.rounds, "the run ended before the shard could be killed"
        ray_local.kill(run.shards[0], no_restart=False)
        result = wait_guarded(run)
    finally:
        run.close()

    assert "error" not in result, f"the run failed instead of recovering: {result.get('error')!r}"
    summary = result["outcome"]["summary"]
    assert summary["recoveries"] >= 1
    assert summary["rounds_run"] == cfg.rounds
    assert [r["round"] for r in result["outcome"]["history"]] == list(range(1, cfg.rounds + 1))
    assert_same_metrics(summary, unbroken)
    assert summary["modality_spearman"] == pytest.approx(unbroken["modality_spearman"], abs=1e-5)
    assert checkpoint.read(checkpoint.latest(tmp_path))[1]["round"] == cfg.rounds


def test_losing_the_parameter_server_ends_the_run_with_an_error_not_a_hang(ray_local, tiny, tmp_path):
    from ray.exceptions import RayError

    run = RayRun(config(rounds=30, shards=1), tiny, tmp_path).start()
    try:
        poll_until(run, rounds_done=1)
        ray_local.kill(run.server)   # the server keeps no replica: this is not recoverable
        result = wait_guarded(run)
    finally:
        run.close()
    assert "outcome" not in result, "a run without its parameter server cannot finish"
    assert isinstance(result["error"], RayError)
