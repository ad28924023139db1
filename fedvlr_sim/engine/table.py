"""A chunk's personal item tables during one round, stepped where the batch touches them.

PFedRec and FedRAP keep an |I| x w table per user, but a minibatch reads only the rows of its
positives and negatives. Stepping the whole table with a dense gradient costs several passes
over n x |I| x w floats per step; here a step reads and writes only the batch's rows.

What touches every row is affine in the table and the views, and the views are fixed within a
round (`global_update=accumulate`): weight decay scales the table, and FedRAP's regulariser
-lambda ||T - C||^2 moves every row toward or away from C = sum_j w_j F_j. So the table is kept
as T = s X + sum_j c_j F_j, with a per-user scale s and per-view coefficients c carrying those
moves, and X changed only at the batch's rows. `inner` keeps ||X||^2 and <X, F_j> up to date
for penalties such as FedRAP's. The views' gradient through s X, which would read every table at
every step, is summed in closed form: sum_k b_k X_k = B X_final - sum_k B_k (X_{k+1} - X_k) with
B_k the running sum of the coefficients b_k. The result equals dense SGD on T (the engine tests
hold it to the per-user reference loop).
"""

from __future__ import annotations

import torch

from fedvlr_sim.engine.model import mix_rows


class SparseTable:
    """Tables (n, I, w) of a chunk, as T = s X + sum_j c_j F_j with views F (G, I, w)."""

    def __init__(self, table: torch.Tensor, views: torch.Tensor):
        n, n_views = table.shape[0], views.shape[0]
        self.x, self.views = table, views.detach()
        self.scale = torch.ones(n, device=table.device)
        self.coef = torch.zeros(n, n_views, device=table.device)
        self.users = torch.arange(n, device=table.device)
        self._inner: tuple[torch.Tensor, torch.Tensor] | None = None
        self._defers = False                                                  # add_view_grad was called
        self.view_coef = torch.zeros(n, n_views, device=table.device)       # B: running sum of b_k
        self.view_grad = torch.zeros_like(self.views)     # -sum_k B_k (X_(k+1) - X_k)

    @property
    def inner(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||X_u||^2 of shape (n,), <X_u, F_j> of shape (n, G)), computed once, then kept current."""
        if self._inner is None:
            flat = self.x.view(len(self.x), -1)
            squares = torch.linalg.vector_norm(flat, dim=1).square()     # no n x I x w temporary
            self._inner = (squares, flat @ self.views.reshape(len(self.views), -1).T)
        return self._inner

    def rows(self, items: torch.Tensor, view_rows: torch.Tensor) -> torch.Tensor:
        """T at `items` (n, ...), a leaf to differentiate the minibatch loss against, given the
        views at those items (n, G, ..., w); `step` must follow with the same items."""
        width = self.x.shape[2]
        self._flat_items = (items + user_broadcast(self.users, items) * self.x.shape[1]).reshape(-1)
        x_rows = self.x.view(-1, width).index_select(0, self._flat_items).view(*items.shape, width)
        self._view_rows = view_rows
        mixed = mix_rows(self.coef, self._view_rows)
        return (user_broadcast(self.scale, x_rows) * x_rows + mixed).requires_grad_()

    def add_view_grad(self, coef: torch.Tensor) -> None:
        """Add sum_u coef_uj s_u X_u, at the current X, to the views' gradient (summed in closed
        form: see the module docstring). A term sum_u coef_uj T_u also holds (coef' c) F, which
        the caller adds itself."""
        self.view_coef += coef * self.scale[:, None]
        self._defers = True

    @torch.no_grad()
    def step(self, items: torch.Tensor, grad_rows: torch.Tensor, lr: float, decay: float, pull: torch.Tensor,
             target: torch.Tensor) -> None:
        """One SGD step of every user's table: T <- (decay + pull) T - pull C - lr grad, where
        `grad_rows` (n, ..., w) is the gradient at `items` (n, ...) (repeated items add up), and
        C_u = sum_j target_uj F_j (a penalty whose gradient is -(pull_u / lr) (T - C_u))."""
        factor = decay + pull
        self.coef = factor[:, None] * self.coef - pull[:, None] * target
        self.scale = factor * self.scale
        change = grad_rows * (-lr / user_broadcast(self.scale, grad_rows))
        flat_items, flat_change = self._flat_items, change.reshape(-1, self.x.shape[2])
        table = self.x.view(-1, self.x.shape[2])
        if self._inner is not None:
            before = table.index_select(0, flat_items)
        table.index_add_(0, flat_items, flat_change)
        if self._inner is not None:
            after = table.index_select(0, flat_items)
            squares, with_views = self._inner
            squares += ((after + before) * flat_change).view(len(self.users), -1).sum(dim=1)   # rows grouped by user
            with_views += torch.einsum("n...w,ng...w->ng", change, self._view_rows)
        if self._defers:
            weighted = self.view_coef.T.reshape(-1, *change.shape[:1], *(1,) * (change.dim() - 1)) * change
            self.view_grad.index_add_(1, items.reshape(-1), weighted.reshape(len(self.views), -1, change.shape[-1]),
                                      alpha=-1.0)

    @torch.no_grad()
    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T at the end of the round (n, I, w), the views' gradient through T added this round (G, I, w))."""
        # B X_final, read while X is still X (the table is then formed in place)
        grad = self.view_grad + torch.einsum("ng,niw->giw", self.view_coef, self.x)
        flat = self.x.view(len(self.x), -1).mul_(self.scale[:, None])
        flat.addmm_(self.coef, self.views.reshape(len(self.views), -1))
        return self.x, grad


def user_broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-user values (n,) shaped to broadcast against `like` (n, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))
