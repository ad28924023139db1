"""The small typed records that pass between the parts of a run: a group of clients' upload,
one round's record, and the run's summary (the content of summary.json)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class Upload:
    """What a group of clients sends back in one round, already summed over its users."""

    grads: dict[str, torch.Tensor]
    weight: float                       # sum of alpha_u
    loss_sum: float                     # sum over users of their mean local loss
    n_users: int

    def __add__(self, other: "Upload") -> "Upload":
        grads = {k: self.grads[k] + other.grads[k] for k in self.grads}
        return Upload(grads, self.weight + other.weight, self.loss_sum + other.loss_sum,
                      self.n_users + other.n_users)

    def mean_gradient(self) -> dict[str, torch.Tensor]:
        """g = sum_u alpha_u g_u / sum_u alpha_u."""
        return {k: v / max(self.weight, 1e-12) for k, v in self.grads.items()}


@dataclass
class RoundRecord:
    """One round: training loss and speed, and the valid metrics when it was evaluated."""

    round: int
    loss: float
    clients: int
    grad_norm: float
    train_seconds: float
    updates_per_second: float
    seconds: float = 0.0                # wall time of the run so far
    valid: dict[str, float] | None = None

    def row(self) -> dict:
        """A flat row for metrics.parquet (valid metrics as valid_<metric>)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "valid"}
        return out | {f"valid_{k}": v for k, v in (self.valid or {}).items()}

    @classmethod
    def from_row(cls, row: dict) -> "RoundRecord":
        valid = {k.removeprefix("valid_"): v for k, v in row.items() if k.startswith("valid_") and v is not None}
        names = {f.name for f in dataclasses.fields(cls)} - {"valid"}
        return cls(**{k: row[k] for k in names if k in row}, valid=valid or None)


@dataclass
class RunSummary:
    """The outcome of a run: test metrics at the best-valid round beside the references."""

    dataset: str
    backbone: str
    variant: str
    best_round: int
    rounds_run: int
    selected_on: str
    valid: dict
    test: dict
    test_cold: dict
    test_warm: dict
    n_users: int
    n_cold_test_users: int
    baselines: dict
    baselines_cold: dict
    baselines_warm: dict
    seconds: float
    config: dict
    stopped: str = ""                   # why the run ended
    baselines_valid: dict = field(default_factory=dict)   # references on valid (what selection sees)
    cold_share: dict = field(default_factory=dict)        # share of users with a never-trained held-out item
    warnings: list = field(default_factory=list)
    cold_prior_beta: float | None = None                  # the cold-prior reference's beta, chosen on valid
    modality_spearman: dict | None = None
    modality_reliance: dict | None = None                 # mean per-user reliance share per modality
    dp: dict | None = None                                # (epsilon, delta) spent, for runs with DP noise
    run_info: dict = field(default_factory=dict)   # backend facts: shards, server device, recoveries

    def to_dict(self) -> dict:
        """The summary.json form (optional parts left out when absent)."""
        optional = ("cold_prior_beta", "modality_spearman", "modality_reliance", "dp")
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("run_info", *optional)}
        out |= {k: getattr(self, k) for k in optional if getattr(self, k) is not None}
        return out | self.run_info

    @classmethod
    def from_dict(cls, values: dict) -> "RunSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        return cls(**known, run_info={k: v for k, v in values.items() if k not in names})
