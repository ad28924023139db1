"""Honest numbers under failure and beside the right references: a diverged model never scores,
a diverged round ends the run with a one-line error, every summary carries the exact score of a
random ranking and the share of cold held-out items, and reliance is a per-user share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.callbacks import BestRound, History, reliance_shares
from fedvlr_sim.engine.metrics import COLD_PRIOR_BETAS, metrics_from_ranks, with_cold_prior
from fedvlr_sim.engine.simulation import local_federation, summarize
from fedvlr_sim.errors import FedVLRError
from helpers_engine import make_cfg, make_dataset, run_federation


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=16, n_items=30, seed=12, n_cold=3)


class NaNLossAfter:
    """A pool whose training loss turns NaN from round `bad_round` on (a diverged client)."""

    def __init__(self, pool, bad_round: int):
        self.pool, self.bad_round = pool, bad_round

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def train(self, round_idx, users, glob):
        upload = self.pool.train(round_idx, users, glob)
        if round_idx >= self.bad_round:
            upload.loss_sum = float("nan")
        return upload


def test_a_diverged_round_ends_the_run_in_one_line_keeping_the_rounds_before(dataset):
    cfg = make_cfg(rounds=5)
    fed = local_federation(cfg, dataset)
    fed.pool = NaNLossAfter(fed.pool, bad_round=3)
    with pytest.raises(FedVLRError) as err:
        fed.run()
    message = str(err.value)
    assert "round 3 diverged" in message and "--lr" in message and "\n" not in message
    assert [r.round for r in fed.callback(History).records] == [1, 2]


class ViewsScaledAfter:
    """A server whose published views are multiplied by `factor` after its first `publishes`
    publications (a round publishes once to train and once to evaluate)."""

    def __init__(self, server, publishes: int, factor: float):
        self.server, self.publishes, self.factor = server, publishes, factor

    def __getattr__(self, name):
        return getattr(self.server, name)

    def publish(self):
        glob = self.server.publish()
        self.publishes -= 1
        self.last = glob | {"views": glob["views"] * self.factor} if self.publishes < 0 else glob
        return self.last

    def largest_published(self):
        return max(float(t.abs().max()) for t in self.last.values())


@pytest.mark.parametrize("factor", [1e20, float("inf")])
def test_a_last_round_whose_server_step_diverged_ends_the_run_before_it_is_scored(dataset, factor):
    # the last round has no next training loss to show the divergence: its published globals do
    cfg = make_cfg(rounds=2)
    fed = local_federation(cfg, dataset)
    fed.server = ViewsScaledAfter(fed.server, publishes=3, factor=factor)   # round 2's evaluation
    with pytest.raises(FedVLRError, match=r"^round 2 diverged \(the server's global parameters reach"):
        fed.run()
    assert [r.round for r in fed.callback(History).records] == [1]


def test_a_huge_server_step_in_the_only_round_is_a_divergence_error(dataset):
    cfg = make_cfg(rounds=1, server_lr=1e30, local_epochs=1)
    with pytest.raises(FedVLRError, match=r"^round 1 diverged"):
        run_federation(cfg, local_federation(cfg, dataset))


def test_a_huge_server_step_gives_a_low_finite_score_never_a_perfect_one(dataset):
    cfg = make_cfg(rounds=3, server_lr=1e30, local_epochs=1)
    try:
        summary = run_federation(cfg, local_federation(cfg, dataset))
    except FedVLRError as err:
        assert "diverged" in str(err)
        return
    for part in ("valid", "test"):
        for value in summary[part].values():
            assert np.isfinite(value) and 0 <= value <= 1
    assert summary["test"]["hr@50"] < 1.0


def test_every_summary_has_the_random_reference_cold_shares_and_warnings(dataset):
    cfg = make_cfg(rounds=2, variant="none", neg_popularity=1.0)
    summary = run_federation(cfg, local_federation(cfg, dataset))
    assert {"popularity", "cold_first", "random"} <= set(summary["baselines"])
    assert 0 < summary["cold_share"]["test"] < 1 and 0 <= summary["cold_share"]["valid"] <= 1
    below = {name for name in ("popularity", "random")
             if summary["valid"]["ndcg@50"] < summary["baselines_valid"][name]["ndcg@50"]}
    assert len(summary["warnings"]) == len(below)
    assert ("popularity" in below) == any("below the popularity ranking" in w for w in summary["warnings"])
    assert ("random" in below) == any("below a uniform random ranking" in w for w in summary["warnings"])


def test_a_model_below_random_on_valid_is_flagged(dataset):
    cfg = make_cfg(rounds=1, variant="none", neg_popularity=1.0)
    fed = local_federation(cfg, dataset)
    fed.run()
    best = fed.callback(BestRound).best
    best["valid"] = {k: 0.0 for k in best["valid"]}     # a model that never ranks a valid item in the top K
    warnings = summarize(cfg, fed).warnings
    assert any("below a uniform random ranking on valid ndcg@50" in w for w in warnings)


def test_uniform_negatives_with_new_held_out_items_point_to_popularity_negatives(dataset):
    uniform = make_cfg(rounds=1, variant="none")
    summary = run_federation(uniform, local_federation(uniform, dataset))
    assert summary["cold_share"]["test"] >= 0.05
    (warning,) = [w for w in summary["warnings"] if "never occur in train" in w]
    assert f"{100 * summary['cold_share']['test']:.0f}% of the test items" in warning
    assert "--neg-popularity 1" in warning
    weighted = make_cfg(rounds=1, variant="none", neg_popularity=1.0)
    assert not any("never occur in train" in w
                   for w in run_federation(weighted, local_federation(weighted, dataset))["warnings"])


def test_a_private_run_with_popularity_negatives_warns_that_the_item_counts_are_not_accounted(dataset):
    cfg = make_cfg(rounds=1, variant="none", neg_popularity=1.0, dp_clip=1.0, dp_noise=0.5)
    summary = run_federation(cfg, local_federation(cfg, dataset))
    assert any("--neg-popularity" in w and "epsilon" in w for w in summary["warnings"])
    plain = make_cfg(rounds=1, variant="none", neg_popularity=1.0)
    assert not any("--neg-popularity" in w for w in run_federation(plain, local_federation(plain, dataset))["warnings"])


def test_reliance_is_a_per_user_share_so_score_scale_cancels():
    reliance = np.array([[1.0, 2.0, 1.0], [10.0, 20.0, 10.0], [0.0, 0.0, 0.0]])
    shares = reliance_shares(reliance)
    np.testing.assert_allclose(shares[0], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(shares[1], shares[0])
    np.testing.assert_allclose(shares[2], [1 / 3] * 3)


def test_fusion_runs_report_mean_reliance_shares(dataset):
    cfg = make_cfg(rounds=2, variant="ours")
    summary = run_federation(cfg, local_federation(cfg, dataset))
    shares = summary["modality_reliance"]
    assert set(shares) == {"vision", "text", "id"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(summary["modality_spearman"]) == {"vision", "text", "id", "mean"}


def test_cold_prior_adds_beta_to_standardised_scores_of_never_trained_items():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 4.0, 8.0]])
    never_trained = torch.tensor([False, True, False, True])
    scored = with_cold_prior(scores, never_trained)
    assert scored.shape == (2, 1 + len(COLD_PRIOR_BETAS), 4)
    assert torch.equal(scored[:, 0], scores)
    standard = (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True)
    for b, beta in enumerate(COLD_PRIOR_BETAS):
        torch.testing.assert_close(scored[:, 1 + b], standard + beta * never_trained.float())


def test_cold_prior_reference_is_this_model_with_the_beta_best_on_valid(dataset):
    cfg = make_cfg(rounds=2, variant="none")
    fed = local_federation(cfg, dataset)
    fed.run()
    ranks = fed.pool.ranks(fed.server.publish())
    _, test, _ = fed.evaluate(fed.server.publish())
    valid_per_beta = [metrics_from_ranks(ranks[:, 0, 1 + b])["ndcg@50"] for b in range(len(COLD_PRIOR_BETAS))]
    chosen = int(np.argmax(valid_per_beta))
    assert test["cold_prior"]["beta"] == COLD_PRIOR_BETAS[chosen]
    assert test["cold_prior"]["test"]["all"] == metrics_from_ranks(ranks[:, 1, 1 + chosen])
    summary = summarize(cfg, fed).to_dict()
    assert summary["cold_prior_beta"] in COLD_PRIOR_BETAS
    assert "cold_prior" in summary["baselines"] and "cold_prior" in summary["baselines_valid"]
    # a large prior puts every never-trained item first: cold test targets then rank below their count
    n_never = int(fed.problem.data.never_trained.sum())
    cold = fed.problem.cold("test")
    assert cold.any() and (ranks[cold, 1, -1] < n_never).all()
