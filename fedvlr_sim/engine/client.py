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
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import model
from fedvlr_sim.engine.rng import Stream, normal, uniform
from fedvlr_sim.engine.userdata import UserData


@dataclass
class Upload:
    """What a group of clients sends back in one round, already summed over its users."""

    grads: dict[str, torch.Tensor]
    weight: float                       # sum of alpha_u
    loss_sum: float                     # sum over users of their mean local loss
    n_users: int

    def __add__(self, other: "Upload") -> "Upload":
        grads = {k: self.grads[k] + other.grads[k] for k in self.grads}
        return Upload(grads, self.weight + other.weight, self.loss_sum + other.loss_sum,
                      self.n_users + other.n_users)

    def mean_gradient(self) -> dict[str, torch.Tensor]:
        """g = sum_u alpha_u g_u / sum_u alpha_u."""
        return {k: v / max(self.weight, 1e-12) for k, v in self.grads.items()}


class ClientPopulation:
    """The users of one shard with their data and stacked local state."""

    def __init__(self, cfg: RunConfig, data: UserData, n_items: int, n_views: int, width: int,
                 total_users: int | None = None):
        """`total_users` (all users of the federation, default: this population's) decides the
        storage of personal tables, so every shard layout stores them alike."""
        self.cfg = cfg
        self.data = data
        self.n_items = n_items
        self.n_views = n_views
        self.width = width
        self.bpr = cfg.variant == "vbpr"
        shapes = model.local_shapes(cfg.backbone, width, n_views, n_items,
                                    cfg.router_hidden if cfg.uses_router else None)
        self.table_dtype = table_dtype(cfg, total_users or len(data.users), n_items, width)
        self.state = model.init_local(shapes, cfg.seed, data.users, self.table_dtype)
        if "table" in self.state:
            self.state["seen"] = torch.zeros(len(data.users), dtype=torch.bool)
        self.alpha = model.aggregation_weight(cfg.backbone, torch.from_numpy(data.train_counts))

    # ---------------------------------------------------------------- helpers
    def rows_of(self, users: np.ndarray) -> np.ndarray:
        """Local row indices of global user ids (all must belong to this population)."""
        return np.searchsorted(self.data.users, users)

    def _chunks(self, rows: np.ndarray, per_user_cost) -> list[np.ndarray]:
        """Split rows, sorted by history length, into chunks whose padded cost (chunk size times
        the cost of its longest history) fits `chunk_elements`; at least one user per chunk."""
        order = rows[np.argsort(self.data.train_counts[rows], kind="stable")]
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
        cfg = self.cfg
        cost = self.data.train_counts[rows] * (1 + cfg.neg_ratio) * self.n_views * self.width * 4
        if cfg.backbone in model.TABLE_BACKBONES:
            cost = cost + self.n_items * self.width * (self.n_views + 4)
        if self.copies_globals:
            cost = cost + 3 * self.n_items * self.width * self.n_views
        return cost

    @property
    def copies_globals(self) -> bool:
        """Clients hold per-user copies of the globals when they step them or clip uploads."""
        return self.cfg.global_update == "local" or self.cfg.dp_clip > 0

    def _local_chunk(self, rows: np.ndarray, prefix: str = "") -> dict[str, torch.Tensor]:
        """Float32 copies of the local state of `rows` (only names starting with `prefix`)."""
        index = torch.from_numpy(rows)
        return {k: v[index].float() for k, v in self.state.items() if k != "seen" and k.startswith(prefix)}

    # ---------------------------------------------------------------- training
    def negatives(self, round_idx: int, rows: np.ndarray, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """Uniform negatives among items the user has not interacted with in train.

        Shape (n, A, T, r); entry (epoch, position, k) of user u depends only on
        (seed, round, u, epoch, position, k)."""
        cfg = self.cfg
        n, width = hist.shape
        epochs, r = cfg.local_epochs, cfg.neg_ratio
        free_cumsum = torch.cumsum(~self.data.train_matrix(rows, self.n_items), dim=1)
        n_free = free_cumsum[:, -1:].double()
        counters = (np.arange(epochs)[:, None, None] << 40) | (np.arange(width)[None, :, None] << 8) | np.arange(r)
        u = torch.from_numpy(uniform(cfg.seed, Stream.NEGATIVES, round_idx, self.data.users[rows], counters.ravel()))
        target = torch.floor(u * n_free).long() + 1
        return torch.searchsorted(free_cumsum, target).reshape(n, epochs, width, r)

    def positive_order(self, round_idx: int, rows: np.ndarray, hist_mask: torch.Tensor) -> torch.Tensor:
        """Per-epoch random order of each user's positives (padding last), shape (n, A, T)."""
        n, width = hist_mask.shape
        counters = (np.arange(self.cfg.local_epochs)[:, None] << 40) | np.arange(width)[None, :]
        keys = torch.from_numpy(uniform(self.cfg.seed, Stream.ORDER, round_idx, self.data.users[rows], counters.ravel()))
        keys = keys.reshape(n, self.cfg.local_epochs, width)
        keys = keys.masked_fill(hist_mask[:, None, :] == 0, float("inf"))
        return keys.argsort(dim=2)

    def train(self, round_idx: int, users: np.ndarray, glob: dict[str, torch.Tensor]) -> Upload:
        """Run the local epochs of every sampled user in `users` (global ids) and sum their uploads."""
        rows = self.rows_of(np.asarray(users, dtype=np.int64))
        upload = None
        for chunk in self._chunks(rows, self._train_cost):
            part = self._train_chunk(round_idx, chunk, glob)
            upload = part if upload is None else upload + part
        if upload is None:
            upload = Upload({k: torch.zeros_like(v) for k, v in glob.items()}, 0.0, 0.0, 0)
        return upload

    def _train_chunk(self, round_idx: int, rows: np.ndarray, glob: dict[str, torch.Tensor]) -> Upload:
        cfg = self.cfg
        hist, hist_mask = self.data.padded_history(rows)
        negatives = self.negatives(round_idx, rows, hist, hist_mask)
        order = self.positive_order(round_idx, rows, hist_mask)
        alpha = self.alpha[torch.from_numpy(rows)]
        local = {k: v.requires_grad_() for k, v in self._local_chunk(rows).items()}
        if cfg.backbone == "pfedrec":
            local["table"] = torch.zeros_like(local["table"]).requires_grad_()
        n = len(rows)
        if self.copies_globals:
            glob_in = {k: v.expand(n, *v.shape).clone().requires_grad_() for k, v in glob.items()}
        else:
            glob_in = {k: v.detach().requires_grad_() for k, v in glob.items()}
        accumulated = {k: torch.zeros_like(v) for k, v in glob_in.items()}
        glob_dim = 0 if self.copies_globals else None
        weights_fn = vmap(model.router_weights, in_dims=(0, glob_dim, 0, 0))
        loss_fn = vmap(functools.partial(model.user_loss, cfg.backbone, self.bpr), in_dims=(0, glob_dim, 0, 0, 0, 0))
        # shared globals: one backward of sum_u alpha_u L_u gives the weighted upload; each user's
        # local gradient is then divided by its alpha (per-user copies are weighted later)
        scale = torch.ones_like(alpha) if self.copies_globals else alpha
        rap_weight = np.tanh(round_idx / 10.0)
        rap_lambda, rap_mu = cfg.fedrap_lambda * rap_weight, cfg.fedrap_mu * rap_weight
        per_batch = max(1, cfg.batch_size // cfg.neg_ratio)
        steps = -(-hist.shape[1] // per_batch)
        loss_sum = torch.zeros(n)
        loss_steps = torch.zeros(n)
        # PFedRec's personal table is the client's own copy of the item representation: with
        # global_update=local that copy is the stepped globals, so the offset stays at zero.
        frozen = {"table"} if cfg.backbone == "pfedrec" and cfg.global_update == "local" else set()
        local_names, glob_names = list(local), list(glob_in)
        for epoch in range(cfg.local_epochs):
            for step in range(steps):
                picked = order[:, epoch, step * per_batch:(step + 1) * per_batch]
                pos = hist.gather(1, picked)
                mask = hist_mask.gather(1, picked)
                neg = negatives[:, epoch].gather(1, picked[..., None].expand(-1, -1, cfg.neg_ratio))
                weights = weights_fn(local, glob_in, hist, hist_mask)
                losses = loss_fn(local, glob_in, weights, pos, neg, mask)
                active = (mask.sum(dim=1) > 0).float()
                if cfg.backbone == "fedrap":
                    losses = losses + active * model.rap_regulariser(local["table"], weights, glob_in["views"], rap_lambda, rap_mu)
                grads = torch.autograd.grad((losses * scale).sum(), [*local.values(), *glob_in.values()],
                                            allow_unused=True)
                with torch.no_grad():
                    for name, grad in zip(local_names, grads[:len(local_names)]):
                        if grad is not None and name not in frozen:   # SGD on the user's own loss
                            local[name].addcdiv_(grad, _expand(scale, grad), value=-cfg.lr)
                    for name, grad in zip(glob_names, grads[len(local_names):]):
                        if grad is None:
                            continue
                        accumulated[name] += grad
                        if cfg.global_update == "local":
                            glob_in[name].add_(grad, alpha=-cfg.lr)
                loss_sum += losses.detach() * active
                loss_steps += active
        if self.copies_globals:
            accumulated = self._privatise(round_idx, rows, accumulated, alpha)
        self._store_chunk(rows, local, glob_in if cfg.global_update == "local" else glob, hist, hist_mask)
        user_losses = loss_sum / loss_steps.clamp_min(1)
        return Upload(accumulated, float(alpha.sum()), float(user_losses.sum()), n)

    def _privatise(self, round_idx: int, rows: np.ndarray, per_user: dict, alpha: torch.Tensor) -> dict:
        """Clip each user's upload to L2 norm S, add N(0, (sigma S)^2) noise, then alpha-weight
        and sum. Without --dp-clip the per-user uploads are only weighted and summed."""
        cfg = self.cfg
        names = list(per_user)
        flat = torch.cat([per_user[k].reshape(len(rows), -1) for k in names], dim=1)
        if cfg.dp_clip > 0:
            norms = flat.norm(dim=1, keepdim=True)
            flat = flat * (cfg.dp_clip / norms.clamp_min(1e-12)).clamp(max=1.0)
            if cfg.dp_noise > 0:
                noise = normal(cfg.seed, Stream.DP_NOISE, round_idx, self.data.users[rows], flat.shape[1])
                flat = flat + noise * (cfg.dp_noise * cfg.dp_clip)
        summed = (alpha[:, None] * flat).sum(dim=0)
        out, offset = {}, 0
        for k in names:
            size = per_user[k][0].numel()
            out[k] = summed[offset:offset + size].reshape(per_user[k].shape[1:])
            offset += size
        return out

    def _store_chunk(self, rows, local, glob, hist, hist_mask) -> None:
        """Write the chunk's trained local state back; PFedRec keeps its fine-tuned item table
        (`glob` is what the users trained against: per-user copies with global_update=local)."""
        index = torch.from_numpy(rows)
        with torch.no_grad():
            if self.cfg.backbone == "pfedrec":
                per_user = self.cfg.global_update == "local"
                common = vmap(model.shared_item_reps, in_dims=(0, 0 if per_user else None, 0, 0))(local, glob, hist, hist_mask)
                local["table"] = common + local["table"]
                self.state["seen"][index] = True
            for name, value in local.items():
                self.state[name][index] = value.detach().to(self.state[name].dtype)

    # ---------------------------------------------------------------- evaluation
    def _eval_cost(self, rows: np.ndarray) -> np.ndarray:
        """Tensor elements one user adds to a scoring chunk."""
        return self.n_items * self.width * (self.n_views + 4) + self.data.train_counts[rows] * self.width * self.n_views

    def scores(self, rows: np.ndarray, glob: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every item for local rows `rows`, shape (n, I); no masking."""
        hist, hist_mask = self.data.padded_history(rows)
        index = torch.from_numpy(rows)
        local = self._local_chunk(rows)
        seen = self.state["seen"][index] if "seen" in self.state else torch.zeros(len(rows), dtype=torch.bool)
        score_fn = vmap(functools.partial(model.user_scores, self.cfg.backbone), in_dims=(0, None, 0, 0, 0))
        with torch.no_grad():
            return score_fn(local, glob, hist, hist_mask, seen)

    def ranks(self, glob: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Ranks of each user's valid and test items from one scoring pass (see
        UserData.rank_targets): (global user ids, ranks of shape (U, 2))."""
        all_rows = np.arange(len(self.data.users))
        ranks = np.zeros((len(all_rows), 2), dtype=np.int64)
        for chunk in self._chunks(all_rows, self._eval_cost):
            scores = self.scores(chunk, glob)
            for column, split in enumerate(("valid", "test")):
                ranks[chunk, column] = self.data.rank_targets(chunk, scores, split)
        return self.data.users, ranks

    def router_weights(self, glob: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Every user's mixing weights over the views, shape (U, G)."""
        fn = vmap(model.router_weights, in_dims=(0, None, 0, 0))
        weights = np.zeros((len(self.data.users), self.n_views), dtype=np.float32)
        for chunk in self._chunks(np.arange(len(self.data.users)), self._eval_cost):
            hist, hist_mask = self.data.padded_history(chunk)
            with torch.no_grad():
                weights[chunk] = fn(self._local_chunk(chunk, prefix="router."), glob, hist, hist_mask).numpy()
        return self.data.users, weights

    def reliance(self, glob: dict[str, torch.Tensor], altered: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Mean absolute change of each user's item scores when the globals are replaced by each of
        `altered` (e.g. views with one modality replaced by its mean). Shape (U, len(altered))."""
        all_rows = np.arange(len(self.data.users))
        out = np.zeros((len(all_rows), len(altered)))
        for chunk in self._chunks(all_rows, self._eval_cost):
            base = self.scores(chunk, glob)
            for j, other in enumerate(altered):
                out[chunk, j] = (self.scores(chunk, other) - base).abs().mean(dim=1).numpy()
        return self.data.users, out

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.state:
            self.state[k] = state[k].to(self.state[k].dtype).clone()


def table_dtype(cfg: RunConfig, n_users: int, n_items: int, width: int) -> torch.dtype:
    """Storage of PFedRec's and FedRAP's personal item tables: bf16 when `auto` and all users'
    tables would exceed 2 GiB in fp32 (computation is always fp32)."""
    if cfg.table_dtype == "bfloat16":
        return torch.bfloat16
    if cfg.table_dtype == "auto" and n_users * n_items * width * 4 > 2 * 1024**3:
        return torch.bfloat16
    return torch.float32


def _expand(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (like.dim() - 1))
