"""What a Ray cluster shows of a run: the fedvlr_* custom metrics (ray.util.metrics) and actors
named after their role and run, as the README promises for the dashboard.

The test session's Ray instance exports no metrics, so these metrics checks are smoke tests: the
metric objects are created in a Ray session and accept round records and shard timings
(tests/test_ray_job_submit.py scrapes a real head's export)."""

from __future__ import annotations

import time

from fedvlr_sim.actors.metrics import RayMetrics, ShardTiming
from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.messages import RoundRecord
from fedvlr_sim.engine.simulation import problem_of

EVALUATED_ROUND = RoundRecord(round=2, loss=0.6, clients=300, grad_norm=1.0, train_seconds=0.2,
                              updates_per_second=1234.5, valid={"hr@50": 0.21, "ndcg@50": 0.07})
TRAINING_ONLY_ROUND = RoundRecord(round=3, loss=0.5, clients=300, grad_norm=1.0, train_seconds=0.3,
                                  updates_per_second=987.0)


class ServerStub:
    bytes_put = 4096


def test_run_metrics_accept_round_records_inside_the_ray_session(ray_local):
    metrics = RayMetrics("test-run", ServerStub())
    metrics.on_round_end(None, EVALUATED_ROUND)
    # a round without evaluation (eval_every > 1) has no valid metrics: still recorded
    metrics.on_round_end(None, TRAINING_ONLY_ROUND)


def test_a_shard_records_its_train_seconds_inside_the_ray_session(ray_local):
    ShardTiming("test-run", 0).record(0.25)


def test_actors_are_named_by_role_and_run_and_removed_when_closed(ray_local, tiny):
    cfg = RunConfig.create(dataset="synthetic:tiny", backbone="fcf", variant="none", dim=16, rounds=1,
                           local_epochs=1, checkpoint_every=0, seed=0, shards=2)
    with open_backend(cfg, tiny, problem_of(tiny), "named-run"):
        names = set(ray_local.util.list_named_actors())
        ours = {n for n in names if n.startswith("fedvlr-") and "named-run" in n}
        assert {n.split("named-run")[0] for n in ours} == {
            "fedvlr-parameter-server-", "fedvlr-shard-0-", "fedvlr-shard-1-"}
        assert len({n.split("named-run")[1] for n in ours}) == 1, "one run tag shared by all its actors"
    deadline = time.monotonic() + 30
    while ours & set(ray_local.util.list_named_actors()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ours & set(ray_local.util.list_named_actors())
