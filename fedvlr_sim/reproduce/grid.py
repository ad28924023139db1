"""The hyper-parameter grid selected on valid (SPEC.md section 10): the client learning rate
{1e-3, 1e-2, 1e-1, 1} and any grid the backbone declares (FedRAP: lambda x mu). `sweep` and the
tuned cells of `reproduce` use the same points."""

from __future__ import annotations

import itertools

LR_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def grid_points(backbone_def) -> list[dict]:
    """Every combination of the learning rates and the backbone's own grid."""
    axes = {"lr": LR_GRID} | backbone_def.hyper_grid
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def point_name(point: dict) -> str:
    """A folder name for a grid point, e.g. lr0.01-lambda0.001-mu0.1."""
    return "-".join(f"{k.replace('fedrap_', '')}{v:g}" for k, v in point.items())


def best_on_valid(outcomes: list[dict], metric: str) -> dict | None:
    """The finished (not diverged) outcome with the best valid `metric`, or None."""
    finished = [o for o in outcomes if "failed" not in o and o.get("valid", {}).get(metric) is not None]
    return max(finished, key=lambda o: o["valid"][metric], default=None)
