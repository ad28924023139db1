"""The paper's experiments, each one definition: its cells in table order (SPEC.md section 4)."""

from __future__ import annotations

from functools import partial

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.engine.backbones import BACKBONES as BACKBONE_DEFS
from fedvlr_sim.reproduce.embeddings import KEEP_CHECKPOINT, embedding_figure
from fedvlr_sim.reproduce.experiment import Cell, Choices, Experiment, GridAxis
from fedvlr_sim.reproduce.figures import convergence_figure, grid_figure, sampling_figure
from fedvlr_sim.reproduce.grid import LR_GRID
from fedvlr_sim.reproduce.heterogeneity import heterogeneity_figure

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
SAMPLE_RATIOS = (0.1, 0.2, 0.5, 1.0)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)   # SPEC.md section 10
LR_AXIS = GridAxis("lr", "lr", LR_GRID)
L2_AXIS = GridAxis("weight_decay", "L2", WEIGHT_DECAYS)
FEDRAP_AXES = tuple(GridAxis(option, option.removeprefix("fedrap_"), values)
                    for option, values in BACKBONE_DEFS["fedrap"].hyper_grid.items())   # lambda, mu


def backbone_variants(choices: Choices) -> list[Cell]:
    """Every backbone plain, +MLP and +ours, and federated VBPR on FedAvg; lr tuned on valid."""
    cells = [Cell(b, v, {"backbone": b, "variant": v}, tuned=True) for b in BACKBONES for v in ("none", "mlp", "ours")]
    return cells + [Cell("fedavg", "vbpr", {"backbone": "fedavg", "variant": "vbpr"}, tuned=True)]


def modality_ablation(choices: Choices) -> list[Cell]:
    """+ours with every modality, without one (drop), or with one replaced by random features."""
    ours = {"backbone": choices.backbone, "variant": "ours"}
    cells = [Cell("full", "+ours", ours)]
    for how, label in (("drop", "without {}"), ("noise", "random {}")):
        cells += [Cell(label.format(m), "+ours", ours | {"ablation": {m: how}}) for m in MODALITIES]
    return cells


def fusion_strategy(choices: Choices) -> list[Cell]:
    """One fusion operator alone (no router) against the personalised mixture."""
    return [Cell(v, choices.backbone, {"backbone": choices.backbone, "variant": v}) for v in ("sum", "mlp", "gate", "ours")]


def privacy(choices: Choices) -> list[Cell]:
    """+ours per backbone without DP, with clipping only, and with clipping and Gaussian noise."""
    clip, noise = choices.dp_clip, choices.dp_noise
    settings = (("no DP", {}), (f"clip {clip:g}", {"dp_clip": clip}),
                (f"clip {clip:g}, noise {noise:g}", {"dp_clip": clip, "dp_noise": noise}))
    return [Cell(b, label, {"backbone": b, "variant": "ours"} | extra) for b in BACKBONES for label, extra in settings]


def backbones_ours(choices: Choices) -> list[Cell]:
    return [Cell(b, "+ours", {"backbone": b, "variant": "ours"}) for b in BACKBONES]


def sampling_ratios(choices: Choices) -> list[Cell]:
    return [Cell(f"rho {r:g}", "+ours", {"backbone": choices.backbone, "variant": "ours", "sample_ratio": r})
            for r in SAMPLE_RATIOS]


def chosen_backbone_ours(choices: Choices, extra: dict | None = None) -> list[Cell]:
    """+ours on the chosen backbone alone (with `extra` options)."""
    return [Cell(choices.backbone, "+ours", {"backbone": choices.backbone, "variant": "ours"} | (extra or {}))]


def grid_cells(choices: Choices, y: GridAxis, x: GridAxis, backbone: str = "") -> list[Cell]:
    """+ours (on `backbone`, default the chosen one) at every point of a two-option grid: a row
    per value of y, a column per value of x."""
    ours = {"backbone": backbone or choices.backbone, "variant": "ours"}
    return [Cell(y.name(a), x.name(b), ours | {y.option: a, x.option: b}) for a in y.values for b in x.values]


def grid_experiment(name: str, title: str, y: GridAxis, x: GridAxis, backbone: str = "") -> Experiment:
    """An experiment over a two-option grid, drawn as a heatmap of test NDCG@50."""
    return Experiment(name, title, partial(grid_cells, y=y, x=x, backbone=backbone),
                      figure=partial(grid_figure, y=y, x=x))


EXPERIMENTS = {e.name: e for e in (
    Experiment("table5", "Modality ablation (+ours)", modality_ablation),
    Experiment("table3", "Client-side parameters and communication per client per round", backbone_variants,
               measured=True),
    Experiment("table2", "Backbones plain, +MLP and +ours", backbone_variants, paired=("none", "ours")),
    Experiment("table6", "Fusion strategy: one operator alone against +ours", fusion_strategy),
    Experiment("table4", "Differential privacy (+ours)", privacy),
    Experiment("fig6", "Convergence of the backbones (+ours)", backbones_ours, figure=convergence_figure),
    Experiment("fig9", "Client sampling ratio (+ours)", sampling_ratios, figure=sampling_figure),
    Experiment("fig3", "Client heterogeneity: activity, modality reliance and accuracy by activity (+ours)",
               chosen_backbone_ours, figure=heterogeneity_figure),
    grid_experiment("fig7", "Client lr x L2 weight decay (+ours)", LR_AXIS, L2_AXIS),
    grid_experiment("fig8", "FedRAP lambda x mu (FedRAP+ours)", *FEDRAP_AXES, backbone="fedrap"),
    Experiment("fig10", "Item embeddings of the trained server and two users' personal views (+ours)",
               partial(chosen_backbone_ours, extra=KEEP_CHECKPOINT), figure=embedding_figure),
)}
