"""Reproducibility: every random draw is keyed by (seed, round, user), so a run's result depends
on the seed only, never on how users are chunked or sharded; and client sampling (SPEC.md
section 5 step 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.federation import sample_clients
from fedvlr_sim.engine.simulation import local_federation
from helpers_engine import assert_close_dicts, history_of, make_cfg, make_dataset, run_federation, summary_metrics


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=14, n_items=24, min_train=2, max_train=9, seed=8)


def _run(dataset, n_shards=1, **overrides):
    cfg = make_cfg(rounds=2, **overrides)
    fed = local_federation(cfg, dataset, n_shards=n_shards)
    summary = run_federation(cfg, fed)
    return fed, summary


def _client_state(fed) -> dict[str, torch.Tensor]:
    """All users' local state, gathered across shards, in user order."""
    names = fed.pool.shards[0].state_dict().keys()
    return {k: torch.cat([s.state_dict()[k] for s in fed.pool.shards]) for k in names}


def _losses(fed) -> list[float]:
    return [r["loss"] for r in history_of(fed)]


CONFIGS = {
    "fcf+ours": dict(backbone="fcf", variant="ours"),
    "fedrap+ours sampled": dict(backbone="fedrap", variant="ours", sample_ratio=0.5),
    "fedncf+none dp": dict(backbone="fedncf", variant="none", dp_clip=0.05, dp_noise=0.5, batch_size=6),
}


@pytest.fixture(scope="module")
def baseline_runs(dataset):
    return {name: _run(dataset, **overrides) for name, overrides in CONFIGS.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_seed_gives_identical_result(name, dataset, baseline_runs):
    fed_a, summary_a = baseline_runs[name]
    fed_b, summary_b = _run(dataset, **CONFIGS[name])
    assert summary_metrics(summary_a) == summary_metrics(summary_b)
    assert _losses(fed_a) == _losses(fed_b)
    for k, v in fed_a.server.state_dict().items():
        assert torch.equal(v, fed_b.server.state_dict()[k]), k


@pytest.mark.parametrize("name", list(CONFIGS))
def test_result_does_not_depend_on_how_users_are_chunked(name, dataset, baseline_runs):
    fed_a, summary_a = baseline_runs[name]
    whole = fed_a.pool.shards[0]
    rows = np.arange(dataset.n_users)
    assert len(whole._chunks(rows, whole._train_cost)) == 1, "baseline trains everyone in one chunk"
    costs = [whole._train_cost(r) for r in rows]
    for budget in (1, 3 * max(costs)):
        fed_b, summary_b = _run(dataset, chunk_elements=budget, **CONFIGS[name])
        chunks = fed_b.pool.shards[0]._chunks(rows, fed_b.pool.shards[0]._train_cost)
        assert 1 < len(chunks) and any(len(c) > 1 for c in chunks) == (budget > 1)
        assert_close_dicts(summary_metrics(summary_b), summary_metrics(summary_a))
        np.testing.assert_allclose(_losses(fed_b), _losses(fed_a), rtol=1e-5, atol=1e-6)
        assert_close_dicts(_client_state(fed_b), _client_state(fed_a), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_result_does_not_depend_on_shard_count(name, dataset, baseline_runs):
    fed_a, summary_a = baseline_runs[name]
    fed_b, summary_b = _run(dataset, n_shards=3, **CONFIGS[name])
    assert len(fed_b.pool.shards) == 3
    assert_close_dicts(summary_metrics(summary_b), summary_metrics(summary_a))
    np.testing.assert_allclose(_losses(fed_b), _losses(fed_a), rtol=1e-5, atol=1e-6)
    assert_close_dicts(_client_state(fed_b), _client_state(fed_a), atol=1e-5, rtol=1e-4)
    for k, v in fed_a.server.state_dict().items():
        torch.testing.assert_close(fed_b.server.state_dict()[k], v, atol=1e-5, rtol=1e-5)


def test_different_seed_gives_different_result(dataset, baseline_runs):
    fed_a, _ = baseline_runs["fcf+ours"]
    fed_b, _ = _run(dataset, seed=1, **CONFIGS["fcf+ours"])
    assert _losses(fed_a) != _losses(fed_b)
    assert not torch.allclose(fed_a.server.fusion.ids, fed_b.server.fusion.ids)
    assert not torch.allclose(_client_state(fed_a)["user"], _client_state(fed_b)["user"])


def test_best_round_is_selected_on_valid_only(dataset, baseline_runs):
    fed, summary = baseline_runs["fcf+ours"]
    history = history_of(fed)
    valid = [r["valid_ndcg@50"] for r in history]
    assert summary["best_round"] == history[int(np.argmax(valid))]["round"]
    assert summary["valid"]["ndcg@50"] == max(valid)
    assert summary["selected_on"] == "valid ndcg@50"


# ------------------------------------------------------------------ client sampling
@pytest.mark.parametrize("n,ratio", [(10, 0.5), (7, 0.3), (20, 0.05), (9, 1 / 3), (13, 0.99), (5, 1.0)])
def test_sampling_draws_ceil_ratio_times_n_distinct_users(n, ratio):
    for round_idx in (1, 2, 7):
        users = sample_clients(0, round_idx, n, ratio)
        assert len(users) == math.ceil(ratio * n)
        assert len(set(users.tolist())) == len(users)
        assert users.min() >= 0 and users.max() < n


@pytest.mark.parametrize("n,ratio,expected", [(100, 0.07, 7), (100, 0.14, 14), (50, 0.14, 7)])
def test_sampling_exact_fractions_draw_exactly_that_many_users(n, ratio, expected):
    assert len(sample_clients(0, 1, n, ratio)) == expected


def test_sampling_depends_only_on_seed_and_round():
    a = sample_clients(3, 5, 40, 0.25)
    sample_clients(3, 6, 40, 0.25)           # other calls in between change nothing
    assert np.array_equal(sample_clients(3, 5, 40, 0.25), a)
    rounds = {tuple(sample_clients(3, r, 40, 0.25)) for r in range(1, 6)}
    seeds = {tuple(sample_clients(s, 5, 40, 0.25)) for s in range(5)}
    assert len(rounds) > 1 and len(seeds) > 1


def test_sampling_is_roughly_uniform_over_users():
    counts = np.zeros(20)
    for round_idx in range(1, 401):
        counts[sample_clients(0, round_idx, 20, 0.25)] += 1
    expected = 400 * 5 / 20
    assert np.abs(counts - expected).max() < 0.3 * expected


def test_federation_round_trains_exactly_the_sampled_clients(dataset, baseline_runs):
    fed, _ = baseline_runs["fedrap+ours sampled"]
    for record in history_of(fed):
        assert record["clients"] == len(sample_clients(0, record["round"], dataset.n_users, 0.5))
    # unsampled users of round 1 keep their initial state after round 1 only
    fresh = local_federation(make_cfg(rounds=1, **CONFIGS["fedrap+ours sampled"]), dataset)
    initial = {k: v.clone() for k, v in fresh.pool.shards[0].state_dict().items()}
    fresh.run_round(1)
    sampled = sample_clients(0, 1, dataset.n_users, 0.5)
    others = np.setdiff1d(np.arange(dataset.n_users), sampled)
    state = fresh.pool.shards[0].state_dict()
    assert torch.equal(state["head.w"][others], initial["head.w"][others])
    assert not torch.equal(state["head.w"][sampled], initial["head.w"][sampled])


def test_result_does_not_depend_on_chunking_when_users_trained_on_item_zero():
    ds = make_dataset(n_users=14, n_items=24, min_train=2, max_train=9, seed=8, train_item0=True)
    train = ds.split == 0
    counts = np.bincount(ds.user[train], minlength=ds.n_users)
    item0_users = np.unique(ds.user[train & (ds.item == 0)])
    assert (counts[item0_users] < counts.max()).any(), "need a padded user with item 0 in train"
    results = []
    for budget in (1 << 24, 1):
        fed, summary = _run(ds, chunk_elements=budget)
        results.append((summary_metrics(summary), _losses(fed)))
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)
    assert_close_dicts(results[1][0], results[0][0])
