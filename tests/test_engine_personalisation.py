"""Local state is personal and persistent (SPEC.md sections 2-3 and the release defects of
section 9): routers differ by user, rankings differ by user, and round t+1 starts from the state
round t ended with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.callbacks import BestRound
from fedvlr_sim.engine.simulation import local_federation
from helpers_engine import clone_state, make_cfg, make_dataset, make_population


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=10, n_items=24, min_train=3, max_train=8, seed=21)


def _different_history_users(dataset) -> tuple[int, int]:
    train = dataset.split == 0
    histories = [set(dataset.item[train & (dataset.user == u)].tolist()) for u in range(dataset.n_users)]
    for a in range(dataset.n_users):
        for b in range(a + 1, dataset.n_users):
            if histories[a] != histories[b]:
                return a, b
    raise AssertionError("dataset has no two users with different histories")


@pytest.fixture(scope="module")
def trained_ours(dataset):
    fed = local_federation(make_cfg(backbone="fcf", variant="ours", rounds=3), dataset)
    fed.run()
    return fed


def test_router_weights_are_a_distribution_over_views_per_user(trained_ours, dataset):
    weights = trained_ours.pool.router_weights(trained_ours.server.publish())
    assert weights.shape == (dataset.n_users, 6)   # sum, mlp, gate and the three modality views
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert (weights > 0).all()


def test_users_with_different_histories_get_different_router_weights(trained_ours, dataset):
    a, b = _different_history_users(dataset)
    weights = trained_ours.pool.router_weights(trained_ours.server.publish())
    assert not np.allclose(weights[a], weights[b], atol=1e-4)
    assert trained_ours.callback(BestRound).router_weights is not None, "the best round's router weights are kept"


def test_users_with_different_histories_get_different_rankings(trained_ours, dataset):
    a, b = _different_history_users(dataset)
    shard = trained_ours.pool.shards[0]
    scores = shard.scores(np.array([a, b]), trained_ours.server.publish())
    assert not torch.equal(scores[0].argsort(), scores[1].argsort())


@pytest.mark.parametrize("backbone,variant", [("fedavg", "none"), ("fcf", "none"), ("fedncf", "none"),
                                              ("pfedrec", "none"), ("fedrap", "none"), ("fedavg", "mlp")])
def test_every_backbone_gives_users_their_own_ranking_after_training(backbone, variant, dataset):
    fed = local_federation(make_cfg(backbone=backbone, variant=variant, rounds=1), dataset)
    fed.run()
    scores = fed.pool.shards[0].scores(np.arange(dataset.n_users), fed.server.publish())
    orders = {tuple(s.argsort(descending=True)[:10].tolist()) for s in scores}
    assert len(orders) > 1, "every user got the same ranking (local state lost?)"


@pytest.mark.parametrize("backbone,variant", [("fcf", "ours"), ("fedrap", "ours"), ("pfedrec", "none"),
                                              ("fedncf", "mlp")])
def test_round_starts_from_the_local_state_the_previous_round_ended_with(backbone, variant, dataset):
    cfg = make_cfg(backbone=backbone, variant=variant)
    users = np.arange(dataset.n_users)
    server, pop = make_population(cfg, dataset)
    initial = clone_state(pop.state_dict())
    glob1 = server.publish()
    pop.train(1, users, glob1)
    after_round_1 = clone_state(pop.state_dict())
    assert any(not torch.equal(initial[k], after_round_1[k]) for k in initial), "round 1 changed nothing"
    glob2 = {k: v.clone() for k, v in glob1.items()}  # same globals: only local state can differ
    upload_continued = pop.train(2, users, glob2)

    _, restored = make_population(cfg, dataset)
    restored.load_state_dict(after_round_1)
    upload_restored = restored.train(2, users, glob2)
    for k in pop.state_dict():
        assert torch.equal(pop.state_dict()[k], restored.state_dict()[k]), k
    for k in upload_continued.grads:
        assert torch.equal(upload_continued.grads[k], upload_restored.grads[k]), k

    _, fresh = make_population(cfg, dataset)       # a population that forgot round 1
    upload_fresh = fresh.train(2, users, glob2)
    assert not torch.allclose(upload_fresh.grads["views"], upload_continued.grads["views"])


def test_local_state_persists_across_rounds_of_a_federation(dataset):
    """Across real rounds (globals updated in between), round 2's update equals training a
    population restored from round 1's end state under round 2's globals."""
    cfg = make_cfg(backbone="fedrap", variant="ours", rounds=2)
    fed = local_federation(cfg, dataset)
    fed.run_round(1)
    snapshot = clone_state(fed.pool.shards[0].state_dict())
    glob2 = {k: v.clone() for k, v in fed.server.publish().items()}
    fed.run_round(2)
    _, restored = make_population(cfg, dataset)
    restored.load_state_dict(snapshot)
    restored.train(2, np.arange(dataset.n_users), glob2)
    for k, v in fed.pool.shards[0].state_dict().items():
        torch.testing.assert_close(v, restored.state_dict()[k], atol=0, rtol=0, msg=lambda m: f"{k}: {m}")


def test_router_stays_on_the_client_and_is_never_overwritten_by_the_server(trained_ours, dataset):
    fed = trained_ours
    server_names = [n for n, _ in fed.server.named_parameters()] + list(fed.server.state_dict())
    assert not any("router" in n for n in server_names)
    router = fed.pool.shards[0].state_dict()["router.w1"]
    assert router.shape[0] == dataset.n_users
    assert not torch.allclose(router[0], router[1])
