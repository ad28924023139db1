"""Custom metrics of a run for the Ray dashboard and Prometheus, through `ray.util.metrics`.

Ray exports each under its name prefixed with `ray_` (a Counter also gains `_total`), so
Prometheus and `deploy/grafana/fedvlr-dashboard.json` see `ray_fedvlr_rounds_completed_total`,
`ray_fedvlr_shard_train_seconds`, ... Every metric carries the tag `run` (the run folder's name).
"""

from __future__ import annotations

from fedvlr_sim.engine.callbacks import Callback
from fedvlr_sim.engine.messages import RoundRecord


class RayMetrics(Callback):
    """Publishes, from the driver, rounds done, client updates per second, bytes put per round
    and valid metrics."""

    def __init__(self, run_name: str, server_proxy=None):
        from ray.util.metrics import Counter, Gauge

        tags = ("run",)
        self.server_proxy = server_proxy
        self.rounds = Counter("fedvlr_rounds_completed", description="Federated rounds completed.", tag_keys=tags)
        self.updates = Gauge("fedvlr_client_updates_per_second", description="Client updates per second in the last round.", tag_keys=tags)
        self.bytes_put = Gauge("fedvlr_bytes_put_per_round", description="Bytes of global tensors put in the object store per round.", tag_keys=tags)
        self.hr = Gauge("fedvlr_valid_hr_at_50", description="Validation HR@50.", tag_keys=tags)
        self.ndcg = Gauge("fedvlr_valid_ndcg_at_50", description="Validation NDCG@50.", tag_keys=tags)
        for metric in (self.rounds, self.updates, self.bytes_put, self.hr, self.ndcg):
            metric.set_default_tags({"run": run_name})

    def on_round_end(self, fed, record: RoundRecord) -> None:
        self.rounds.inc()
        self.updates.set(record.updates_per_second)
        if self.server_proxy is not None:
            self.bytes_put.set(self.server_proxy.bytes_put)
        if record.valid:
            self.hr.set(record.valid["hr@50"])
            self.ndcg.set(record.valid["ndcg@50"])


class ShardTiming:
    """Publishes, from inside a ClientShard, how long its last train call took (tags `run` and
    `shard`): the slowest shard sets the pace of every round."""

    def __init__(self, run_name: str, shard: int):
        from ray.util.metrics import Gauge

        self.seconds = Gauge("fedvlr_shard_train_seconds", description="Seconds the shard's last train call took.",
                             tag_keys=("run", "shard"))
        self.seconds.set_default_tags({"run": run_name, "shard": str(shard)})

    def record(self, seconds: float) -> None:
        self.seconds.set(seconds)
