"""A chunk's private routers during one round, with the first layer updated in rank one.

The router's input h_u (the mean of the views over the user's train items) is fixed within a
round: the views do not change while clients train (`global_update=accumulate`). Every SGD step
then changes the first layer W1 (|G|w x hidden, most of the router's ~12k weights) by a rank-one
term h_u (x) g_k, so after k steps W1 = c_k W1_0 + h_u (x) a_u with a hidden-sized a_u (c_k is
the weight-decay factor). The pre-activation is c_k h_u W1_0 + (h_u . h_u) a_u + b1: W1 is read
once at the start of the round and written once at its end, instead of at every step, and the
history gather is done once too. The gradient that reaches the views through h_u is summed over
the steps and pulled back once. The result equals plain SGD on W1 (the engine tests hold it to
the per-user reference loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vmap

from fedvlr_sim.engine import model


class RankOneRouter:
    """The routers of a chunk of users for one round; `local` loses `router.w1` until `finish`."""

    def __init__(self, local: dict, views: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor):
        self.views = views
        self.h = vmap(model.history_summary, in_dims=(None, 0, 0))(views, hist, hist_mask)   # (n, Gw)
        self.h0 = self.h.detach()
        self.w1 = local.pop("router.w1").detach()                                  # (n, Gw, hidden)
        self.p0 = torch.bmm(self.h0[:, None, :], self.w1)[:, 0]                    # h_u W1_0
        self.hh = (self.h0 * self.h0).sum(dim=1, keepdim=True)                     # h_u . h_u
        self.a = torch.zeros_like(self.p0)
        self.c = 1.0
        self.dz_sum = torch.zeros_like(self.p0)                                    # sum_k c_k dL_k/dz
        self.a_dz_sum = torch.zeros(len(self.p0), device=self.p0.device)         # sum_k a_k . dL_k/dz

    def weights(self, local: dict) -> torch.Tensor:
        """Each user's mixing weights over the views, shape (n, G)."""
        z = self.c * self.p0 + self.hh * self.a + local["router.b1"]
        logits = torch.bmm(F.relu(z)[:, None, :], local["router.w2"])[:, 0] + local["router.b2"]
        return torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def step(self, dz: torch.Tensor, scale: torch.Tensor, lr: float, weight_decay: float) -> None:
        """The SGD step of W1 for this step's gradient at the pre-activation `dz` (which is the
        gradient of b1; alpha-weighted like the upload, `scale` divides it back out)."""
        self.dz_sum += self.c * dz
        self.a_dz_sum += (self.a * dz).sum(dim=1)
        decay = 1.0 - lr * weight_decay
        self.c *= decay
        self.a = decay * self.a - lr * dz / scale[:, None]

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W1 at the end of the round, the round's gradient of the views through h_u). W1_0 is
        read for the gradient, then stepped in place (the chunk's local state, often the
        population's storage itself): one pass each."""
        with torch.no_grad():
            grad_h = torch.bmm(self.w1, self.dz_sum[:, :, None])[:, :, 0] + self.h0 * self.a_dz_sum[:, None]
            w1 = self.w1.baddbmm_(self.h0[:, :, None], self.a[:, None, :], beta=self.c)
        (grad_views,) = torch.autograd.grad(self.h, self.views, grad_h)
        return w1, grad_views
