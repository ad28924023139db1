"""(epsilon, delta) of DP uploads (engine/accounting.py): Google's dp-accounting RDP accountant
over the rounds a user actually uploads in, a target epsilon solved into a noise multiplier,
the summary's `dp` block and the progress line's epsilon."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import accounting
from fedvlr_sim.engine.accounting import Composition, dp_report, epsilon_tracker, resolve_noise
from fedvlr_sim.engine.federation import sample_clients
from fedvlr_sim.engine.messages import RoundRecord
from fedvlr_sim.engine.simulation import local_federation
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.progress import round_progress
from fedvlr_sim.runner import execute
from helpers_engine import make_cfg, make_dataset, make_population, run_federation

N_USERS = 200
DP_KEYS = {"epsilon", "delta", "clip", "noise_multiplier", "accountant", "assumption", "uploads_composed"}


def direct_epsilon(noise_multiplier: float, count: int, delta: float, sample_ratio: float | None = None) -> float:
    """epsilon of `count` Gaussian uploads as dp-accounting computes it, written out here."""
    upload = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_ratio is not None:
        upload = dp_accounting.PoissonSampledDpEvent(sample_ratio, upload)
    return RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(upload, count)).get_epsilon(delta)


def dp_cfg(**overrides) -> RunConfig:
    return RunConfig.create(**({"dp_clip": 1.0, "dp_noise": 1.0, "rounds": 10} | overrides))


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=8, n_items=20, min_train=3, max_train=6, seed=5)


# --------------------------------------------------------------------------- the accountant
def test_epsilon_of_full_participation_is_dp_accounting_over_every_round():
    report = dp_report(dp_cfg(dp_noise=1.3, rounds=12), N_USERS, 12)
    assert report["uploads_composed"] == 12
    assert report["delta"] == 1 / N_USERS, "delta defaults to 1 / number of users"
    assert report["epsilon"] == pytest.approx(direct_epsilon(1.3, 12, 1 / N_USERS), rel=1e-12)
    assert set(report) == DP_KEYS and report["assumption"] == "none" and "RDP" in report["accountant"]


def test_more_rounds_or_less_noise_spend_more_epsilon():
    delta = 1e-5
    by_rounds = [Composition(count).epsilon(1.0, delta) for count in (1, 5, 20)]
    by_noise = [Composition(10).epsilon(sigma, delta) for sigma in (4.0, 2.0, 0.8)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 3
    assert by_noise == sorted(by_noise) and len(set(by_noise)) == 3


def test_explicit_delta_is_used():
    report = dp_report(dp_cfg(dp_delta=1e-6), N_USERS, 10)
    assert report["delta"] == 1e-6
    assert report["epsilon"] == pytest.approx(direct_epsilon(1.0, 10, 1e-6), rel=1e-12)


def test_a_run_without_noise_has_no_dp_report():
    assert dp_report(RunConfig.create(dp_clip=1.0), N_USERS, 3) is None
    assert dp_report(RunConfig.create(), N_USERS, 3) is None
    assert epsilon_tracker(RunConfig.create(dp_clip=1.0), N_USERS) is None


# --------------------------------------------------------------------------- participation
def test_participations_are_the_most_sampled_users_own_count():
    seed, rounds, ratio = 3, 12, 0.25
    most = accounting.most_participations(seed, rounds, N_USERS, ratio)
    taken = np.zeros(N_USERS, dtype=int)
    for round_idx in range(1, rounds + 1):
        taken[sample_clients(seed, round_idx, N_USERS, ratio)] += 1
        assert most[round_idx] == taken.max()
    assert most[0] == 0
    assert math.ceil(ratio * rounds) <= most[-1] < rounds, "sampling: fewer uploads than rounds, at least the mean"
    report = dp_report(dp_cfg(rounds=rounds, sample_ratio=ratio, seed=seed), N_USERS, rounds)
    assert report["uploads_composed"] == most[-1]
    assert report["epsilon"] == pytest.approx(direct_epsilon(1.0, int(most[-1]), 1 / N_USERS), rel=1e-12)


def test_full_participation_counts_every_round():
    assert list(accounting.most_participations(0, 5, N_USERS, 1.0)) == [0, 1, 2, 3, 4, 5]


def test_poisson_sampling_is_an_explicit_assumption_over_every_round():
    cfg = dp_cfg(rounds=6, sample_ratio=0.1, dp_assumption="poisson-sampling")
    report = dp_report(cfg, N_USERS, 6)
    assert report["assumption"] == "poisson-sampling" and report["uploads_composed"] == 6
    assert report["epsilon"] == pytest.approx(direct_epsilon(1.0, 6, 1 / N_USERS, sample_ratio=0.1), rel=1e-9)
    assert report["epsilon"] < dp_report(dp_cfg(rounds=6, sample_ratio=0.1), N_USERS, 6)["epsilon"]


# --------------------------------------------------------------------------- a target epsilon
@pytest.mark.parametrize("target, ratio", [(1.0, 1.0), (4.0, 0.3)])
def test_solved_noise_spends_the_target_from_below(target, ratio):
    cfg = RunConfig.create(dp_clip=0.5, dp_epsilon=target, rounds=15, sample_ratio=ratio)
    solved = resolve_noise(cfg, N_USERS)
    assert solved.client.dp_epsilon == 0 and solved.client.dp_noise > 0 and solved.client.dp_clip == 0.5
    spent = dp_report(solved, N_USERS, 15)["epsilon"]
    assert 0.99 * target <= spent <= target
    assert dp_report(cfg, N_USERS, 15) == dp_report(solved, N_USERS, 15), "the report resolves the target itself"


def test_a_config_without_target_is_left_alone():
    cfg = dp_cfg()
    assert resolve_noise(cfg, N_USERS) is cfg


@pytest.mark.parametrize("options", [dict(dp_epsilon=1e-4, dp_delta=1e-10),    # needs sigma beyond 1e4
                                     dict(dp_epsilon=1e9)])                     # below sigma 1e-3
def test_a_target_no_noise_reaches_is_a_one_line_error(options):
    cfg = RunConfig.create(dp_clip=1.0, rounds=40, **options)
    with pytest.raises(FedVLRError, match=r"^--dp-epsilon .* out of reach") as err:
        resolve_noise(cfg, N_USERS)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, names", [
    (dict(dp_epsilon=-1.0, dp_clip=1.0), ["--dp-epsilon"]),
    (dict(dp_epsilon=2.0), ["--dp-epsilon", "--dp-clip"]),
    (dict(dp_epsilon=2.0, dp_clip=1.0, dp_noise=1.0), ["--dp-epsilon", "--dp-noise"]),
    (dict(dp_delta=1.0), ["--dp-delta"]),
    (dict(dp_assumption="amplified"), ["--dp-assumption"]),
])
def test_bad_dp_options_are_one_line_errors(options, names):
    with pytest.raises(FedVLRError) as err:
        RunConfig.create(**options)
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in names)


def test_an_unresolved_target_never_trains_without_noise(dataset):
    with pytest.raises(FedVLRError, match="--dp-epsilon"):
        make_population(make_cfg(dp_clip=0.5, dp_epsilon=2.0), dataset)


# --------------------------------------------------------------------------- where it is reported
def test_summary_json_of_a_dp_run_has_its_epsilon(dataset, tmp_path):
    cfg = make_cfg(dp_clip=0.5, dp_noise=1.5, rounds=2)
    execute(cfg, dataset, tmp_path)
    dp = json.loads((tmp_path / "summary.json").read_text())["dp"]
    assert set(dp) == DP_KEYS and dp["uploads_composed"] == 2 and dp["clip"] == 0.5
    assert dp["epsilon"] == pytest.approx(direct_epsilon(1.5, 2, 1 / dataset.n_users), rel=1e-12)


def test_a_target_run_reports_the_solved_noise(dataset):
    cfg = make_cfg(dp_clip=0.5, dp_epsilon=8.0, rounds=2, sample_ratio=0.5)
    summary = run_federation(cfg, local_federation(resolve_noise(cfg, dataset.n_users), dataset))
    assert summary["config"]["dp_epsilon"] == 8.0, "the summary keeps the configuration as given"
    assert 0.99 * 8.0 <= summary["dp"]["epsilon"] <= 8.0
    assert summary["dp"]["noise_multiplier"] == resolve_noise(cfg, dataset.n_users).client.dp_noise


def test_a_run_without_noise_has_no_dp_in_its_summary(dataset):
    cfg = make_cfg(rounds=1)
    assert "dp" not in run_federation(cfg, local_federation(cfg, dataset))


def test_progress_line_shows_the_epsilon_spent_so_far(capsys):
    tracker = epsilon_tracker(dp_cfg(rounds=3), N_USERS)
    record = RoundRecord(round=2, loss=0.5, clients=N_USERS, grad_norm=1.0, train_seconds=0.1, updates_per_second=10)
    with round_progress(3, "dp", epsilon_after=tracker) as (on_round, _):
        on_round(record)
    assert f"epsilon {direct_epsilon(1.0, 2, 1 / N_USERS):.3g}" in capsys.readouterr().err
