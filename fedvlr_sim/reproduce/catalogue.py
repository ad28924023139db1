"""The paper's experiments, each one definition: its cells in table order (SPEC.md section 4)."""

from __future__ import annotations

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.reproduce.experiment import Cell, Choices, Experiment
from fedvlr_sim.reproduce.figures import convergence_figure, sampling_figure

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
SAMPLE_RATIOS = (0.1, 0.2, 0.5, 1.0)


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


EXPERIMENTS = {e.name: e for e in (
    Experiment("table5", "Modality ablation (+ours)", modality_ablation),
    Experiment("table3", "Client-side parameters and communication per client per round", backbone_variants,
               measured=True),
    Experiment("table2", "Backbones plain, +MLP and +ours", backbone_variants, paired=("none", "ours")),
    Experiment("table6", "Fusion strategy: one operator alone against +ours", fusion_strategy),
    Experiment("table4", "Differential privacy (+ours)", privacy),
    Experiment("fig6", "Convergence of the backbones (+ours)", backbones_ours, figure=convergence_figure),
    Experiment("fig9", "Client sampling ratio (+ours)", sampling_ratios, figure=sampling_figure),
)}
