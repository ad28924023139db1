"""The server-side fusion operators g_j of SPEC.md section 2, over the projected inputs
x_v = LN(P_v V), x_c = LN(P_c C) and x_d = D (each |I| x d)."""

from __future__ import annotations

import torch
from torch import nn


class Operator:
    """One operator: the modules it adds to the fusion module, and its view."""

    def build(self, fusion: nn.Module, dim: int) -> None:
        pass

    def view(self, fusion: nn.Module, x: dict[str, torch.Tensor], stacked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Sum(Operator):
    """F_sum = x_v + x_c + x_d."""

    def view(self, fusion, x, stacked):
        return x["vision"] + x["text"] + x["id"]


class Mlp(Operator):
    """F_mlp = MLP([x_v ; x_c ; x_d]), three layers 3d -> 2d -> 2d -> d with ReLU."""

    def build(self, fusion, dim):
        fusion.mlp = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, 2 * dim),
                                   nn.ReLU(), nn.Linear(2 * dim, dim))

    def view(self, fusion, x, stacked):
        return fusion.mlp(stacked)


class Gate(Operator):
    """F_gate = sum_m sigmoid(W_m [x_v ; x_c ; x_d] + b_m) * x_m (the gates really multiply)."""

    def build(self, fusion, dim):
        fusion.gate = nn.Linear(3 * dim, 3 * dim)

    def view(self, fusion, x, stacked):
        gates = torch.sigmoid(fusion.gate(stacked)).chunk(3, dim=1)
        return gates[0] * x["vision"] + gates[1] * x["text"] + gates[2] * x["id"]


OPERATORS = {"sum": Sum(), "mlp": Mlp(), "gate": Gate()}
