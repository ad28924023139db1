"""Same answers everywhere: one configuration gives the same metrics in process
(`--backend local`) and on Ray with 1, 2 or 3 client shards, because every random draw is keyed
by (seed, round, user) and the shards run the very same engine code."""

from __future__ import annotations

import numpy as np
import pytest

from fedvlr_sim.config import RunConfig
from fedvlr_sim.runner import train

CONFIGS = {
    # the fusion variant with private routers, on a backbone with personal item tables (FedRAP),
    # two local epochs
    "fedrap+ours": dict(backbone="fedrap", variant="ours", rounds=3, local_epochs=2),
    # personal item tables (PFedRec), ID only, half of the clients sampled each round, Adam on
    # the server
    "pfedrec+none sampled": dict(backbone="pfedrec", variant="none", rounds=3, local_epochs=1,
                                 sample_ratio=0.5, server_optimizer="adam", server_lr=0.01),
}
# Every Ray run starts fresh actor processes (seconds each on this small machine): all shard
# counts for the router variant, the largest one for the sampled table backbone.
CASES = [("fedrap+ours", 1), ("fedrap+ours", 2), ("fedrap+ours", 3), ("pfedrec+none sampled", 3)]


def config(name: str, **extra) -> RunConfig:
    # seed 0: the seed the `tiny` world was generated with
    return RunConfig.create(dataset="synthetic:tiny", dim=16, checkpoint_every=0, seed=0,
                     **CONFIGS[name], **extra)


@pytest.fixture(scope="module")
def local_outcomes(tiny):
    """The in-process result of every configuration (the reference the Ray runs must match)."""
    return {name: train(config(name, backend="local"), tiny) for name in CONFIGS}


@pytest.mark.parametrize(("name", "shards"), CASES)
def test_ray_run_matches_the_local_backend(name, shards, ray_local, tiny, local_outcomes, tmp_path,
                                           assert_same_metrics):
    expected = local_outcomes[name]
    outcome = train(config(name, backend="ray", shards=shards), tiny, tmp_path)
    summary = outcome.summary.to_dict()

    assert summary["shards"] == shards
    assert summary["recoveries"] == 0
    assert_same_metrics(summary, expected.summary.to_dict())
    assert [r.round for r in outcome.history] == [r.round for r in expected.history]
    assert [r.clients for r in outcome.history] == [r.clients for r in expected.history]
    np.testing.assert_allclose([r.loss for r in outcome.history],
                               [r.loss for r in expected.history], rtol=1e-5, atol=1e-6)
    if CONFIGS[name]["variant"] == "ours":
        np.testing.assert_allclose(np.asarray(outcome.router_weights),
                                   np.asarray(expected.router_weights), atol=1e-5)
    else:
        assert outcome.router_weights is None


def test_the_compared_results_are_not_degenerate(local_outcomes):
    """The equality above means something: no run is all hits or all misses, routers produce a
    mixture per user, and with sampling only part of the clients train each round."""
    for name, outcome in local_outcomes.items():
        assert 0 < outcome.summary.test["hr@50"] < 1, name
        assert 0 < outcome.summary.valid["ndcg@50"] < 1, name
        assert outcome.summary.rounds_run == CONFIGS[name]["rounds"]
    sampled = local_outcomes["pfedrec+none sampled"].history
    assert all(r.clients == 150 for r in sampled)
    router = np.asarray(local_outcomes["fedrap+ours"].router_weights)
    assert router.shape == (300, 6)
    np.testing.assert_allclose(router.sum(axis=1), 1.0, atol=1e-5)
