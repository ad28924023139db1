"""The five backbones of SPEC.md section 3, one class each, registered by name.

A `Backbone` owns everything that differs between backbones: the shapes of a user's local state
and of any global tensors it adds, the score of an item representation, the representation a
user trains and predicts with, the aggregation weight, a regulariser and its round hooks. Its
per-user methods are written for ONE user (tensors without a user dimension), so `vmap` serves a
whole shard; the engine calls them and never branches on a backbone's name.

Adding a backbone is one subclass plus `@register`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BACKBONES: dict[str, type["Backbone"]] = {}


def register(cls: type["Backbone"]) -> type["Backbone"]:
    """Make a backbone class available under its `name` (to the config, CLI and engine)."""
    BACKBONES[cls.name] = cls
    return cls


class Backbone:
    """Defaults shared by the backbones; subclasses override what differs."""

    name = ""
    weight_by_interactions = False    # alpha_u: the user's train interactions, else 1
    has_item_table = False            # keeps an |I| x w personal item table per user
    sparse_table: str | None = None   # the local table a round steps at the batch's rows only
    hyper_grid: dict[str, tuple[float, ...]] = {}   # backbone hyper-parameters a sweep tunes
    view_norm = "rms"                 # what --view-norm auto means for this backbone
    # (q, b): the local tensors of a linear head, when a user scores every item as e @ q + b on the
    # shared representation e (b None: no bias); evaluation then scores each view with one product
    linear_head: tuple[str, str | None] | None = None

    def __init__(self, model_cfg):
        self.cfg = model_cfg

    @classmethod
    def validate(cls, model_cfg) -> None:
        """Raise FedVLRError when the model configuration cannot work with this backbone."""

    # ------------------------------------------------------------ shapes and weights
    def local_shapes(self, width: int, n_items: int) -> dict[str, tuple]:
        """Shapes of one user's persistent local state (the router is added by the variant)."""
        raise NotImplementedError

    def global_shapes(self, width: int) -> dict[str, tuple]:
        """Global tensors besides the views that the server holds and clients use."""
        return {}

    def aggregation_weight(self, train_counts: torch.Tensor) -> torch.Tensor:
        """alpha_u for each user."""
        if self.weight_by_interactions:
            return train_counts.float()
        return torch.ones_like(train_counts, dtype=torch.float32)

    # ------------------------------------------------------------ one user's math
    def logits(self, local: dict, glob: dict, e: torch.Tensor) -> torch.Tensor:
        """Score (before the sigmoid) of item representations e of shape (..., w)."""
        raise NotImplementedError

    def train_rep(self, local: dict, shared: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The representation a user trains with, from the shared one of `items`."""
        return shared

    def eval_reps(self, local: dict, shared: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        """The representation of every item a user predicts with, from the shared (I, w) one;
        `trained` says whether the user has completed a round of local training."""
        return shared

    # ------------------------------------------------------------ round hooks (a chunk of users)
    def begin_round(self, local: dict) -> dict:
        """The chunk's trainable local state for this round, from its stored state."""
        return local

    def frozen(self, global_update: str) -> set[str]:
        """Names of local tensors that are not stepped this round."""
        return set()

    def regulariser(self, local: dict, weights: torch.Tensor, views: torch.Tensor, round_idx: int) -> torch.Tensor | None:
        """A per-user term (n,) added to each minibatch loss, or None."""
        return None

    def table_penalty(self, views: torch.Tensor, round_idx: int) -> "TablePenalty | None":
        """`regulariser` for a round of `SparseTable`s over the fixed views (G, I, w), or None."""
        return None

    def end_round(self, local: dict, shared_reps) -> dict:
        """The chunk's state to store after training; `shared_reps()` gives each user's (I, w)
        shared representation of every item with the trained router."""
        return local


class HeadBackbone(Backbone):
    """A per-user linear score head theta_u . e, plus a bias b_u with `head_bias` (FedAvg,
    PFedRec, FedRAP)."""

    @property
    def linear_head(self):
        return ("head.w", "head.b" if self.cfg.head_bias else None)

    def local_shapes(self, width, n_items):
        return {"head.w": (width,)} | ({"head.b": ()} if self.cfg.head_bias else {})

    def logits(self, local, glob, e):
        scores = e @ local["head.w"]
        return scores + local["head.b"] if self.cfg.head_bias else scores


@register
class FedAvg(HeadBackbone):
    """McMahan et al. 2017: a private head over the global item representation."""

    name = "fedavg"
    weight_by_interactions = True


@register
class FCF(Backbone):
    """Ammad-Ud-Din et al. 2019: a private user vector, dot-product scores."""

    name = "fcf"
    linear_head = ("user", None)

    def local_shapes(self, width, n_items):
        return {"user": (width,)}

    def logits(self, local, glob, e):
        return e @ local["user"]


@register
class FedNCF(Backbone):
    """Perifanis et al. 2022: private GMF and MLP user embeddings, a global MLP tower."""

    name = "fedncf"
    weight_by_interactions = True
    # the fused views share one direction across items (99.8% of the MLP view's energy on KU);
    # fed to the ReLU tower uncentred, +MLP stalled at the base rate in 2 of 3 seeds (defaults.md Q7)
    view_norm = "center"

    @classmethod
    def validate(cls, model_cfg):
        from fedvlr_sim.errors import FedVLRError

        if model_cfg.dim % 4:
            raise FedVLRError(f"--dim must be divisible by 4 for fedncf (tower d -> d/2 -> d/4), got {model_cfg.dim}")

    def local_shapes(self, width, n_items):
        return {"user_gmf": (width,), "user_mlp": (width,)}

    def global_shapes(self, width):
        """The MLP tower 2w -> w -> w/2 -> w/4 and the output layer (w + w/4 -> 1)."""
        dims = [2 * width, width, width // 2, width // 4]
        shapes = {}
        for i, (fan_in, fan_out) in enumerate(zip(dims, dims[1:])):
            shapes |= {f"tower.{i}.weight": (fan_out, fan_in), f"tower.{i}.bias": (fan_out,)}
        return shapes | {"out.weight": (1, width + width // 4), "out.bias": (1,)}

    def logits(self, local, glob, e):
        gmf = local["user_gmf"] * e
        hidden = torch.cat([local["user_mlp"].expand_as(e), e], dim=-1)
        for i in range(3):
            hidden = F.relu(F.linear(hidden, glob[f"tower.{i}.weight"], glob[f"tower.{i}.bias"]))
        return F.linear(torch.cat([gmf, hidden], dim=-1), glob["out.weight"], glob["out.bias"]).squeeze(-1)


@register
class PFedRec(HeadBackbone):
    """Zhang et al. 2023: each client fine-tunes its own copy of the item representation every
    round (a round offset on the shared one) and predicts with that copy (`table`)."""

    name = "pfedrec"
    has_item_table = True
    linear_head = None                # scores its personal table, not the shared representation
    sparse_table = "table_offset"

    def local_shapes(self, width, n_items):
        return super().local_shapes(width, n_items) | {"table": (n_items, width)}

    def train_rep(self, local, shared, items):
        return shared + table_rows(local, "table_offset", items)

    def eval_reps(self, local, shared, trained):
        return torch.where(trained, local["table"], shared)

    def begin_round(self, local):
        stored = local.pop("table")
        return local | {"table_offset": torch.zeros_like(stored)}

    def frozen(self, global_update):
        # with global_update=local the client's copy IS the stepped globals: the offset stays 0
        return {"table_offset"} if global_update == "local" else set()

    def end_round(self, local, shared_reps):
        offset = local.pop("table_offset")
        return local | {"table": shared_reps() + offset}


@register
class FedRAP(HeadBackbone):
    """Li et al. 2024: an additive personal item table P_u, with curriculum regularisers
    -lambda_t ||P_u - C_u||^2 / (I w) + mu_t ||C_u||_1 / (I w), lambda_t = lambda tanh(t / 10)."""

    name = "fedrap"
    has_item_table = True
    linear_head = None                # scores its personal table, not the shared representation
    sparse_table = "table"
    hyper_grid = {"fedrap_lambda": (1e-4, 1e-3, 1e-2, 1e-1), "fedrap_mu": (1e-4, 1e-3, 1e-2, 1e-1)}

    def local_shapes(self, width, n_items):
        return super().local_shapes(width, n_items) | {"table": (n_items, width)}

    def train_rep(self, local, shared, items):
        return shared + table_rows(local, "table", items)

    def eval_reps(self, local, shared, trained):
        return local["table"] + shared

    def _weights(self, round_idx: int) -> tuple[float, float]:
        curriculum = float(np.tanh(round_idx / 10.0))
        return self.cfg.fedrap_lambda * curriculum, self.cfg.fedrap_mu * curriculum

    def regulariser(self, local, weights, views, round_idx):
        return _RapRegulariser.apply(local["table"], weights, views, *self._weights(round_idx))

    def table_penalty(self, views, round_idx):
        rap_lambda, rap_mu = self._weights(round_idx)
        return _RapPenalty(views, rap_lambda, rap_mu) if rap_lambda or rap_mu else None


class TablePenalty:
    """A per-user term of a round's minibatch losses on `SparseTable`s (engine/table.py), built
    once a round over the round's fixed views. Called with a chunk's table, the mixing weights
    (n, G) and each user's weight in the summed loss, it returns (the term (n,), which
    differentiates to the weights; the rate r with gradient -r (T - C) in the table, C being the
    weights' mixture of the views) and hands the table the coefficients of its views' gradient
    that run through T. The rest of the views' gradient it sums over every call of the round
    and gives once, from `view_grad`."""

    def __call__(self, table, weights: torch.Tensor, loss_weight: torch.Tensor) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    def view_grad(self) -> torch.Tensor:
        """The views' gradient (G, I, w) summed over every call so far, less the part through T."""
        raise NotImplementedError


class _RapPenalty(TablePenalty):
    """FedRAP's regulariser from a few inner products: with T = s X + sum_j c_j F_j and
    e = c - w, ||T - C||^2 = s^2 ||X||^2 + 2 s e.<X, F> + e' Gram e and
    <T - C, F_j> = s <X, F_j> + (Gram e)_j; the L1 term is `MixtureL1`. Its views' gradient
    sum_u pull_u (T_u - C_u) is pull (s X) through the table plus (sum pull' e) F: the G x G
    factor is summed over the round and multiplies the views once."""

    def __init__(self, views: torch.Tensor, rap_lambda: float, rap_mu: float):
        self.views, self.rap_lambda, self.rap_mu = views.detach(), rap_lambda, rap_mu
        self.size = views[0].numel()
        self.gram = torch.einsum("giw,hiw->gh", self.views, self.views)
        self.l1 = MixtureL1(self.views.reshape(len(views), -1))
        self.pull_excess = torch.zeros_like(self.gram)            # sum over calls of pull' e

    def __call__(self, table, weights, loss_weight):
        lam, size = self.rap_lambda, self.size
        w = weights.detach()
        excess, scale = table.coef - w, table.scale
        squares, with_views = table.inner
        diff_sq = scale**2 * squares + 2 * scale * (excess * with_views).sum(1) + ((excess @ self.gram) * excess).sum(1)
        diff_views = scale[:, None] * with_views + excess @ self.gram
        l1, l1_grad = self.l1(w, loss_weight * self.rap_mu / size)
        pull = loss_weight[:, None] * w * (2 * lam / size)
        self.pull_excess += pull.T @ excess
        table.add_view_grad(pull)
        value = (-lam * diff_sq + self.rap_mu * l1) / size
        grad_w = (2 * lam * diff_views + self.rap_mu * l1_grad) / size
        return value + ((weights - w) * grad_w).sum(1), 2 * lam / size

    def view_grad(self):
        mixed = torch.einsum("jh,hiw->jiw", self.pull_excess, self.views)
        return mixed + self.l1.view_grad().reshape(self.views.shape)


def table_rows(local: dict, name: str, items: torch.Tensor) -> torch.Tensor:
    """Rows `items` of the personal table `name`: gathered by the client for the batch
    (`name.rows`, aligned with the batch's items) when the table is a `SparseTable`."""
    return local[f"{name}.rows"] if f"{name}.rows" in local else local[name][items]


class MixtureL1:
    """||C_u||_1 of every user's mixture C_u = sum_j w_uj F_j of fixed views F (G, E).

    Weights are nonnegative and sum to one, so an entry whose views all share one sign has that
    sign in every mixture: those entries are summed once for all users. The others are
    evaluated per user, in cache-sized blocks. The views' gradient is summed over calls, on the
    mixed entries only, and laid out over all entries once (`view_grad`)."""

    def __init__(self, views: torch.Tensor, block: int | None = None):
        signs = torch.sign(views)
        self.fixed_sign = signs[0] * (signs == signs[0]).all(dim=0)
        mixed = torch.nonzero(self.fixed_sign == 0).squeeze(1)
        self.mixed = mixed[(signs[:, mixed] != 0).any(dim=0)]          # all-zero entries add nothing
        self.mixed_views = views[:, self.mixed].contiguous()
        self.fixed_sum = views @ self.fixed_sign
        # blocks of 2^17 floats (512 KB of signs) stay in a core's L2 cache: 1.2x a FedRAP+ours
        # round against 2^20 on this machine (docs/performance.md); a GPU wants few, large launches
        self.block = block or (1 << 17 if views.device.type == "cpu" else 1 << 27)
        self.fixed_weight = torch.zeros(len(views), device=views.device)   # sum over calls of coef' w
        self.mixed_grad = torch.zeros_like(self.mixed_views)
        self._blocks: dict[int, list] = {}

    def __call__(self, weights: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(||C_u||_1 (n,), its gradient in w_u (n, G)); adds sum_u coef_u w_u sign(C_u) to the
        views' gradient."""
        grad_w = self.fixed_sum.expand(len(weights), -1).clone()
        self.fixed_weight += coef @ weights
        scaled = (coef[:, None] * weights).T
        users = max(1, min(len(weights), 256))
        cols = max(1, min(len(self.mixed), self.block // users))
        buffer = weights.new_empty(users * cols)   # every block's signs, written in place
        row_blocks = [(weights[first:first + users], grad_w[first:first + users], scaled[:, first:first + users])
                      for first in range(0, len(weights), users)]
        for part, part_t, part_grad in self._column_blocks(cols):
            for rows, rows_grad, rows_scaled in row_blocks:
                signs = buffer[:len(rows) * part.shape[1]].view(len(rows), part.shape[1])
                torch.mm(rows, part, out=signs).sign_()
                rows_grad.addmm_(signs, part_t)
                part_grad.addmm_(rows_scaled, signs)
        # sum_e |w . f_e| = w . sum_e sign(w . f_e) f_e
        return (weights * grad_w).sum(1), grad_w

    def _column_blocks(self, cols: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The mixed entries in blocks of `cols`: (views, their transpose, the views' gradient
        there), kept per block width (chunks of equal size reuse them)."""
        if cols not in self._blocks:
            blocks = []
            for start in range(0, len(self.mixed), cols):
                part = self.mixed_views[:, start:start + cols]
                blocks.append((part, part.T, self.mixed_grad[:, start:start + cols]))
            self._blocks[cols] = blocks
        return self._blocks[cols]

    def view_grad(self) -> torch.Tensor:
        """sum over calls and users of coef_u w_u sign(C_u), shape (G, E)."""
        grad = torch.outer(self.fixed_weight, self.fixed_sign)
        grad[:, self.mixed] += self.mixed_grad
        return grad


class _RapRegulariser(torch.autograd.Function):
    """FedRAP's regulariser for a chunk of users, with C_u = sum_j w_uj F_j, and a hand-written
    backward: the dense |I| x w terms are the cost of FedRAP, so they are touched few times.
    Tables (n, I, w), mixing weights (n, G), views (G, I, w) shared or (n, G, I, w) per user."""

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
