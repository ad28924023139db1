"""The server: fusion operators, backbone globals, and the server step (SPEC.md section 5).

Each round `publish()` computes the views once (keeping the autograd graph) and returns the
global tensors the clients need. `apply(upload)` takes the summed uploads, forms the weighted
mean gradient, pulls the view gradient back through the operators with one vector-Jacobian
product (exactly the sum of each client's own pull-back, since the views were fixed in the
round) and steps the global parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvlr_sim.config import ModelConfig, ServerConfig
from fedvlr_sim.engine.fusion import Fusion
from fedvlr_sim.engine.messages import Upload


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies, which the server step can never change under the clients."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


class Server(nn.Module):
    """Holds V, C, D, the operator parameters and the backbone's other globals (FedNCF's tower)."""

    def __init__(self, model_cfg: ModelConfig, server_cfg: ServerConfig, seed: int, n_items: int,
                 vision: torch.Tensor | None = None, text: torch.Tensor | None = None, device: str = "cpu"):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.fusion = Fusion(model_cfg, n_items, vision, text, generator)
        self.tower = nn.ParameterDict()
        for name, shape in model_cfg.backbone_def.global_shapes(self.fusion.width).items():
            bound = shape[-1] ** -0.5 if len(shape) == 2 else 0.05
            value = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            self.tower[name.replace(".", "_")] = nn.Parameter(value)
        self.device = torch.device(device)
        self.to(self.device)
        params = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = (torch.optim.Adam(params, lr=server_cfg.server_lr) if server_cfg.server_optimizer == "adam"
                          else torch.optim.SGD(params, lr=server_cfg.server_lr))
        self._views: torch.Tensor | None = None
        self._published: dict[str, torch.Tensor] = {}

    @property
    def n_views(self) -> int:
        return self.fusion.n_views

    @property
    def width(self) -> int:
        return self.fusion.width

    def _backbone_globals(self) -> dict[str, torch.Tensor]:
        return {name.replace("_", "."): p for name, p in self.tower.items()}

    def publish(self) -> dict[str, torch.Tensor]:
        """Compute the views for this round; return the global tensors (detached, on CPU)."""
        self._views = self.fusion()
        self._published = snapshot({"views": self._views} | self._backbone_globals())
        return self._published

    def largest_published(self) -> float:
        """The largest magnitude among the last published globals (NaN if any is NaN)."""
        return max((float(t.abs().max()) for t in self._published.values() if t.numel()), default=0.0)

    def altered_globals(self, modality: str) -> dict[str, torch.Tensor]:
        """The globals with one modality's input replaced by its mean (for reliance)."""
        with torch.no_grad():
            views = self.fusion(replace_by_mean=modality)
        return snapshot({"views": views} | self._backbone_globals())

    def apply(self, upload: Upload) -> float:
        """Server step from the round's summed uploads; returns the mean-gradient norm."""
        if self._views is None:
            raise RuntimeError("apply() called before publish() in this round")
        grads = upload.mean_gradient()
        outputs = {"views": self._views} | self._backbone_globals()
        tensors = [t for k, t in outputs.items() if t.requires_grad]
        grad_tensors = [grads[k].to(self.device, t.dtype) for k, t in outputs.items() if t.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        if tensors:
            torch.autograd.backward(tensors, grad_tensors)
            self.optimizer.step()
        self._views = None
        return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values())))

    def full_state(self) -> dict:
        """Parameters and optimiser state, for checkpoints."""
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_full_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
