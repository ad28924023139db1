"""Checkpoints: a run stopped after k rounds and restored into a fresh federation finishes with
exactly the result of an uninterrupted run (all randomness is keyed by round)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlr_sim.engine import checkpoint
from fedvlr_sim.engine.simulation import local_federation
from helpers_engine import history_of, make_cfg, make_dataset, run_federation, summary_metrics


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=10, n_items=20, min_train=2, max_train=7, seed=31)


CONFIGS = {
    "fedrap+ours sgd": dict(backbone="fedrap", variant="ours"),
    "pfedrec+none adam sampled": dict(backbone="pfedrec", variant="none", server_optimizer="adam",
                                      server_lr=0.05, sample_ratio=0.6),
    "fedncf+mlp dp": dict(backbone="fedncf", variant="mlp", dp_clip=0.05, dp_noise=0.3),
}


def _interrupt_after(k):
    def on_round(record):
        if record.round == k + 1:     # round k+1 is lost: its checkpoint is never written
            raise Interrupted
    return on_round


@pytest.mark.parametrize("name", list(CONFIGS))
def test_restored_run_finishes_with_the_uninterrupted_result(name, dataset, tmp_path):
    cfg = make_cfg(rounds=4, checkpoint_every=1, **CONFIGS[name])
    uninterrupted = local_federation(cfg, dataset)
    expected = run_federation(cfg, uninterrupted)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert checkpoint.latest(run_dir) is None
    first = local_federation(cfg, dataset, run_dir=run_dir, on_round=_interrupt_after(2))
    with pytest.raises(Interrupted):
        first.run()
    folder = checkpoint.latest(run_dir)
    assert folder is not None

    resumed = local_federation(cfg, dataset, run_dir=run_dir)
    resumed.restore(folder)
    assert resumed.round == 2
    got = run_federation(cfg, resumed)
    assert got["rounds_run"] == 4
    assert summary_metrics(got) == summary_metrics(expected)
    assert [r["loss"] for r in history_of(resumed)] == [r["loss"] for r in history_of(uninterrupted)]
    for k, v in uninterrupted.server.state_dict().items():
        assert torch.equal(resumed.server.state_dict()[k], v), k
    for k, v in uninterrupted.pool.shards[0].state_dict().items():
        assert torch.equal(resumed.pool.shards[0].state_dict()[k], v), k


def test_restore_into_a_different_shard_layout_gives_the_same_result(dataset, tmp_path):
    cfg = make_cfg(rounds=3, checkpoint_every=1, backbone="fedrap", variant="ours")
    expected = run_federation(cfg, local_federation(cfg, dataset))
    first = local_federation(cfg, dataset, run_dir=tmp_path, on_round=_interrupt_after(1), n_shards=3)
    with pytest.raises(Interrupted):
        first.run()
    resumed = local_federation(cfg, dataset, run_dir=tmp_path, n_shards=2)
    resumed.restore(checkpoint.latest(tmp_path))
    got = run_federation(cfg, resumed)
    metrics_got, metrics_expected = summary_metrics(got), summary_metrics(expected)
    assert metrics_got.keys() == metrics_expected.keys()
    for key in metrics_expected:
        assert metrics_got[key] == pytest.approx(metrics_expected[key], abs=1e-5, nan_ok=True), key


def test_checkpoint_holds_every_users_local_state_and_the_loop_position(dataset, tmp_path):
    cfg = make_cfg(rounds=2, checkpoint_every=1, backbone="pfedrec", variant="ours")
    fed = local_federation(cfg, dataset, run_dir=tmp_path, n_shards=2)
    fed.run()
    folder = checkpoint.latest(tmp_path)
    server_state, loop_state = checkpoint.read(folder)
    assert loop_state["round"] == 2 and len(loop_state["callbacks"]["history"]["records"]) == 2
    users = np.arange(dataset.n_users)
    state = checkpoint.load_users_state(folder, users)
    live = {k: torch.cat([s.state_dict()[k] for s in fed.pool.shards]) for k in fed.pool.shards[0].state_dict()}
    assert state.keys() == live.keys()
    for k in live:
        assert torch.equal(state[k], live[k]), k
    assert not (tmp_path / "checkpoint.tmp").exists(), "the temporary folder is renamed into place"
