"""cluster.yaml is a real Ray cluster-launcher file: Ray's own schema validation accepts it, it
describes the head / GPU / CPU-worker layout the README promises, and its setup installs the
package. A broken variant of it is rejected by the same validation (the check has teeth)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def resources(cluster: dict, node_type: str) -> dict:
    return cluster["available_node_types"][node_type]["resources"]


def test_ray_validates_the_cluster_file(cluster):
    validate(cluster)


def test_it_has_a_head_a_gpu_node_type_and_a_cpu_worker_type(cluster):
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types
    workers = {name: spec for name, spec in types.items() if name != head}
    gpu = [name for name, spec in workers.items() if spec["resources"].get("GPU", 0) >= 1]
    cpu = [name for name, spec in workers.items()
           if spec["resources"].get("CPU", 0) >= 1 and not spec["resources"].get("GPU", 0)]
    assert gpu, "no GPU node type for the parameter server"
    assert cpu, "no CPU-only worker type for the client shards"
    # the GPU node is really started: a parameter server needs one
    assert any(types[name]["min_workers"] >= 1 for name in gpu)
    # client shards (1 CPU each) are kept off the head, which runs the driver and scheduler
    assert resources(cluster, head).get("CPU", 0) == 0
    # the autoscaler's global limit admits every type's minimum
    assert sum(spec.get("min_workers", 0) for spec in workers.values()) <= cluster["max_workers"]


def test_setup_installs_the_package(cluster):
    commands = cluster["setup_commands"] + cluster.get("head_setup_commands", []) + cluster.get("worker_setup_commands", [])
    installs = [c for c in commands if "pip install" in c and "fedvlr-sim" in c]
    assert installs, f"no setup command installs fedvlr-sim: {commands}"


def test_the_head_exposes_the_dashboard_and_metrics(cluster):
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in start and "--dashboard-host=0.0.0.0" in start and "--metrics-export-port" in start


def test_an_unknown_key_in_a_node_type_is_rejected(cluster):
    broken = copy.deepcopy(cluster)
    worker = next(name for name in broken["available_node_types"] if name != broken["head_node_type"])
    broken["available_node_types"][worker]["max_worker"] = 4   # a typo of max_workers
    with pytest.raises(ValidationError, match="max_worker"):
        validate(broken)


def test_a_node_type_without_resources_is_rejected(cluster):
    broken = copy.deepcopy(cluster)
    del broken["available_node_types"][broken["head_node_type"]]["resources"]
    with pytest.raises(ValidationError, match="resources"):
        validate(broken)
