"""A population of federated clients trained together: one shard's users as stacked tensors.

`ClientPopulation` owns a fixed set of users: their train/valid/test items and all their local
state (router, head or user vectors, personal item tables) stacked along a user dimension. One
call to `train` runs A local epochs for every sampled user AT ONCE (the per-user math of
`model.py` vectorised with `torch.func.vmap`), and returns one `Upload`: the alpha-weighted sum
of the users' accumulated global gradients. Users are processed in chunks of similar history
length to bound memory and padding; the chunking never changes a user's result.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.func import vmap

from fedvlr_sim.config import ClientConfig, ModelConfig
from fedvlr_sim.engine import model
from fedvlr_sim.engine.backbones import TablePenalty
from fedvlr_sim.engine.messages import Upload
from fedvlr_sim.engine.metrics import COLD_PRIOR_BETAS, with_cold_prior
from fedvlr_sim.engine.privacy import privacy_of
from fedvlr_sim.engine.rng import Stream, uniform
from fedvlr_sim.engine.router import RankOneRouter
from fedvlr_sim.engine.table import SparseTable, user_broadcast
from fedvlr_sim.engine.userdata import UserData
from fedvlr_sim.errors import FedVLRError


class ClientPopulation:
    """The users of one shard with their data and stacked local state."""

    def __init__(self, model_cfg: ModelConfig, client_cfg: ClientConfig, seed: int, data: UserData,
                 n_items: int, total_users: int | None = None, device: str = "cpu"):
        """`total_users` (all users of the federation, default: this population's) decides the
        storage of personal tables, so every shard layout stores them alike. Local state lives
        and trains on `device`; uploads, ranks and weights come back on the CPU."""
        self.cfg, self.seed, self.data, self.n_items = client_cfg, seed, data, n_items
        self.device = torch.device(device)
        self.backbone = model_cfg.backbone_def
        variant = model_cfg.variant_def
        self.bpr, self.n_views, self.width = variant.bpr, variant.n_views, variant.width(model_cfg.dim)
        self.privacy = privacy_of(client_cfg, seed)
        self.table_dtype = table_dtype(client_cfg.table_dtype, total_users or len(data.users), n_items, self.width)
        shapes = model.local_shapes(model_cfg, self.width, n_items)
        # Per-user state is stored in the order chunks take the users (by history length, see
        # _chunks): a chunk of a full round is then one block of storage that trains in place.
        # slot_of[row] is the storage position of local row `row`.
        self.order = self._by_history(np.arange(len(data.users)))
        self.slot_of = np.empty_like(self.order)
        self.slot_of[self.order] = np.arange(len(self.order))
        init = model.init_local(shapes, seed, data.users[self.order], self.table_dtype)
        self.params = {k: v.to(self.device) for k, v in init.items()}
        self.trained = torch.zeros(len(data.users), dtype=torch.bool, device=self.device)   # finished a round
        self.alpha = self.backbone.aggregation_weight(torch.from_numpy(data.train_counts[self.order])).to(self.device)

    # ---------------------------------------------------------------- helpers
    def rows_of(self, users: np.ndarray) -> np.ndarray:
        """Local row indices of global user ids (all must belong to this population)."""
        return np.searchsorted(self.data.users, users)

    def _by_history(self, rows: np.ndarray) -> np.ndarray:
        """`rows` sorted by history length (ties by row): the order of chunks and of storage."""
        return rows[np.argsort(self.data.train_counts[rows], kind="stable")]

    def _chunks(self, rows: np.ndarray, per_user_cost) -> list[np.ndarray]:
        """Split rows, sorted by history length, into chunks whose padded cost (chunk size times
        the cost of its longest history) fits `chunk_elements`; at least one user per chunk."""
        order = self._by_history(rows)
        cost = per_user_cost(order)   # nondecreasing along `order`
        chunks, start = [], 0
        while start < len(order):
            padded = np.arange(1, len(order) - start + 1) * cost[start:]
            stop = start + max(1, int(np.searchsorted(padded, self.cfg.chunk_elements, side="right")))
            chunks.append(order[start:stop])
            start = stop
        return chunks

    def _train_cost(self, rows: np.ndarray) -> np.ndarray:
        """Tensor elements one user adds to a training chunk (activations, tables, copies)."""
        cost = self.data.train_counts[rows] * (1 + self.cfg.neg_ratio) * self.n_views * self.width * 4
        if self.backbone.has_item_table:
            cost = cost + self.n_items * self.width * (2 if self.sparse_tables else self.n_views + 4)
        if self.copies_globals:
            cost = cost + 3 * self.n_items * self.width * self.n_views
        return cost

    @property
    def copies_globals(self) -> bool:
        """Clients hold per-user copies of the globals when they step them or privatise uploads."""
        return self.cfg.global_update == "local" or self.privacy is not None

    @property
    def sparse_tables(self) -> bool:
        """Personal tables are stepped at the batch's rows (engine/table.py) when the views are
        shared and fixed within the round."""
        return self.backbone.sparse_table is not None and not self.copies_globals

    def _local_chunk(self, rows: np.ndarray, prefix: str = "") -> dict[str, torch.Tensor]:
        """The float32 local state of `rows` (only names starting with `prefix`): views of the
        storage when `rows` fill one block of it (so training steps it in place), else copies."""
        where = self._where(rows)
        return {k: v[where].float() for k, v in self.params.items() if k.startswith(prefix)}

    def _where(self, rows: np.ndarray) -> slice | torch.Tensor:
        """Where the per-user state of `rows` (in `_chunks` order) is stored: a slice when the
        rows fill one block of storage, else the storage positions."""
        slots = self.slot_of[rows]
        if len(slots) and np.all(np.diff(slots) == 1):
            return slice(int(slots[0]), int(slots[-1]) + 1)
        return self._index(rows)

    def _index(self, rows: np.ndarray) -> torch.Tensor:
        """Storage positions of local rows."""
        return torch.from_numpy(self.slot_of[rows]).to(self.device)

    def _on_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in tensors.items()}

    def _history(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        hist, hist_mask = self.data.padded_history(rows)
        return hist.to(self.device), hist_mask.to(self.device)

    # ---------------------------------------------------------------- training
    def negatives(self, round_idx: int, rows: np.ndarray, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """Negatives among items the user has not interacted with in train (`hist`, real where
        `hist_mask`; see `_history`), for each position of `hist` in each epoch: uniform, or
        with `neg_popularity` beta > 0 weighted by the item's train count to the power beta, so
        items no user has in train are never drawn (uniform again for a user left with none to
        draw).

        Shape (n, A, T, r) for hist (n, T); entry (epoch, position, k) of user u depends only on
        (seed, round, u, epoch, position, k)."""
        epochs, r, width = self.cfg.local_epochs, self.cfg.neg_ratio, hist.shape[1]
        counters = (np.arange(epochs)[:, None, None] << 40) | (np.arange(width)[None, :, None] << 8) | np.arange(r)
        u = torch.from_numpy(uniform(self.seed, Stream.NEGATIVES, round_idx, self.data.users[rows], counters.ravel()))
        u = u.to(self.device)
        if self.cfg.neg_popularity == 0:
            # the k-th (from 0) item outside a user's train items t_0 < t_1 < ... is
            # k + #{j : t_j - j <= k}, as t_j - j free items precede t_j: a search in the user's
            # history instead of in all items
            beyond = torch.iinfo(torch.int64).max
            taken = torch.where(hist_mask > 0, hist, beyond).sort(dim=1).values
            free_before = torch.where(taken < beyond, taken - torch.arange(taken.shape[1], device=self.device), beyond)
            k = torch.floor(u * (self.n_items - hist_mask.sum(dim=1, keepdim=True).double())).long()
            return (k + torch.searchsorted(free_before, k, side="right")).reshape(len(rows), epochs, width, r)
        free = ~self.data.train_matrix(rows, self.n_items).to(self.device)
        counts = torch.from_numpy(self.data.item_counts).to(self.device, torch.float64)
        # counts^beta in log space, scaled by each user's largest free weight: no overflow at any
        # beta; a user whose free items all have count 0 draws them uniformly
        log_weight = torch.where(free, self.cfg.neg_popularity * torch.log(counts), -torch.inf)
        top = log_weight.amax(dim=1, keepdim=True)
        weighted = torch.where(torch.isfinite(top), torch.exp(log_weight - top), free.double())
        mass = torch.cumsum(weighted, dim=1)
        drawn = torch.searchsorted(mass, u * mass[:, -1:], side="right")
        return drawn.clamp_max(self.n_items - 1).reshape(len(rows), epochs, width, r)

    def positive_order(self, round_idx: int, rows: np.ndarray, hist_mask: torch.Tensor) -> torch.Tensor:
        """Per-epoch random order of each user's positives (padding last), shape (n, A, T)."""
        n, width = hist_mask.shape
        counters = (np.arange(self.cfg.local_epochs)[:, None] << 40) | np.arange(width)[None, :]
        keys = torch.from_numpy(uniform(self.seed, Stream.ORDER, round_idx, self.data.users[rows], counters.ravel()))
        keys = keys.to(self.device).reshape(n, self.cfg.local_epochs, width)
        keys = keys.masked_fill(hist_mask[:, None, :] == 0, float("inf"))
        return keys.argsort(dim=2)

    def minibatches(self, round_idx: int, rows: np.ndarray, hist: torch.Tensor, hist_mask: torch.Tensor):
        """Yield (positives (n, b), negatives (n, b, r), mask (n, b)) for every local step of
        every epoch: each epoch visits a user's positives in a fresh random order."""
        negatives = self.negatives(round_idx, rows, hist, hist_mask)
        order = self.positive_order(round_idx, rows, hist_mask)
        per_batch = max(1, self.cfg.batch_size // self.cfg.neg_ratio)
        for epoch in range(self.cfg.local_epochs):
            for start in range(0, hist.shape[1], per_batch):
                picked = order[:, epoch, start:start + per_batch]
                neg = negatives[:, epoch].gather(1, picked[..., None].expand(-1, -1, self.cfg.neg_ratio))
                yield hist.gather(1, picked), neg, hist_mask.gather(1, picked)

    def train(self, round_idx: int, users: np.ndarray, glob: dict[str, torch.Tensor]) -> Upload:
        """Run the local epochs of every sampled user in `users` (global ids) and sum their uploads."""
        rows = self.rows_of(np.asarray(users, dtype=np.int64))
        glob = self._on_device(glob)
        grads = {k: torch.zeros_like(v) for k, v in glob.items()}
        counts = Upload({}, 0.0, 0.0, 0)
        # a sparse table's penalty is built once a round, over the round's fixed views
        penalty = self.backbone.table_penalty(glob["views"], round_idx) if self.sparse_tables else None
        for chunk in self._chunks(rows, self._train_cost):
            counts = counts + self._train_chunk(round_idx, chunk, glob, penalty, grads)
        if penalty:
            grads["views"] += penalty.view_grad()
        return Upload({k: v.cpu() for k, v in grads.items()}, counts.weight, counts.loss_sum, counts.n_users)

    def _train_chunk(self, round_idx: int, rows: np.ndarray, glob: dict[str, torch.Tensor],
                     penalty: TablePenalty | None, round_grads: dict[str, torch.Tensor]) -> Upload:
        """A chunk's local training: SGD on local state; the chunk's alpha-weighted global
        gradients are added to `round_grads` (the sparse tables' `penalty` keeps the part of the views'
        gradient it adds itself). Returns the chunk's weight, loss and users."""
        cfg, backbone = self.cfg, self.backbone
        hist, hist_mask = self._history(rows)
        alpha = self.alpha[self._index(rows)]
        local = {k: v.requires_grad_() for k, v in backbone.begin_round(self._local_chunk(rows)).items()}
        n = len(rows)
        if self.copies_globals:
            glob_in = {k: v.expand(n, *v.shape).clone().requires_grad_() for k, v in glob.items()}
        else:
            glob_in = {k: v.detach().requires_grad_() for k, v in glob.items()}
        # shared globals add straight into the round's sums; per-user copies are summed at the end
        accumulated = {k: torch.zeros_like(v) for k, v in glob_in.items()} if self.copies_globals else round_grads
        glob_dim = 0 if self.copies_globals else None
        weights_fn = vmap(model.router_weights, in_dims=(0, glob_dim, 0, 0))
        loss_fn = vmap(functools.partial(model.user_loss, backbone, self.bpr), in_dims=(0, glob_dim, 0, 0, 0))
        # shared globals: one backward of sum_u alpha_u L_u gives the weighted upload; each user's
        # local gradient is then divided by its alpha (per-user copies are weighted later)
        scale = torch.ones_like(alpha) if self.copies_globals else alpha
        loss_sum, loss_steps = torch.zeros(n, device=self.device), torch.zeros(n, device=self.device)
        # with shared, fixed views a router's first layer moves in rank one (engine/router.py)
        router = None if self.copies_globals or "router.w1" not in local else \
            RankOneRouter(local, glob_in["views"], hist, hist_mask)
        table = SparseTable(local.pop(backbone.sparse_table).detach(), glob_in["views"]) if self.sparse_tables else None
        stepped = [name for name in local if name not in backbone.frozen(cfg.global_update)]
        for pos, neg, mask in self.minibatches(round_idx, rows, hist, hist_mask):
            weights = router.weights(local) if router else weights_fn(local, glob_in, hist, hist_mask)
            active = (mask.sum(dim=1) > 0).float()
            items = torch.cat([pos[..., None], neg], dim=-1)                        # (n, B, 1 + r)
            view_rows = gather_view_rows(glob_in["views"], items, None if self.copies_globals else accumulated["views"])
            step_local = local
            if table:
                step_local = local | {f"{backbone.sparse_table}.rows": table.rows(items, view_rows.detach())}
                regulariser, pull_rate = penalty(table, weights, scale * active) if penalty else (None, 0.0)
            else:
                regulariser = backbone.regulariser(local, weights, glob_in["views"], round_idx)
            losses = loss_fn(step_local, glob_in, items, model.mix_rows(weights, view_rows), mask)
            if regulariser is not None:
                losses = losses + active * regulariser
            grads = torch.autograd.grad((losses * scale).sum(), [*step_local.values(), *glob_in.values()],
                                        allow_unused=True)
            local_grads = dict(zip(step_local, grads[:len(step_local)]))
            if router:
                router.step(local_grads["router.b1"], scale, cfg.lr, cfg.weight_decay)
            if table:
                row_grads = local_grads[f"{backbone.sparse_table}.rows"]
                table.step(items, row_grads / user_broadcast(scale, row_grads), cfg.lr, 1.0 - cfg.lr * cfg.weight_decay,
                           cfg.lr * pull_rate * active, weights.detach())
            with torch.no_grad():
                for name in stepped:   # SGD on the user's own loss, with L2 weight decay
                    if local_grads[name] is not None:
                        if cfg.weight_decay:
                            local[name].mul_(1.0 - cfg.lr * cfg.weight_decay)
                        local[name].addcdiv_(local_grads[name], user_broadcast(scale, local_grads[name]), value=-cfg.lr)
                for name, grad in zip(glob_in, grads[len(step_local):]):
                    if grad is None:
                        continue
                    accumulated[name] += grad
                    if cfg.global_update == "local":
                        glob_in[name].add_(grad, alpha=-cfg.lr)
            loss_sum += losses.detach() * active
            loss_steps += active
        if router:
            local["router.w1"], grad_views = router.finish()
            accumulated["views"] += grad_views
        if table:
            local[backbone.sparse_table], grad_views = table.finish()
            accumulated["views"] += grad_views
        if self.copies_globals:
            for name, summed in self._weighted_sum(round_idx, rows, accumulated, alpha).items():
                round_grads[name] += summed
        self._store_chunk(rows, local, glob_in if cfg.global_update == "local" else glob, hist, hist_mask)
        user_losses = loss_sum / loss_steps.clamp_min(1)
        return Upload({}, float(alpha.sum()), float(user_losses.sum()), n)

    def _weighted_sum(self, round_idx: int, rows: np.ndarray, per_user: dict, alpha: torch.Tensor) -> dict:
        """Post-process each user's upload (privacy, when configured), then alpha-weight and sum."""
        names = list(per_user)
        flat = torch.cat([per_user[k].reshape(len(rows), -1) for k in names], dim=1)
        if self.privacy is not None:
            flat = self.privacy.process(flat, self.data.users[rows], round_idx)
        summed = (alpha[:, None] * flat).sum(dim=0)
        sizes = [per_user[k][0].numel() for k in names]
        return {k: part.reshape(per_user[k].shape[1:]) for k, part in zip(names, summed.split(sizes))}

    def _store_chunk(self, rows, local, glob, hist, hist_mask) -> None:
        """Write the chunk's trained local state back (`glob` is what the users trained against:
        per-user copies with global_update=local)."""
        where = self._where(rows)
        per_user = glob["views"].dim() == 4

        def shared_reps():
            return vmap(model.shared_item_reps, in_dims=(0, 0 if per_user else None, 0, 0))(local, glob, hist, hist_mask)

        with torch.no_grad():
            for name, value in self.backbone.end_round(local, shared_reps).items():
                stored = self.params[name][where]
                if value.data_ptr() != stored.data_ptr():   # the same memory: stepped in place
                    self.params[name][where] = value.detach().to(stored.dtype)
            self.trained[where] = True

    # ---------------------------------------------------------------- evaluation
    @property
    def linear_scoring(self) -> bool:
        """Evaluation scores each view with one matrix product (a linear head on shared items)."""
        return self.backbone.linear_head is not None

    def _eval_cost(self, rows: np.ndarray) -> np.ndarray:
        """Tensor elements one user adds to a scoring chunk: each view's scores (linear heads) or
        the mixed item representations, the scorings, and the history the router reads."""
        per_item = self.n_views if self.linear_scoring else self.width * (self.n_views + 4)
        return (self.n_items * (per_item + len(COLD_PRIOR_BETAS) + 1)
                + self.data.train_counts[rows] * self.width * self.n_views)

    def scores(self, rows: np.ndarray, glob: dict[str, torch.Tensor], per_user: bool = False) -> torch.Tensor:
        """Scores of every item for local rows `rows`, shape (n, I); no masking. A backbone with
        a linear head scores each view with one matrix product for the whole chunk, then mixes
        the scores; `per_user` forces the general path (each user's mixed items, then its logits)."""
        hist, hist_mask = self._history(rows)
        local = self._local_chunk(rows)
        with torch.no_grad():
            if self.linear_scoring and not per_user:
                q, b = self.backbone.linear_head
                weights = vmap(model.router_weights, in_dims=(0, None, 0, 0))(local, glob, hist, hist_mask)
                views = glob["views"]
                per_view = (local[q] @ views.reshape(-1, views.shape[-1]).T).reshape(len(rows), *views.shape[:2])
                scores = torch.einsum("ng,ngi->ni", weights, per_view)
                return scores + local[b][:, None] if b else scores
            score_fn = vmap(functools.partial(model.user_scores, self.backbone), in_dims=(0, None, 0, 0, 0))
            return score_fn(local, glob, hist, hist_mask, self.trained[self._index(rows)])

    def ranks(self, glob: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Ranks of each user's valid and test items from one scoring pass (see
        UserData.rank_targets): (global user ids, ranks of shape (U, 2, K)), where K = 1 holds
        the model's ranks, followed, when the data knows its never-trained items, by the
        cold-prior reference for each beta (metrics.with_cold_prior)."""
        all_rows = np.arange(len(self.data.users))
        never_trained = None if self.data.never_trained is None else \
            torch.from_numpy(self.data.never_trained).to(self.device)
        scorings = 1 if never_trained is None else 1 + len(COLD_PRIOR_BETAS)
        ranks = np.zeros((len(all_rows), 2, scorings), dtype=np.int64)
        glob = self._on_device(glob)
        for chunk in self._chunks(all_rows, self._eval_cost):
            scores = self.scores(chunk, glob)
            scores = scores[:, None] if never_trained is None else with_cold_prior(scores, never_trained)
            for column, split in enumerate(("valid", "test")):
                ranks[chunk, column] = self.data.rank_targets(chunk, scores, split)
        return self.data.users, ranks

    def router_weights(self, glob: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Every user's mixing weights over the views, shape (U, G)."""
        fn = vmap(model.router_weights, in_dims=(0, None, 0, 0))
        weights = np.zeros((len(self.data.users), self.n_views), dtype=np.float32)
        glob = self._on_device(glob)
        for chunk in self._chunks(np.arange(len(self.data.users)), self._eval_cost):
            hist, hist_mask = self._history(chunk)
            with torch.no_grad():
                weights[chunk] = fn(self._local_chunk(chunk, prefix="router."), glob, hist, hist_mask).cpu().numpy()
        return self.data.users, weights

    def reliance(self, glob: dict[str, torch.Tensor], altered: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Mean absolute change of each user's item scores when the globals are replaced by each of
        `altered` (e.g. views with one modality replaced by its mean). Shape (U, len(altered))."""
        all_rows = np.arange(len(self.data.users))
        out = np.zeros((len(all_rows), len(altered)))
        glob, altered = self._on_device(glob), [self._on_device(a) for a in altered]
        for chunk in self._chunks(all_rows, self._eval_cost):
            base = self.scores(chunk, glob)
            for j, other in enumerate(altered):
                out[chunk, j] = (self.scores(chunk, other) - base).abs().mean(dim=1).cpu().numpy()
        return self.data.users, out

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Local parameters and the trained flags (stored as `seen`), on the CPU, for checkpoints."""
        rows = self._index(np.arange(len(self.order)))    # storage order back to row order
        return ({k: v.index_select(0, rows).cpu() for k, v in self.params.items()}
                | {"seen": self.trained.index_select(0, rows).cpu()})

    def checkpoint_state(self) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """(user ids, their local state and trained flags) in storage order, without copying:
        a checkpoint's shard file names its users, so any order reads back (`load_state_dict`
        takes the state in row order, as `checkpoint.load_users_state` gathers it)."""
        return self.data.users[self.order], self.params | {"seen": self.trained}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take a checkpoint's client state; it must hold this configuration's tensors."""
        for k, current in self.params.items():
            if k not in state or state[k].shape != current.shape:
                found = f"shape {tuple(state[k].shape)}" if k in state else "nothing"
                raise FedVLRError(f"checkpoint: client state {k!r} has {found}, expected shape {tuple(current.shape)} "
                                  "(the run's configuration or data changed since the checkpoint)")
        slots = torch.from_numpy(self.order).to(self.device)   # row order to storage order
        for k, current in self.params.items():
            self.params[k] = state[k].to(self.device, current.dtype).index_select(0, slots)
        if "seen" in state:   # absent in checkpoints of backbones that did not use it
            self.trained = state["seen"].to(self.device, torch.bool).index_select(0, slots)


def gather_view_rows(views: torch.Tensor, items: torch.Tensor, grad_into: torch.Tensor | None = None) -> torch.Tensor:
    """The views at each user's items (n, ...), shape (n, G, ..., w): from shared views
    (G, I, w) by one index_select of rows g I + item (its gradient is one index_add, several
    times faster on the CPU than indexing inside vmap), or from per-user copies (n, G, I, w).
    Users first, so mixing them is a batched product that reads the rows where they lie.
    With `grad_into` (shaped like shared views) the rows' gradient is added to it in the
    backward pass instead of flowing to `views`: no view-sized gradient per step."""
    n_views, n_items, width = views.shape[-3:]
    if views.dim() == 3:
        offsets = torch.arange(n_views, device=items.device).view(1, n_views, *(1,) * (items.dim() - 1)) * n_items
        flat = (items.unsqueeze(1) + offsets).reshape(-1)
        rows = views.reshape(-1, width)
        gathered = rows.index_select(0, flat) if grad_into is None else _GatherInto.apply(rows, flat, grad_into)
        return gathered.view(len(items), n_views, *items.shape[1:], width)
    return vmap(lambda own, its: own[:, its])(views, items)


class _GatherInto(torch.autograd.Function):
    """rows[index], whose backward adds the gradient into a given tensor (shaped like the
    views) and gives `rows` none."""

    @staticmethod
    def forward(ctx, rows, index, grad_into):
        ctx.save_for_backward(index)
        ctx.grad_into = grad_into
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        ctx.grad_into.view(-1, grad_out.shape[-1]).index_add_(0, index, grad_out)
        return None, None, None


def table_dtype(requested: str, n_users: int, n_items: int, width: int) -> torch.dtype:
    """Storage of personal item tables: bf16 when asked, or when `auto` and all users' tables
    would exceed 2 GiB in fp32 (computation is always fp32)."""
    if requested == "bfloat16" or requested == "auto" and n_users * n_items * width * 4 > 2 * 1024**3:
        return torch.bfloat16
    return torch.float32
