"""What a Ray cluster shows of a run: the fedvlr_* custom metrics (ray.util.metrics) and actors
named after their role and run, as the README promises for the dashboard.

The Prometheus export is not reachable in tests, so the metrics check is a smoke test: the
metric objects are created inside the Ray session and accept round records."""

from __future__ import annotations

import time

from fedvlr_sim.actors.launch import RayRun
from fedvlr_sim.actors.scheduler import RunMetrics
from fedvlr_sim.config import RunConfig

EVALUATED_ROUND = {"round": 2, "loss": 0.6, "clients": 300, "updates_per_second": 1234.5,
                   "valid_hr@50": 0.21, "valid_ndcg@50": 0.07}
TRAINING_ONLY_ROUND = {"round": 3, "loss": 0.5, "clients": 300, "updates_per_second": 987.0}


def test_run_metrics_accept_round_records_inside_the_ray_session(ray_local):
    @ray_local.remote(num_cpus=0)
    class MetricsHost:
        def __init__(self, run_name):
            self.metrics = RunMetrics(run_name)

        def record(self, record, bytes_put):
            self.metrics.record(record, bytes_put)
            return True

    host = MetricsHost.remote("test-run")
    try:
        assert ray_local.get(host.record.remote(EVALUATED_ROUND, 4096), timeout=60) is True
        # a round without evaluation (eval_every > 1) has no valid metrics: still recorded
        assert ray_local.get(host.record.remote(TRAINING_ONLY_ROUND, 4096), timeout=60) is True
    finally:
        ray_local.kill(host)


def test_actors_are_named_by_role_and_run_and_removed_when_closed(ray_local, tiny, tmp_path):
    cfg = RunConfig(dataset="synthetic:tiny", backbone="fcf", variant="none", dim=16, rounds=1,
                    local_epochs=1, checkpoint_every=0, seed=0, shards=2).validate()
    run_dir = tmp_path / "named-run"
    run = RayRun(cfg, tiny, run_dir)
    try:
        names = set(ray_local.util.list_named_actors())
        ours = {n for n in names if n.startswith("fedvlr-") and "named-run" in n}
        assert {n.split("named-run")[0] for n in ours} == {
            "fedvlr-scheduler-", "fedvlr-parameter-server-", "fedvlr-shard-0-", "fedvlr-shard-1-"}
        assert len({n.split("named-run")[1] for n in ours}) == 1, "one run tag shared by all its actors"
    finally:
        run.close()
    deadline = time.monotonic() + 30
    while ours & set(ray_local.util.list_named_actors()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ours & set(ray_local.util.list_named_actors())
