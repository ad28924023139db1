"""cluster.yaml is a real Ray cluster-launcher file: Ray's own schema validation accepts it, it
describes the head / GPU / CPU-worker layout the README promises, every node installs the working
tree with the tested versions (CPU-only torch where there is no GPU) and mounts shared storage for
run folders, and the dashboard is reached through an SSH tunnel, not an open port. A broken
variant of it is rejected by the same validation (the check has teeth)."""

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


def setup_of(cluster: dict, node_type: str) -> list[str]:
    """The setup commands a node of `node_type` runs, composed as Ray's autoscaler does:
    setup_commands + head_/worker_setup_commands, unless the node type has its own list."""
    prepared = prepare_config(copy.deepcopy(cluster))
    if node_type == prepared["head_node_type"]:
        return prepared["head_setup_commands"]
    return prepared["available_node_types"][node_type].get("worker_setup_commands",
                                                           prepared["worker_setup_commands"])


def node_types(cluster: dict) -> list[str]:
    return list(cluster["available_node_types"])


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c]


def test_every_node_installs_the_mounted_working_tree_with_the_tested_versions(cluster):
    (tree,) = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    for node_type in node_types(cluster):
        installs = pip_installs(setup_of(cluster, node_type))
        assert any(c.rstrip().endswith(f" {tree}") for c in installs), f"{node_type} does not install {tree}"
        for command in installs:
            assert f"-c {tree}/constraints-ci.txt" in command, f"{node_type}: {command}"


def test_cpu_only_nodes_install_cpu_torch_before_the_project_and_the_gpu_node_keeps_cuda(cluster):
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    for node_type in node_types(cluster):
        installs = pip_installs(setup_of(cluster, node_type))
        from_cpu_index = [i for i, c in enumerate(installs) if cpu_index in c]
        if resources(cluster, node_type).get("GPU", 0):
            assert not from_cpu_index, f"{node_type} would lose CUDA"
        else:
            assert from_cpu_index and from_cpu_index[0] < len(installs) - 1, f"{node_type}: {installs}"
            assert "torch torchvision" in installs[from_cpu_index[0]]


def test_every_node_mounts_shared_storage_for_run_folders_at_a_marked_placeholder(cluster):
    for node_type in node_types(cluster):
        mounts = [c for c in setup_of(cluster, node_type) if "mount -t nfs" in c]
        assert len(mounts) == 1 and " /shared" in mounts[0], node_type
        assert "REPLACE" in mounts[0]


def test_the_dashboard_is_reached_through_a_tunnel_and_its_metrics_page_is_configured(cluster):
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in start and "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    assert "--metrics-export-port" in start
    assert "RAY_PROMETHEUS_HOST=" in start and "RAY_GRAFANA_HOST=" in start


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
