"""Data reaches every client shard through the object store: the driver reads the prepared
dataset once and puts each shard's users' data there, so no other node needs `--data-dir` (a
cluster needs shared storage only for run folders), and each shard proves what it received."""

from __future__ import annotations

import pytest

from fedvlr_sim.backends import open_backend
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.simulation import problem_of
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.runner import train


def config(tmp_path) -> RunConfig:
    # names a dataset prepared nowhere, in a data folder that does not exist: only the driver's
    # dataset (the in-memory `tiny` world) can feed the shards
    return RunConfig.create(dataset="ML", data_dir=str(tmp_path / "absent"), backbone="fcf", variant="none", dim=8,
                            rounds=2, local_epochs=1, checkpoint_every=0, seed=0, shards=2)


def test_shards_train_on_data_only_the_driver_holds(ray_local, tiny, tmp_path, assert_same_metrics):
    cfg = config(tmp_path)
    on_ray = train(cfg, tiny).summary.to_dict()
    assert on_ray["shards"] == 2
    assert_same_metrics(on_ray, train(cfg.replace(backend="local"), tiny).summary.to_dict())


def test_shards_that_received_other_data_than_the_driver_sent_are_refused(ray_local, tiny, tmp_path, monkeypatch):
    # the driver's fingerprints are altered; the shards (other processes) report the true ones
    monkeypatch.setattr(UserData, "fingerprint", lambda self: "altered")
    with pytest.raises(FedVLRError, match="received different user data"):
        with open_backend(config(tmp_path), tiny, problem_of(tiny), "altered-run"):
            pass
