"""Evaluation of SPEC.md section 6: ranks of held-out items, HR/NDCG@K, reference rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.metrics import expected_random_metrics, metrics_from_ranks, reference_scores
from fedvlr_sim.engine.simulation import local_federation, problem_of
from fedvlr_sim.engine.userdata import UserData
from helpers_engine import dataset_from_lists, make_cfg, make_dataset, make_population, run_federation


def _data(n_items, train, valid, test) -> UserData:
    ds = dataset_from_lists(n_items, train, valid, test)
    return problem_of(ds).data


def _rank_by_hand(scores: np.ndarray, target: int, masked: set[int]) -> int:
    """Number of unmasked items other than the target scoring at least as high as the target."""
    return sum(1 for i, s in enumerate(scores) if i != target and i not in masked and s >= scores[target])


# ------------------------------------------------------------------ HR / NDCG
def test_hr_and_ndcg_at_k_by_hand_on_a_tiny_ranking():
    ranks = np.array([0, 3, 9, 10, 19, 20, 49, 50, 120])
    out = metrics_from_ranks(ranks)
    n = len(ranks)
    for k in (10, 20, 50):
        hits = [r for r in ranks if r < k]
        assert out[f"hr@{k}"] == pytest.approx(len(hits) / n)
        assert out[f"ndcg@{k}"] == pytest.approx(sum(1 / math.log2(r + 2) for r in hits) / n)
    assert out["hr@10"] == pytest.approx(3 / 9)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 9)


def test_top_rank_scores_one_and_rank_k_scores_zero():
    assert metrics_from_ranks(np.array([0]))["ndcg@10"] == 1.0
    assert metrics_from_ranks(np.array([10]))["hr@10"] == 0.0
    assert metrics_from_ranks(np.array([10]))["ndcg@10"] == 0.0
    assert metrics_from_ranks(np.array([9]))["hr@10"] == 1.0


# ------------------------------------------------------------------ ranks and masking
def test_rank_of_held_out_item_among_unmasked_items_by_hand():
    train = [[1, 2], [3, 4, 5]]
    data = _data(8, train, valid=[6, 7], test=[7, 0])
    scores = torch.tensor([[0.9, 5.0, 4.0, 0.1, 0.7, 0.2, 0.5, 0.6],
                           [0.3, 0.1, 0.2, 9.0, 8.0, 7.0, 0.0, 0.4]])
    valid_ranks = data.rank_targets(np.array([0, 1]), scores, "valid")
    assert list(valid_ranks) == [_rank_by_hand(scores[0].numpy(), 6, {1, 2}),
                                 _rank_by_hand(scores[1].numpy(), 7, {3, 4, 5})]
    # user 0: unmasked 0 (0.9), 3, 4 (0.7), 5, 6 (0.5), 7 (0.6) -> 0, 4, 7 above valid item 6
    assert valid_ranks[0] == 3


def test_held_out_item_is_never_masked_even_when_it_is_also_a_train_item():
    # user 0 re-consumes item 2 at test time, user 1 re-consumes item 3 at valid time
    data = _data(6, [[1, 2], [3, 4]], valid=[5, 3], test=[2, 5])
    scores = torch.tensor([[0.0, 9.0, 8.0, 1.0, 1.0, 1.0],
                           [0.0, 0.0, 0.0, 7.0, 9.0, 1.0]])
    test = data.rank_targets(np.array([0, 1]), scores, "test")
    valid = data.rank_targets(np.array([0, 1]), scores, "valid")
    assert test[0] == 0, "test item 2 is also a train item but must stay in the ranking"
    assert valid[1] == 0, "valid item 3 is also a train item but must stay in the ranking"


def test_item_zero_is_not_masked_for_users_who_never_interacted_with_it():
    data = _data(5, [[1, 2], [2, 3, 4]], valid=[3, 1], test=[4, 0])
    scores = torch.tensor([[9.0, 0.0, 0.0, 1.0, 1.0],
                           [9.0, 0.0, 0.0, 0.0, 0.0]])
    valid = data.rank_targets(np.array([0, 1]), scores, "valid")
    # item 0 (score 9) is a competitor for both users: nobody trained on it
    assert valid[0] == _rank_by_hand(scores[0].numpy(), 3, {1, 2}) >= 1
    assert valid[1] == _rank_by_hand(scores[1].numpy(), 1, {2, 3, 4}) >= 1


def test_item_zero_is_masked_for_a_user_who_trained_on_it_alone_in_a_batch():
    data = _data(5, [[0, 2]], valid=[3], test=[4])
    scores = torch.tensor([[9.0, 0.0, 0.0, 1.0, 1.0]])
    assert data.rank_targets(np.array([0]), scores, "valid")[0] == _rank_by_hand(scores[0].numpy(), 3, {0, 2})


def test_item_zero_is_masked_for_a_user_who_trained_on_it_beside_longer_histories():
    # user 0 trained on item 0 and has the shorter history, so its row is padded
    data = _data(6, [[0, 2], [1, 2, 3, 4]], valid=[3, 5], test=[4, 0])
    scores = torch.tensor([[9.0, 0.0, 0.0, 1.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    ranks = data.rank_targets(np.array([0, 1]), scores, "valid")
    assert ranks[0] == _rank_by_hand(scores[0].numpy(), 3, {0, 2})


def test_item_zero_is_never_drawn_as_negative_for_a_user_who_trained_on_it():
    ds = dataset_from_lists(4, [[0], [1, 2]], valid=[2, 3], test=[3, 0])
    cfg = make_cfg(backbone="fcf", variant="none", local_epochs=5, neg_ratio=8)
    _, pop = make_population(cfg, ds)
    rows = np.array([0, 1])
    hist, mask = pop.data.padded_history(rows)
    negatives = pop.negatives(1, rows, hist, mask)
    drawn = negatives[0][mask[0].bool()[None, :, None].expand(cfg.client.local_epochs, -1, cfg.client.neg_ratio)]
    assert 0 not in set(drawn.tolist())


def test_negatives_are_items_outside_the_users_train_set():
    ds = make_dataset(n_users=6, n_items=15, seed=2)
    cfg = make_cfg(backbone="fcf", variant="none", local_epochs=3, neg_ratio=4)
    _, pop = make_population(cfg, ds)
    rows = np.arange(ds.n_users)
    hist, mask = pop.data.padded_history(rows)
    negatives = pop.negatives(1, rows, hist, mask)
    drawn_anything = set()
    for row in rows:
        train = set(hist[row][mask[row].bool()].tolist())
        real = negatives[row][:, mask[row].bool()]
        assert not train & set(real.reshape(-1).tolist())
        assert int(real.min()) >= 0 and int(real.max()) < ds.n_items
        drawn_anything |= set(real.reshape(-1).tolist())
    assert len(drawn_anything) > ds.n_items // 2, "negatives look far from uniform"


def _drawn_negatives(pop, rows) -> list[np.ndarray]:
    """Each row's negatives at its real positions, over every epoch."""
    hist, mask = pop.data.padded_history(rows)
    negatives = pop.negatives(1, rows, hist, mask)
    return [negatives[i][:, mask[i].bool()].reshape(-1).numpy() for i in range(len(rows))]


def test_uniform_negatives_are_equally_likely_among_the_items_outside_the_train_set():
    # user 0's train items are scattered (0, 4, 5 and the last item, 11): every other item is
    # drawn with probability 1/8
    ds = dataset_from_lists(12, [[0, 4, 5, 11], [1, 2]], valid=[3, 3], test=[6, 6])
    cfg = make_cfg(backbone="fcf", variant="none", local_epochs=400, neg_ratio=50)
    _, pop = make_population(cfg, ds)
    counts = np.bincount(_drawn_negatives(pop, np.array([0]))[0], minlength=12)
    assert counts[[0, 4, 5, 11]].sum() == 0
    free = np.setdiff1d(np.arange(12), [0, 4, 5, 11])
    np.testing.assert_allclose(counts[free] / counts.sum(), 1 / 8, atol=0.01)


def test_popularity_weighted_negatives_follow_the_train_count_to_the_power_beta():
    # items 0..3 have 1, 2, 3 and 4 train users (users 1-4 train on 0.., user 0 trains on nothing
    # of them); item 4 is never in train, item 5 is user 0's own train item
    train = [[5], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ds = dataset_from_lists(7, train, valid=[6] * 5, test=[4] * 5)
    cfg = make_cfg(backbone="fcf", variant="none", local_epochs=400, neg_ratio=50, neg_popularity=1.0)
    _, pop = make_population(cfg, ds)
    drawn = _drawn_negatives(pop, np.array([0]))[0]
    counts = np.bincount(drawn, minlength=7)
    assert counts[4] == 0 and counts[5] == 0 and counts[6] == 0, "never-trained and own train items are never drawn"
    share = counts[:4] / counts[:4].sum()
    np.testing.assert_allclose(share, np.array([1, 2, 3, 4]) / 10, atol=0.02)


@pytest.mark.parametrize("beta", [500.0, 1e300])
def test_a_huge_popularity_exponent_draws_the_most_popular_free_item_not_uniform(beta):
    # counts^beta overflows float64 here; the draw must still follow the counts, not fall back
    train = [[5], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ds = dataset_from_lists(7, train, valid=[6] * 5, test=[4] * 5)
    cfg = make_cfg(backbone="fcf", variant="none", local_epochs=20, neg_ratio=10, neg_popularity=beta)
    _, pop = make_population(cfg, ds)
    assert set(_drawn_negatives(pop, np.array([0]))[0].tolist()) == {3}     # item 3 has the most train users
    assert set(_drawn_negatives(pop, np.array([4]))[0].tolist()) == {2}     # user 4 trains on item 3 itself


def test_zero_popularity_exponent_is_the_uniform_draw_and_a_user_with_nothing_weighted_falls_back_to_it():
    ds = make_dataset(n_users=6, n_items=15, seed=2)
    rows = np.arange(ds.n_users)
    uniform = _drawn_negatives(make_population(make_cfg(backbone="fcf", variant="none"), ds)[1], rows)
    explicit = _drawn_negatives(make_population(make_cfg(backbone="fcf", variant="none", neg_popularity=0.0), ds)[1],
                                rows)
    assert all(np.array_equal(a, b) for a, b in zip(uniform, explicit))
    # user 0 trains on item 0, the only item anyone trains on: its only candidates are never-trained
    lonely = dataset_from_lists(4, [[0], [0]], valid=[1, 2], test=[2, 3])
    _, pop = make_population(make_cfg(backbone="fcf", variant="none", local_epochs=50, neg_popularity=1.0), lonely)
    assert set(_drawn_negatives(pop, np.array([0]))[0].tolist()) == {1, 2, 3}


def test_valid_item_is_masked_at_test_time_but_test_item_competes_at_valid_time():
    data = _data(6, [[1, 2]], valid=[3], test=[4])
    scores = torch.tensor([[0.0, 0.0, 0.0, 5.0, 4.0, 0.0]])
    assert data.rank_targets(np.array([0]), scores, "test")[0] == 0          # valid item 3 masked
    scores = torch.tensor([[0.0, 0.0, 0.0, 4.0, 5.0, 0.0]])
    assert data.rank_targets(np.array([0]), scores, "valid")[0] == 1         # test item 4 ranks above


def test_ties_count_against_the_model():
    data = _data(7, [[1, 2]], valid=[3], test=[4])
    scores = torch.zeros(1, 7)
    n_unmasked = 7 - 2
    assert data.rank_targets(np.array([0]), scores, "valid")[0] == n_unmasked - 1
    assert data.rank_targets(np.array([0]), scores, "test")[0] == n_unmasked - 2   # valid masked too
    assert metrics_from_ranks(data.rank_targets(np.array([0]), scores, "valid"))["ndcg@10"] < 1.0


# ------------------------------------------------------------------ reference rankings
def test_popularity_reference_orders_items_by_train_count_then_lower_id():
    counts = np.array([3, 0, 5, 3, 1, 0])
    order = list(np.argsort(-reference_scores(counts)["popularity"], kind="stable"))
    assert order == sorted(range(len(counts)), key=lambda i: (-counts[i], i))


def test_cold_first_reference_puts_never_trained_items_first_then_popularity():
    counts = np.array([3, 0, 5, 3, 1, 0])
    order = list(np.argsort(-reference_scores(counts)["cold_first"], kind="stable"))
    cold = {i for i in range(len(counts)) if counts[i] == 0}
    warm = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    assert set(order[:len(cold)]) == cold and order[len(cold):] == warm


def test_cold_first_orders_cold_items_at_random_from_the_seed_not_by_id():
    counts = np.zeros(40)
    counts[:5] = [9, 8, 7, 6, 5]
    orders = {seed: tuple(np.argsort(-reference_scores(counts, seed)["cold_first"])[:35]) for seed in range(4)}
    assert orders[0] == tuple(np.argsort(-reference_scores(counts, 0)["cold_first"])[:35]), "seeded"
    assert tuple(range(5, 40)) not in orders.values(), "never the id order"
    assert len(set(orders.values())) > 1


def test_random_reference_is_the_exact_expectation_of_a_uniform_ranking():
    candidates = np.array([1, 7, 60, 200])
    got = expected_random_metrics(candidates)
    rng = np.random.default_rng(0)
    draws = np.stack([rng.integers(0, n, size=200_000) for n in candidates], axis=1)
    simulated = metrics_from_ranks(draws.reshape(-1))   # users equally weighted: same draws each
    for key in got:
        assert got[key] == pytest.approx(simulated[key], abs=3e-3), key
    assert got["hr@50"] == pytest.approx(np.mean([1, 1, 50 / 60, 50 / 200]))


def test_a_non_finite_score_ranks_last_never_first():
    data = _data(6, [[1]], valid=[2], test=[3])
    nan_target = torch.tensor([[0.0, 0.0, float("nan"), 0.5, -1.0, 2.0]])
    assert data.rank_targets(np.array([0]), nan_target, "valid")[0] == 4        # 5 candidates: last
    all_nan = torch.full((1, 6), float("nan"))
    assert data.rank_targets(np.array([0]), all_nan, "valid")[0] == 4
    inf_elsewhere = torch.tensor([[0.0, 0.0, 1.0, float("nan"), float("-inf"), 0.5]])
    assert data.rank_targets(np.array([0]), inf_elsewhere, "valid")[0] == 0      # NaN rivals rank last


def test_federation_reports_reference_rankings_with_cold_and_warm_split():
    ds = make_dataset(n_users=15, n_items=25, seed=6, n_cold=4)
    cfg = make_cfg(variant="none", rounds=1)
    fed = local_federation(cfg, ds)
    problem = fed.problem
    baselines = problem.reference_metrics(seed=0)
    cold_order = reference_scores(np.bincount(problem.data.train_items, minlength=ds.n_items), 0)["cold_first"]
    counts = np.bincount(problem.data.train_items, minlength=ds.n_items)
    assert (counts == 0).any()
    cold_users = counts[problem.data.test] == 0
    assert cold_users.any() and (~cold_users).any()
    for name, score in (("popularity", lambda i: (counts[i], -i)),
                        ("cold_first", lambda i: cold_order[i])):
        ranks = []
        for u in range(ds.n_users):
            lo, hi = problem.data.train_ptr[u], problem.data.train_ptr[u + 1]
            masked = set(problem.data.train_items[lo:hi].tolist()) | {int(problem.data.valid[u])}
            target = int(problem.data.test[u])
            masked.discard(target)
            ranks.append(sum(1 for i in range(ds.n_items)
                             if i != target and i not in masked and score(i) > score(target)))
        ranks = np.array(ranks)
        assert baselines[name]["all"] == pytest.approx(metrics_from_ranks(ranks))
        assert baselines[name]["cold"] == pytest.approx(metrics_from_ranks(ranks[cold_users]), nan_ok=True)
        assert baselines[name]["warm"] == pytest.approx(metrics_from_ranks(ranks[~cold_users]))
        assert baselines[name]["n_cold"] == int(cold_users.sum())
    candidates = np.array([ds.n_items - len(set(problem.data.train_items[problem.data.train_ptr[u]:
                                                                        problem.data.train_ptr[u + 1]]) |
                                                 {int(problem.data.valid[u])} - {int(problem.data.test[u])})
                           for u in range(ds.n_users)])
    assert baselines["random"]["all"] == pytest.approx(expected_random_metrics(candidates))
    summary = run_federation(cfg, fed)
    assert summary["baselines"]["popularity"] == baselines["popularity"]["all"]
    assert summary["baselines"]["random"] == baselines["random"]["all"]
    assert summary["n_cold_test_users"] == int(cold_users.sum())
    assert summary["cold_share"]["test"] == pytest.approx(cold_users.mean())
    assert set(summary["baselines_valid"]) == {"popularity", "cold_first", "random", "cold_prior"}
