"""What the shipped Grafana dashboard queries and what a run exports, both as Prometheus names."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD_JSON = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "fedvlr-dashboard.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def promql_of(board: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    targets = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    variables = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return targets + variables


def queried_metrics() -> set[str]:
    """The `ray_fedvlr_*` series the dashboard queries."""
    return {name for expr in promql_of(dashboard()) for name in re.findall(r"\bray_fedvlr_\w+", expr)}


def prometheus_name(metric) -> str:
    """The name Ray exports a `ray.util.metrics` metric under: `ray_` first, `_total` after a
    Counter's name (OpenTelemetry's Prometheus convention)."""
    from ray.util.metrics import Counter

    return f"ray_{metric.info['name']}" + ("_total" if isinstance(metric, Counter) else "")


def exported_metrics() -> set[str]:
    """The Prometheus names of every metric fedvlr_sim.actors creates: the driver's RayMetrics
    and a ClientShard's ShardTiming, constructed here (needs a Ray session)."""
    from ray.util.metrics import Metric

    from fedvlr_sim.actors.metrics import RayMetrics, ShardTiming

    owners = (RayMetrics("names"), ShardTiming("names", 0))
    return {prometheus_name(value) for owner in owners for value in vars(owner).values() if isinstance(value, Metric)}
