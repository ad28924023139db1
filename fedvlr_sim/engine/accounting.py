"""(epsilon, delta) of the privatised uploads (SPEC.md section 5, step 4), with Google's
dp-accounting library (RDP accountant).

Threat model: the server sees every upload on its own (no secure aggregation). A user's upload
is clipped to L2 norm S and gets N(0, (sigma S)^2) noise per coordinate, so each participation
is a Gaussian mechanism with noise multiplier sigma on that user's data (add/remove-one-user
adjacency: the upload against no upload, L2 sensitivity S). By default only composition counts:
over the rounds the most-sampled user uploaded in, from the run's own `sample_clients` draws.
`--dp-assumption poisson-sampling` also credits amplification by sampling, as if each user
joined each round independently with probability rho and the server could not tell who did;
the simulator samples a fixed number without replacement and the server sees who uploads, so
that is an assumption, never a fact of the run. The aggregation weight alpha_u (a user's train
count for FedAvg) travels with the upload and is not covered.

A target `--dp-epsilon` is turned into the noise multiplier that spends it over the configured
rounds (`resolve_noise`), once, before a run builds anything.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from importlib.metadata import version
from typing import Callable

import numpy as np

from fedvlr_sim.config import ClientConfig, RunConfig
from fedvlr_sim.engine.federation import sample_clients
from fedvlr_sim.errors import FedVLRError

SIGMA_RANGE = (1e-3, 1e4)           # noise multipliers a target epsilon is solved within


def accountant_name() -> str:
    """The accountant, as summary.json names it."""
    return f"RDP (dp-accounting {version('dp-accounting')})"


@contextlib.contextmanager
def _quiet_accountant():
    """Silence dp-accounting's notes on RDP orders it leaves out (the bound stays valid)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def _fresh_accountant():
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant()


@dataclass(frozen=True)
class Composition:
    """How one user's uploads compose: `count` Gaussian mechanisms, each subsampled with
    probability `sample_ratio` under the poisson-sampling assumption."""

    count: int
    assumption: str = "none"
    sample_ratio: float = 1.0

    def event(self, noise_multiplier: float):
        """The dp-accounting event of these uploads at `noise_multiplier`."""
        import dp_accounting

        upload = dp_accounting.GaussianDpEvent(noise_multiplier)
        if self.assumption == "poisson-sampling":
            upload = dp_accounting.PoissonSampledDpEvent(self.sample_ratio, upload)
        return dp_accounting.SelfComposedDpEvent(upload, self.count)

    def epsilon(self, noise_multiplier: float, delta: float) -> float:
        """epsilon spent at `delta`."""
        with _quiet_accountant():
            return float(_fresh_accountant().compose(self.event(noise_multiplier)).get_epsilon(delta))


def most_participations(seed: int, rounds: int, n_users: int, sample_ratio: float) -> np.ndarray:
    """Most rounds any one user uploaded in, after each of rounds 0..rounds (the run's draws)."""
    taken = np.zeros(n_users, dtype=np.int64)
    most = [0]
    for round_idx in range(1, rounds + 1):
        taken[sample_clients(seed, round_idx, n_users, sample_ratio)] += 1
        most.append(int(taken.max()))
    return np.array(most)


def compositions(cfg: RunConfig, n_users: int, rounds: int) -> list[Composition]:
    """How a user's uploads compose after each of rounds 0..rounds: every round under the
    poisson-sampling assumption, else the most-sampled user's participations."""
    assumption, ratio = cfg.client.dp_assumption, cfg.loop.sample_ratio
    if assumption == "poisson-sampling":
        counts = range(rounds + 1)
    else:
        counts = most_participations(cfg.seed, rounds, n_users, ratio)
    return [Composition(int(count), assumption, ratio) for count in counts]


def delta_of(client: ClientConfig, n_users: int) -> float:
    """The delta of the reported (epsilon, delta): --dp-delta, else 1 / number of users."""
    return client.dp_delta or 1.0 / n_users


def solve_noise_multiplier(target_epsilon: float, delta: float, composition: Composition) -> float:
    """The smallest noise multiplier (to 1e-6) that spends at most `target_epsilon`; a target
    no multiplier in SIGMA_RANGE reaches is an error naming --dp-epsilon."""
    import dp_accounting

    low, high = SIGMA_RANGE
    least, most = composition.epsilon(high, delta), composition.epsilon(low, delta)
    if not least <= target_epsilon < most:
        raise FedVLRError(f"--dp-epsilon {target_epsilon:g} is out of reach: noise multipliers {low:g} to {high:g} "
                          f"spend epsilon {most:.3g} down to {least:.3g} over {composition.count} uploads "
                          f"at delta {delta:.3g}")
    with _quiet_accountant():
        return float(dp_accounting.calibrate_dp_mechanism(
            _fresh_accountant, composition.event, target_epsilon, delta,
            dp_accounting.ExplicitBracketInterval(low, high)))


def resolve_noise(cfg: RunConfig, n_users: int) -> RunConfig:
    """`cfg` with --dp-epsilon turned into the --dp-noise that spends it over the configured
    rounds (the target cleared); `cfg` itself when it sets no target."""
    target = cfg.client.dp_epsilon
    if target == 0:
        return cfg
    composition = compositions(cfg, n_users, cfg.loop.rounds)[-1]
    sigma = solve_noise_multiplier(target, delta_of(cfg.client, n_users), composition)
    return cfg.replace(dp_noise=sigma, dp_epsilon=0.0)


@dataclass(frozen=True)
class PrivacyLedger:
    """A run's privacy spending: its mechanism and the composition after each round."""

    clip: float
    noise_multiplier: float
    delta: float
    by_round: list[Composition]

    @classmethod
    def of(cls, cfg: RunConfig, n_users: int) -> "PrivacyLedger | None":
        """The ledger of `cfg` (target resolved) over its configured rounds; None without noise."""
        cfg = resolve_noise(cfg, n_users)
        if cfg.client.dp_noise == 0:
            return None
        return cls(cfg.client.dp_clip, cfg.client.dp_noise, delta_of(cfg.client, n_users),
                   compositions(cfg, n_users, cfg.loop.rounds))

    def epsilon_after(self, rounds: int) -> float:
        """epsilon spent after `rounds` rounds."""
        return self.by_round[rounds].epsilon(self.noise_multiplier, self.delta)

    def report(self, rounds: int) -> dict:
        """summary.json's `dp` after `rounds` rounds."""
        composition = self.by_round[rounds]
        return {"epsilon": self.epsilon_after(rounds), "delta": self.delta, "clip": self.clip,
                "noise_multiplier": self.noise_multiplier, "accountant": accountant_name(),
                "assumption": composition.assumption, "uploads_composed": composition.count}


def dp_report(cfg: RunConfig, n_users: int, rounds: int) -> dict | None:
    """summary.json's `dp` after `rounds` rounds; None for a run without noise."""
    ledger = PrivacyLedger.of(cfg, n_users)
    return ledger.report(rounds) if ledger else None


def epsilon_tracker(cfg: RunConfig, n_users: int) -> Callable[[int], float] | None:
    """epsilon spent after a given round (for the progress line); None for a run without noise."""
    ledger = PrivacyLedger.of(cfg, n_users)
    return ledger.epsilon_after if ledger else None
