"""Shared fixtures of the Ray-backend and CLI tests.

One Ray session serves the whole test session (`ray.init` costs seconds here); it is a private
local instance with a logical CPU count of 4, so three client shards and the scheduler fit.
`fedvlr_sim.actors.launch.ray_session` reuses an initialised session, so code under test that
opens its own session (runs, bench) joins this one instead of starting another.
"""

from __future__ import annotations

import math
import os

import pytest

METRIC_PARTS = ("valid", "test", "test_cold", "test_warm")


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance for the whole test session (never `ray stop`)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, num_cpus=4, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The built-in 300-user synthetic world drawn with seed 0 (in memory, no files). Runs on it
    must use seed 0 too: Ray shards regenerate their users' data from the config's seed."""
    from fedvlr_sim.datasets import load_dataset

    return load_dataset("synthetic:tiny", tmp_path_factory.mktemp("data"), seed=0)


@pytest.fixture(scope="session")
def assert_same_metrics():
    """Check that two run summaries report the same ranking metrics (valid, test, cold, warm)
    and the same selected round, to `tol`."""

    def check(actual: dict, expected: dict, tol: float = 1e-5) -> None:
        assert actual["best_round"] == expected["best_round"]
        assert actual["rounds_run"] == expected["rounds_run"]
        for part in METRIC_PARTS:
            assert set(actual[part]) == set(expected[part]), part
            for key, want in expected[part].items():
                got = actual[part][key]
                if want is None or (isinstance(want, float) and math.isnan(want)):
                    assert got is None or (isinstance(got, float) and math.isnan(got)), f"{part}/{key}: {got} != {want}"
                else:
                    assert got == pytest.approx(want, abs=tol), f"{part}/{key}: {got} != {want}"

    return check
