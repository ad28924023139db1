"""Server-side fusion operators (SPEC.md section 2 and the variants of section 4).

`Fusion` turns the frozen item features V (vision) and C (text) and the learnable ID table D
into the views F (|G| x |I| x w) that the server broadcasts:

- `none`: F = [D]                       (the ID-only backbone)
- `sum`, `mlp`, `gate`: one operator     (fusion-strategy ablation; `mlp` is also the paper's
                                          "+MLP" one-size-fits-all baseline)
- `ours`: F = [F_sum, F_mlp, F_gate]     (bi-level fusion; clients mix them with their router)
- `vbpr`: F = [[D ; E [V;C]]]            (federated VBPR, width 2d)

Modality ablation: a dropped modality enters every operator as zeros (its projection is
removed); a noised one is replaced by fixed Gaussian noise with the same per-row norm.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvlr_sim.config import RunConfig

OPERATORS_BY_VARIANT = {
    "none": (),
    "sum": ("sum",),
    "mlp": ("mlp",),
    "gate": ("gate",),
    "ours": ("sum", "mlp", "gate"),
    "vbpr": (),
}


def matched_norm_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with the same per-row L2 norm as x."""
    noise = torch.randn(x.shape, generator=generator)
    return noise * (x.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))


class Fusion(nn.Module):
    """Computes the broadcast views from V, C and D for one variant."""

    def __init__(self, cfg: RunConfig, n_items: int, vision: torch.Tensor | None,
                 text: torch.Tensor | None, generator: torch.Generator):
        super().__init__()
        d = cfg.dim
        self.variant = cfg.variant
        self.operators = OPERATORS_BY_VARIANT[cfg.variant]
        ablation = cfg.ablation
        initial_ids = torch.randn(n_items, d, generator=generator) * 0.1
        if ablation["id"] == "keep":
            self.ids = nn.Parameter(initial_ids)
        else:
            self.register_buffer("ids", torch.zeros_like(initial_ids) if ablation["id"] == "drop"
                                 else matched_norm_noise(initial_ids, generator))
        self.kept = {m: ablation[m] != "drop" for m in ("vision", "text")}
        if cfg.uses_features:
            for name, feats in (("vision", vision), ("text", text)):
                feats = feats.float()
                if ablation[name] == "noise":
                    feats = matched_norm_noise(feats, generator)
                self.register_buffer(name, feats if self.kept[name] else torch.zeros_like(feats))
        if self.operators:
            self.project = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(getattr(self, m).shape[1], d), nn.LayerNorm(d))
                for m in ("vision", "text") if self.kept[m]})
        if "mlp" in self.operators:
            self.mlp = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d),
                                     nn.ReLU(), nn.Linear(2 * d, d))
        if "gate" in self.operators:
            self.gate = nn.Linear(3 * d, 3 * d)
        if cfg.variant == "vbpr":
            self.visual_map = nn.Linear(self.vision.shape[1] + self.text.shape[1], d, bias=False)
        self._reset(generator)

    def _reset(self, generator: torch.Generator) -> None:
        """Initialise every Linear deterministically from the server's generator."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = module.in_features ** -0.5
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=generator)
                    if module.bias is not None:
                        module.bias.uniform_(-bound, bound, generator=generator)

    @property
    def n_views(self) -> int:
        return max(1, len(self.operators))

    @property
    def width(self) -> int:
        return 2 * self.ids.shape[1] if self.variant == "vbpr" else self.ids.shape[1]

    def _raw(self, name: str, replace_by_mean: str | None) -> torch.Tensor:
        x = self.ids if name == "id" else getattr(self, name)
        return x.mean(dim=0, keepdim=True).expand_as(x) if name == replace_by_mean else x

    def forward(self, replace_by_mean: str | None = None) -> torch.Tensor:
        """The views F, shape (n_views, n_items, width). `replace_by_mean` names a modality
        (vision, text or id) whose input is replaced by its mean row, to measure reliance."""
        ids = self._raw("id", replace_by_mean)
        if self.variant == "none":
            return ids.unsqueeze(0)
        if self.variant == "vbpr":
            content = torch.cat([self._raw("vision", replace_by_mean), self._raw("text", replace_by_mean)], dim=1)
            return torch.cat([ids, self.visual_map(content)], dim=1).unsqueeze(0)
        x = {"id": ids}
        for m in ("vision", "text"):
            x[m] = self.project[m](self._raw(m, replace_by_mean)) if self.kept[m] else torch.zeros_like(ids)
        stacked = torch.cat([x["vision"], x["text"], x["id"]], dim=1)
        views = []
        for op in self.operators:
            if op == "sum":
                views.append(x["vision"] + x["text"] + x["id"])
            elif op == "mlp":
                views.append(self.mlp(stacked))
            else:
                gates = torch.sigmoid(self.gate(stacked)).chunk(3, dim=1)
                views.append(gates[0] * x["vision"] + gates[1] * x["text"] + gates[2] * x["id"])
        return torch.stack(views)
