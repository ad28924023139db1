"""The hyper-parameter grid selected on valid (SPEC.md section 10): the client learning rate
{1e-3, 1e-2, 1e-1, 1}, any grid the backbone declares (FedRAP: lambda x mu), and then how
negatives are drawn (`--neg-popularity` {0, 0.5, 1}, docs/defaults.md Q9) at the point chosen.

`sweep` runs the full product of the first two (`grid_points`), then `negatives_stage` at its
best point. The tuned cells of `reproduce` run three stages on seed 0 only (`lr_stage`, then
`backbone_stage` at the lr that stage 1 selected, then `negatives_stage` at the best point so
far): 4 + 2 runs for a backbone without a grid of its own, 4 + 16 - 1 + 2 for FedRAP (the best
stage-1 point, at the default lambda and mu, is one of stage 2's), instead of the 192 of the
joint grid; the other seeds rerun the chosen point only."""

from __future__ import annotations

import itertools

LR_GRID = (1e-3, 1e-2, 1e-1, 1.0)
NEG_GRID = (0.0, 0.5, 1.0)


def grid_points(backbone_def) -> list[dict]:
    """Every combination of the learning rates and the backbone's own grid (`sweep`)."""
    axes = {"lr": LR_GRID} | backbone_def.hyper_grid
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def lr_stage(backbone_def, settings: dict) -> list[dict]:
    """Stage 1: the learning rates, the backbone's own hyper-parameters at their values in
    `settings` (a flat configuration: the config defaults unless --set changed them)."""
    fixed = {k: settings[k] for k in backbone_def.hyper_grid}
    return [{"lr": lr} | fixed for lr in LR_GRID]


def backbone_stage(backbone_def, lr: float) -> list[dict]:
    """Stage 2: the backbone's own grid at the learning rate stage 1 selected ([] when it has none)."""
    axes = backbone_def.hyper_grid
    return [{"lr": lr} | dict(zip(axes, values)) for values in itertools.product(*axes.values())] if axes else []


def negatives_stage(point: dict, settings: dict) -> list[dict]:
    """The last stage: `point` with each other negative-sampling exponent than the one in
    `settings` (the flat configuration the earlier stages ran with)."""
    return [point | {"neg_popularity": beta} for beta in NEG_GRID if beta != settings["neg_popularity"]]


def short_name(key: str) -> str:
    """A grid axis as folder names and tables spell it (lambda for fedrap_lambda, ...)."""
    return key.replace("fedrap_", "").replace("neg_popularity", "neg")


def point_name(point: dict) -> str:
    """A folder name for a grid point, e.g. lr0.01-lambda0.001-mu0.1-neg0.5."""
    return "-".join(f"{short_name(k)}{v:g}" for k, v in point.items())


def best_on_valid(outcomes: list[dict], metric: str) -> dict | None:
    """The finished (not diverged) outcome with the best valid `metric`, or None."""
    finished = [o for o in outcomes if "failed" not in o and o.get("valid", {}).get(metric) is not None]
    return max(finished, key=lambda o: o["valid"][metric], default=None)
