"""The per-user mathematics of SPEC.md sections 2-3, written for ONE user.

Every function here but one takes one user's local state (a dict of tensors without a user
dimension), the global tensors (`views` of shape (G, I, w) and, for FedNCF, the tower), and that
user's data. `ClientPopulation` vectorises them across users with `torch.func.vmap`, so the same
code serves a whole shard at once, a plain per-user loop, and per-user copies of the globals.
The exception is FedRAP's dense regulariser, `rap_regulariser`, written for a chunk of users
with a hand-made backward because its |I| x w terms dominate FedRAP's cost.

Backbones (score for item representation e, as logits; the loss applies the sigmoid):
  fedavg, pfedrec, fedrap: theta_u . e + b_u      fcf: p_u . e
  fedncf: out([p_gmf * e ; tower([p_mlp ; e])])
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedvlr_sim.engine.rng import Stream, normal

HEAD_BACKBONES = ("fedavg", "pfedrec", "fedrap")
TABLE_BACKBONES = ("pfedrec", "fedrap")
USER_INIT_STD = 0.1


def aggregation_weight(backbone: str, train_counts: torch.Tensor) -> torch.Tensor:
    """alpha_u of SPEC.md section 3: the user's train interactions for FedAvg and FedNCF, else 1."""
    if backbone in ("fedavg", "fedncf"):
        return train_counts.float()
    return torch.ones_like(train_counts, dtype=torch.float32)


def local_shapes(backbone: str, width: int, n_views: int, n_items: int, router_hidden: int | None) -> dict:
    """Shapes of one user's trainable local parameters (the router only for `ours`)."""
    shapes = {}
    if router_hidden:
        shapes |= {"router.w1": (n_views * width, router_hidden), "router.b1": (router_hidden,),
                   "router.w2": (router_hidden, n_views), "router.b2": (n_views,)}
    if backbone in HEAD_BACKBONES:
        shapes |= {"head.w": (width,), "head.b": ()}
    if backbone == "fcf":
        shapes["user"] = (width,)
    if backbone == "fedncf":
        shapes |= {"user_gmf": (width,), "user_mlp": (width,)}
    if backbone in TABLE_BACKBONES:
        shapes["table"] = (n_items, width)
    return shapes


def init_local(shapes: dict, seed: int, users: np.ndarray, table_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Stacked initial local state for `users`; each user's values depend only on (seed, user).

    Router weights ~ N(0, 1/fan_in), user vectors and heads ~ N(0, 0.1^2), biases and personal
    item tables (stored as `table_dtype`) start at zero.
    """
    state = {}
    for index, (name, shape) in enumerate(sorted(shapes.items())):
        size = int(np.prod(shape)) if shape else 1
        if name.endswith((".b", ".b1", ".b2")) or name == "table":
            state[name] = torch.zeros((len(users), *shape), dtype=table_dtype if name == "table" else torch.float32)
            continue
        std = 1.0 / math.sqrt(shape[0]) if name.startswith("router") else USER_INIT_STD
        state[name] = normal(seed, Stream.INIT_LOCAL, index, users, size).reshape((len(users), *shape)) * std
    return state


def tower_shapes(width: int) -> dict:
    """FedNCF's global MLP tower 2w -> w -> w/2 -> w/4 and its output layer (w + w/4 -> 1)."""
    dims = [2 * width, width, width // 2, width // 4]
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(dims, dims[1:])):
        shapes |= {f"tower.{i}.weight": (fan_out, fan_in), f"tower.{i}.bias": (fan_out,)}
    return shapes | {"out.weight": (1, width + width // 4), "out.bias": (1,)}


def mixing_weights(local: dict, views: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
    """The private router: w_u = softmax(R_u(concat_j mean_{i in history} F_j[i])), shape (G,)."""
    rows = views[:, hist] * hist_mask[None, :, None]
    summary = rows.sum(dim=1) / hist_mask.sum().clamp_min(1.0)
    hidden = F.relu(summary.reshape(-1) @ local["router.w1"] + local["router.b1"])
    return torch.softmax(hidden @ local["router.w2"] + local["router.b2"], dim=-1)


def shared_rep(glob: dict, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The user's mixture of the views for `items`, shape (*items, w)."""
    return torch.tensordot(weights, glob["views"][:, items], dims=1)


def logits(backbone: str, local: dict, glob: dict, e: torch.Tensor) -> torch.Tensor:
    """Backbone score (before the sigmoid) for item representations e of shape (..., w)."""
    if backbone in HEAD_BACKBONES:
        return e @ local["head.w"] + local["head.b"]
    if backbone == "fcf":
        return e @ local["user"]
    gmf = local["user_gmf"] * e
    hidden = torch.cat([local["user_mlp"].expand_as(e), e], dim=-1)
    for i in range(3):
        hidden = F.relu(F.linear(hidden, glob[f"tower.{i}.weight"], glob[f"tower.{i}.bias"]))
    return F.linear(torch.cat([gmf, hidden], dim=-1), glob["out.weight"], glob["out.bias"]).squeeze(-1)


def personal_rep(backbone: str, local: dict, glob: dict, items: torch.Tensor, weights) -> torch.Tensor:
    """Item representation the user trains with: PFedRec fine-tunes a local copy (global + the
    round's offset `table`), FedRAP adds its persistent personal table, others use the global."""
    e = shared_rep(glob, items, weights)
    if backbone in TABLE_BACKBONES:
        e = e + local["table"][items]
    return e


def user_loss(backbone: str, bpr: bool, local: dict, glob: dict, weights: torch.Tensor, pos: torch.Tensor,
              neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One user's minibatch loss: mean pointwise BCE over positives and their negatives (or mean
    BPR over (positive, negative) pairs). `weights` (G,) mix the views (the router's output, or
    [1.0] for a single view). pos (B,), neg (B, r), mask (B,) marks real rows; no rows, loss 0.
    FedRAP's regulariser is added per chunk by `rap_regulariser`."""
    score_pos = logits(backbone, local, glob, personal_rep(backbone, local, glob, pos, weights))
    score_neg = logits(backbone, local, glob, personal_rep(backbone, local, glob, neg, weights))
    n_rows = mask.sum()
    if bpr:
        per_row = F.softplus(score_neg - score_pos[:, None]).sum(dim=1)
        return (per_row * mask).sum() / (n_rows * neg.shape[1]).clamp_min(1.0)
    per_row = F.softplus(-score_pos) + F.softplus(score_neg).sum(dim=1)
    return (per_row * mask).sum() / (n_rows * (1 + neg.shape[1])).clamp_min(1.0)


class _RapRegulariser(torch.autograd.Function):
    """FedRAP's -lambda ||P_u - C_u||^2 / (I w) + mu ||C_u||_1 / (I w) for a chunk of users,
    with C_u = sum_j w_uj F_j (the user's shared item representation), with a hand-written
    backward: the dense |I| x w terms are the cost of FedRAP, so they are touched few times."""

    @staticmethod
    def forward(ctx, table, weights, views, rap_lambda, rap_mu):
        spec = "ng,ngiw->niw" if views.dim() == 4 else "ng,giw->niw"
        common = torch.einsum(spec, weights, views)
        diff = table - common
        size = common[0].numel()
        ctx.save_for_backward(weights, views, diff, common)
        ctx.constants = (rap_lambda, rap_mu, size)
        return (-rap_lambda * diff.pow(2).sum(dim=(1, 2)) + rap_mu * common.abs().sum(dim=(1, 2))) / size

    @staticmethod
    def backward(ctx, grad_value):
        weights, views, diff, common = ctx.saved_tensors
        rap_lambda, rap_mu, size = ctx.constants
        scale = (grad_value / size)[:, None, None]
        grad_table = (-2.0 * rap_lambda) * scale * diff
        grad_common = scale * (2.0 * rap_lambda * diff + rap_mu * torch.sign(common))
        per_user = views.dim() == 4
        grad_weights = torch.einsum("niw,ngiw->ng" if per_user else "niw,giw->ng", grad_common, views)
        grad_views = torch.einsum("ng,niw->ngiw" if per_user else "ng,niw->giw", weights, grad_common)
        return grad_table, grad_weights, grad_views, None, None


def rap_regulariser(table: torch.Tensor, weights: torch.Tensor, views: torch.Tensor,
                    rap_lambda: float, rap_mu: float) -> torch.Tensor:
    """FedRAP's curriculum-weighted regularisers for a chunk of users, shape (n,): tables (n, I, w),
    mixing weights (n, G), views (G, I, w) shared or (n, G, I, w) per user."""
    return _RapRegulariser.apply(table, weights, views, rap_lambda, rap_mu)


def shared_item_reps(local: dict, glob: dict, hist, hist_mask) -> torch.Tensor:
    """The user's (router-mixed) global representation of every item, shape (I, w)."""
    return torch.tensordot(router_weights(local, glob, hist, hist_mask), glob["views"], dims=1)


def router_weights(local: dict, glob: dict, hist, hist_mask) -> torch.Tensor:
    """The user's mixing weights over views (a single 1.0 when there is no router)."""
    if "router.w1" in local:
        return mixing_weights(local, glob["views"], hist, hist_mask)
    return torch.ones(glob["views"].shape[0])


def eval_item_reps(backbone: str, local: dict, glob: dict, hist, hist_mask, seen) -> torch.Tensor:
    """The representation of every item the user predicts with, shape (I, w): PFedRec uses its
    fine-tuned table once it has trained, FedRAP adds its personal table to the global one."""
    common = shared_item_reps(local, glob, hist, hist_mask)
    if backbone == "pfedrec":
        return torch.where(seen, local["table"], common)
    if backbone == "fedrap":
        return local["table"] + common
    return common


def user_scores(backbone: str, local: dict, glob: dict, hist, hist_mask, seen) -> torch.Tensor:
    """Scores (logits) of every item for one user, shape (I,)."""
    return logits(backbone, local, glob, eval_item_reps(backbone, local, glob, hist, hist_mask, seen))
