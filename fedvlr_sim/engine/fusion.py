"""The server's fusion module: item inputs V, C, D -> the broadcast views (|G| x |I| x w).

What the views are is the variant's (`engine/variants.py`) and the operators' business
(`engine/operators.py`); this module holds the inputs and the learnable parameters.
Modality ablation: a dropped modality enters every operator as zeros (its projection is
removed); a noised one is replaced by fixed Gaussian noise with the same per-row norm.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvlr_sim.config import ModelConfig


def matched_norm_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with the same per-row L2 norm as x."""
    noise = torch.randn(x.shape, generator=generator)
    return noise * (x.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))


class Fusion(nn.Module):
    """Computes the broadcast views from V, C and D for one variant."""

    def __init__(self, model_cfg: ModelConfig, n_items: int, vision: torch.Tensor | None,
                 text: torch.Tensor | None, generator: torch.Generator):
        super().__init__()
        self.variant = model_cfg.variant_def
        initial_ids = torch.randn(n_items, model_cfg.dim, generator=generator) * 0.1
        if model_cfg.ablation_of("id") == "keep":
            self.ids = nn.Parameter(initial_ids)
        else:
            self.register_buffer("ids", torch.zeros_like(initial_ids) if model_cfg.ablation_of("id") == "drop"
                                 else matched_norm_noise(initial_ids, generator))
        self.kept = {m: model_cfg.ablation_of(m) != "drop" for m in ("vision", "text")}
        if self.variant.uses_features:
            for name, feats in (("vision", vision), ("text", text)):
                feats = feats.float()
                if model_cfg.ablation_of(name) == "noise":
                    feats = matched_norm_noise(feats, generator)
                if self.variant.center_features:   # real CLIP rows share one dominant direction
                    feats = feats - feats.mean(dim=0, keepdim=True)
                self.register_buffer(name, feats if self.kept[name] else torch.zeros_like(feats))
        self.variant.build(self, model_cfg.dim)
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
    def operators(self) -> tuple[str, ...]:
        return self.variant.operators

    @property
    def n_views(self) -> int:
        return self.variant.n_views

    @property
    def width(self) -> int:
        return self.variant.width(self.ids.shape[1])

    def _raw(self, name: str, replace_by_mean: str | None) -> torch.Tensor:
        x = self.ids if name == "id" else getattr(self, name)
        return x.mean(dim=0, keepdim=True).expand_as(x) if name == replace_by_mean else x

    def forward(self, replace_by_mean: str | None = None) -> torch.Tensor:
        """The views F, shape (n_views, n_items, width). `replace_by_mean` names a modality
        (vision, text or id) whose input is replaced by its mean row, to measure reliance."""
        return self.variant.views(self, lambda name: self._raw(name, replace_by_mean))
