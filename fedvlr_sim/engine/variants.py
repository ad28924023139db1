"""The fusion variants of SPEC.md section 4, one class each, registered by name.

A `Variant` decides what the server broadcasts and how clients use it: which operator views the
`Fusion` module computes (and the modules it needs for them), their width, whether each client
mixes several views with a private router, whether it needs item features, and the loss
(pointwise BCE, or BPR for VBPR). The engine asks the variant; it never tests its name.

- `none`: F = [D]                       (the ID-only backbone)
- `sum`, `mlp`, `gate`: one operator     (fusion-strategy ablation; `mlp` is also the paper's
                                          "+MLP" one-size-fits-all baseline)
- `ours`: F = [F_sum, F_mlp, F_gate]     (bi-level fusion; clients mix them with their router)
- `vbpr`: F = [[D ; E [V;C]]]            (federated VBPR, width 2d)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedvlr_sim.engine.operators import OPERATORS

VARIANTS: dict[str, "Variant"] = {}
MODALITY_VIEWS = ("vision", "text", "id")


def register(variant: "Variant") -> "Variant":
    """Make a variant available under its `name`."""
    VARIANTS[variant.name] = variant
    return variant


class Variant:
    """One way of turning item inputs into the broadcast views."""

    def __init__(self, name: str, operators: tuple[str, ...] = (), uses_features: bool = True,
                 uses_router: bool = False, bpr: bool = False):
        self.name, self.operators = name, operators
        self.uses_features, self.uses_router, self.bpr = uses_features, uses_router, bpr
        self.modality_views, self.view_norm, self.center_features = False, "none", False

    def configured(self, modality_views: bool = False, view_norm: str = "none",
                   center_features: bool = False) -> "Variant":
        """This variant with the fusion-input choices of SPEC.md section 10: the modality-only
        views x_v, x_c, x_d offered to the router beside the operator views (router variants
        only), every operator view normalised to unit RMS per item (`view_norm="rms"`, or
        `"center"`: first centred on its mean over the items), and the content features centred
        on their item mean."""
        variant = copy.copy(self)
        variant.modality_views = modality_views and self.uses_router
        variant.view_norm = view_norm if self.operators else "none"
        variant.center_features = center_features and self.uses_features
        return variant

    @property
    def n_views(self) -> int:
        return max(1, len(self.operators)) + (len(MODALITY_VIEWS) if self.modality_views else 0)

    def width(self, dim: int) -> int:
        """Width w of the views for embedding size d."""
        return dim

    def validate(self, model_cfg) -> None:
        """Modality ablations need item features and must leave one modality in."""
        from fedvlr_sim.errors import FedVLRError

        if any(how != "keep" for how in model_cfg.ablation):
            if not self.uses_features:
                raise FedVLRError(f"--drop/--noise need a fusion --variant "
                                  f"({'|'.join(n for n, v in VARIANTS.items() if v.uses_features)}), not {self.name!r}")
            if all(how == "drop" for how in model_cfg.ablation):
                raise FedVLRError("--drop: at least one of vision, text, id must remain")

    def build(self, fusion: nn.Module, dim: int) -> None:
        """Add the modules the views need to `fusion` (projections, operators)."""
        if not self.operators:
            return
        fusion.project = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(getattr(fusion, m).shape[1], dim), nn.LayerNorm(dim))
            for m in ("vision", "text") if fusion.kept[m]})
        for op in self.operators:
            OPERATORS[op].build(fusion, dim)

    def views(self, fusion: nn.Module, raw) -> torch.Tensor:
        """The views (G, I, w); `raw(modality)` gives one (possibly altered) input."""
        ids = raw("id")
        if not self.operators:
            return ids.unsqueeze(0)
        x = {"id": ids}
        for m in ("vision", "text"):
            x[m] = fusion.project[m](raw(m)) if fusion.kept[m] else torch.zeros_like(ids)
        stacked = torch.cat([x["vision"], x["text"], x["id"]], dim=1)
        views = [OPERATORS[op].view(fusion, x, stacked) for op in self.operators]
        if self.modality_views:
            views += [x[m] for m in MODALITY_VIEWS]
        if self.view_norm == "center":   # a direction all items share moves no item against another
            views = [v - v.mean(dim=0, keepdim=True) for v in views]
        if self.view_norm in ("rms", "center"):
            views = [v * torch.rsqrt(v.pow(2).mean(dim=1, keepdim=True) + 1e-6) for v in views]
        return torch.stack(views)


class Vbpr(Variant):
    """Federated VBPR: item rep [D[i] ; E [V;C][i]] with a learnable global E, BPR loss."""

    def width(self, dim):
        return 2 * dim

    def build(self, fusion, dim):
        fusion.visual_map = nn.Linear(fusion.vision.shape[1] + fusion.text.shape[1], dim, bias=False)

    def views(self, fusion, raw):
        content = torch.cat([raw("vision"), raw("text")], dim=1)
        return torch.cat([raw("id"), fusion.visual_map(content)], dim=1).unsqueeze(0)


register(Variant("none", uses_features=False))
register(Variant("ours", ("sum", "mlp", "gate"), uses_router=True))
register(Variant("mlp", ("mlp",)))
register(Vbpr("vbpr", bpr=True))
register(Variant("sum", ("sum",)))
register(Variant("gate", ("gate",)))
