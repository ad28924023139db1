"""Shared helpers of the engine tests: tiny datasets, configs, and an independent per-user
reference implementation of one round of local training (SPEC.md sections 2-5).

The reference deliberately does NOT reuse `fedvlr_sim.engine.model`: it re-states the per-user
math with plain torch ops, one user at a time, one minibatch at a time, so that the vectorised
engine (`ClientPopulation.train`) is checked against the method rather than against itself.
Only the random draws (negatives and positive order) are taken from the engine, since those
are defined by its counter-based generator.
"""

from __future__ import annotations

import math
import types

import numpy as np
import torch
import torch.nn.functional as F

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.client import ClientPopulation
from fedvlr_sim.engine.callbacks import History
from fedvlr_sim.engine.simulation import make_server, problem_of, summarize

HEAD_BACKBONES = ("fedavg", "pfedrec", "fedrap")
LOCAL_NAME_PARTS = ("router", "head", "user", "table", "seen")


# --------------------------------------------------------------------------- data and configs
def make_dataset(n_users: int = 12, n_items: int = 30, feat_dim: int = 12, min_train: int = 3,
                 max_train: int = 8, seed: int = 0, name: str = "tiny", n_cold: int = 3,
                 train_item0: bool = True) -> types.SimpleNamespace:
    """A random leave-one-out dataset in the form `problem_of` / `local_federation` accept.

    Every user has `min_train..max_train` distinct train items, one valid and one test item
    (neither among its train items). The last `n_cold` items never occur in train (cold
    items, used only as held-out items). With `train_item0=False`, item 0 never occurs in
    train histories. Features are L2-normalised Gaussians.
    """
    rng = np.random.default_rng(seed)
    first = 0 if train_item0 else 1
    warm = np.arange(first, n_items - n_cold)
    user, item, split = [], [], []
    for u in range(n_users):
        k = int(rng.integers(min_train, max_train + 1))
        train = rng.choice(warm, size=k, replace=False)
        rest = np.setdiff1d(np.arange(n_items), train)
        held = rng.choice(rest, size=2, replace=False)
        for i in train:
            user.append(u), item.append(int(i)), split.append(0)
        user += [u, u]
        item += [int(held[0]), int(held[1])]
        split += [1, 2]

    def feats():
        x = rng.standard_normal((n_items, feat_dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    planted = rng.dirichlet(np.ones(3), size=n_users)
    return types.SimpleNamespace(
        name=name, n_users=n_users, n_items=n_items, user=np.asarray(user, np.int64),
        item=np.asarray(item, np.int64), split=np.asarray(split, np.int64), vision=feats(),
        text=feats(), planted_weights=planted)


def dataset_from_lists(n_items: int, train: list[list[int]], valid: list[int], test: list[int],
                       name: str = "hand", feat_dim: int = 4) -> types.SimpleNamespace:
    """A dataset written out by hand: per user its train items, valid item and test item."""
    user, item, split = [], [], []
    for u, items in enumerate(train):
        for i in items:
            user.append(u), item.append(i), split.append(0)
        user += [u, u]
        item += [valid[u], test[u]]
        split += [1, 2]
    rng = np.random.default_rng(0)
    vision = rng.standard_normal((n_items, feat_dim)).astype(np.float32)
    text = rng.standard_normal((n_items, feat_dim)).astype(np.float32)
    return types.SimpleNamespace(
        name=name, n_users=len(train), n_items=n_items, user=np.asarray(user, np.int64),
        item=np.asarray(item, np.int64), split=np.asarray(split, np.int64), vision=vision,
        text=text, planted_weights=None)


def make_cfg(**overrides) -> RunConfig:
    """A tiny validated config: d = 8, 2 local epochs, 2 negatives, one minibatch per epoch."""
    values = dict(dataset="tiny", backbone="fcf", variant="ours", dim=8, lr=0.5, server_lr=1.0, server_optimizer="sgd",
                  local_epochs=2, neg_ratio=2, batch_size=64, rounds=2, patience=10,
                  router_hidden=8, backend="local", checkpoint_every=0, seed=0,
                  fedrap_lambda=0.3, fedrap_mu=0.2)
    values.update(overrides)
    return RunConfig.create(**values)


def options(cfg: RunConfig) -> types.SimpleNamespace:
    """Every option of a config by its flat name (cfg.flat() as attributes)."""
    return types.SimpleNamespace(**cfg.flat())


def make_population(cfg: RunConfig, dataset, users=None):
    """(server, population) for `dataset`; the population holds `users` (default: all)."""
    problem = problem_of(dataset)
    server = make_server(cfg, dataset)
    data = problem.data if users is None else problem.data.subset(np.asarray(users, np.int64))
    return server, ClientPopulation(cfg.model, cfg.client, cfg.seed, data, dataset.n_items)


def run_federation(cfg: RunConfig, fed) -> dict:
    """Run a federation to its end; its summary as summary.json holds it."""
    fed.run()
    return summarize(cfg, fed).to_dict()


def history_of(fed) -> list[dict]:
    """The federation's round records as flat rows (as metrics.parquet holds them)."""
    return [record.row() for record in fed.callback(History).records]


def clone_state(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


def summary_metrics(summary: dict) -> dict:
    """The metric part of a run summary, flattened to {"valid/hr@10": x, ...}."""
    out = {"best_round": float(summary["best_round"]), "rounds_run": float(summary["rounds_run"])}
    for part in ("valid", "test", "test_cold", "test_warm"):
        for key, value in summary[part].items():
            out[f"{part}/{key}"] = value
    return out


def assert_close_dicts(actual: dict, expected: dict, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    assert set(actual) == set(expected)
    for key in expected:
        a, e = actual[key], expected[key]
        if isinstance(e, torch.Tensor):
            torch.testing.assert_close(a.float(), e.float(), atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")
        else:
            both_nan = isinstance(e, float) and math.isnan(e) and math.isnan(a)
            assert both_nan or abs(a - e) <= atol + rtol * abs(e), f"{key}: {a} != {e}"


# --------------------------------------------------------------------------- reference math
def ref_mixing_weights(local: dict, views: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """w_u = softmax(R_u(concat_j mean_{i in O_u} F_j[i])), R_u = Linear-ReLU-Linear."""
    summary = torch.cat([views[j, history].mean(dim=0) for j in range(views.shape[0])])
    hidden = torch.relu(summary @ local["router.w1"] + local["router.b1"])
    return torch.softmax(hidden @ local["router.w2"] + local["router.b2"], dim=0)


def ref_shared(views: torch.Tensor, weights: torch.Tensor | None, items) -> torch.Tensor:
    """sum_j w_u[j] F_j[items] (or the single view when there is no router)."""
    if weights is None:
        return views[0][items]
    return sum(weights[j] * views[j][items] for j in range(views.shape[0]))


def ref_score(backbone: str, local: dict, glob: dict, e: torch.Tensor) -> torch.Tensor:
    """Backbone logits for item representations e (..., w)."""
    if backbone in HEAD_BACKBONES:
        return (e * local["head.w"]).sum(-1) + local.get("head.b", 0.0)   # no head.b: --no-head-bias
    if backbone == "fcf":
        return (e * local["user"]).sum(-1)
    assert backbone == "fedncf"
    gmf = local["user_gmf"] * e
    x = torch.cat([local["user_mlp"].expand(e.shape), e], dim=-1)
    for i in range(3):
        x = torch.relu(x @ glob[f"tower.{i}.weight"].T + glob[f"tower.{i}.bias"])
    return (torch.cat([gmf, x], dim=-1) @ glob["out.weight"].T + glob["out.bias"]).squeeze(-1)


def ref_loss(cfg: RunConfig, round_idx: int, local: dict, glob: dict, history: torch.Tensor,
             pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """One user's minibatch loss, written from SPEC.md sections 2-4."""
    cfg = options(cfg)
    views = glob["views"]
    weights = ref_mixing_weights(local, views, history) if cfg.variant == "ours" else None

    def rep(items):
        e = ref_shared(views, weights, items)
        if cfg.backbone in ("pfedrec", "fedrap"):
            e = e + local["table"][items]
        return e

    s_pos = ref_score(cfg.backbone, local, glob, rep(pos))            # (b,)
    s_neg = ref_score(cfg.backbone, local, glob, rep(neg))            # (b, r)
    if cfg.variant == "vbpr":   # BPR over (positive, negative) pairs
        loss = -F.logsigmoid(s_pos[:, None] - s_neg).mean()
    else:                       # pointwise BCE, positives 1, negatives 0
        scores = torch.cat([s_pos, s_neg.reshape(-1)])
        labels = torch.cat([torch.ones_like(s_pos), torch.zeros(s_neg.numel())])
        loss = F.binary_cross_entropy_with_logits(scores, labels)
    if cfg.backbone == "fedrap":
        common = ref_shared(views, weights, torch.arange(views.shape[1]))
        size = common.numel()
        lam = cfg.fedrap_lambda * math.tanh(round_idx / 10)
        mu = cfg.fedrap_mu * math.tanh(round_idx / 10)
        loss = loss - lam * ((local["table"] - common) ** 2).sum() / size + mu * common.abs().sum() / size
    return loss


def alpha_of(backbone: str, n_train: int) -> float:
    """Aggregation weight alpha_u: n_u for FedAvg and FedNCF, 1 otherwise."""
    return float(n_train) if backbone in ("fedavg", "fedncf") else 1.0


def reference_round(cfg: RunConfig, pop: ClientPopulation, round_idx: int, users, glob: dict) -> dict:
    """One round of local training for `users`, as a plain loop over users, epochs and steps.

    Does not modify `pop`. Returns {"grads": alpha-weighted summed upload, "weight": sum alpha,
    "loss_sum": sum of per-user mean step losses, "state": the population state afterwards,
    "per_user": {user: unweighted upload}, "end_globals": {user: the client's own copy of the
    globals at the end of the round}}.
    """
    reference_cfg, cfg = cfg, options(cfg)
    state = pop.state_dict()
    total = {k: torch.zeros_like(v) for k, v in glob.items()}
    weight, loss_sum, per_user, end_globals = 0.0, 0.0, {}, {}
    per_batch = max(1, cfg.batch_size // cfg.neg_ratio)
    step_globals = cfg.global_update == "local"
    for u in np.asarray(users, np.int64):
        row = int(pop.rows_of(np.array([u]))[0])
        data = pop.data
        history = torch.from_numpy(data.train_items[data.train_ptr[row]:data.train_ptr[row + 1]].copy())
        n = len(history)
        mask = torch.ones(1, n)
        negatives = pop.negatives(round_idx, np.array([row]), history[None], mask)[0]   # (A, n, r)
        order = pop.positive_order(round_idx, np.array([row]), mask)[0]                 # (A, n)
        local = {k: v[row].float().clone().requires_grad_() for k, v in state.items() if k != "seen"}
        if cfg.backbone == "pfedrec":   # the round's fine-tuning offset of the local item copy
            local["table"] = torch.zeros_like(local["table"]).requires_grad_()
        own = {k: v.clone().requires_grad_() for k, v in glob.items()}
        accumulated = {k: torch.zeros_like(v) for k, v in glob.items()}
        losses = []
        for epoch in range(cfg.local_epochs):
            for start in range(0, n, per_batch):
                picked = order[epoch, start:start + per_batch]
                loss = ref_loss(reference_cfg, round_idx, local, own, history, history[picked], negatives[epoch, picked])
                losses.append(float(loss.detach()))
                names_l, names_g = list(local), list(own)
                grads = torch.autograd.grad(loss, [local[k] for k in names_l] + [own[k] for k in names_g],
                                            allow_unused=True)
                with torch.no_grad():
                    for k, g in zip(names_l, grads[:len(names_l)]):
                        if g is not None:
                            local[k] -= cfg.lr * g
                    for k, g in zip(names_g, grads[len(names_l):]):
                        if g is None:
                            continue
                        accumulated[k] += g
                        if step_globals:
                            own[k] -= cfg.lr * g
        upload = accumulated
        if cfg.dp_clip > 0:
            norm = torch.sqrt(sum((v ** 2).sum() for v in upload.values()))
            factor = min(1.0, cfg.dp_clip / max(float(norm), 1e-12))
            upload = {k: v * factor for k, v in upload.items()}
        alpha = alpha_of(cfg.backbone, n)
        for k in total:
            total[k] += alpha * upload[k]
        weight += alpha
        loss_sum += float(np.mean(losses))
        per_user[int(u)] = {k: v.detach().clone() for k, v in upload.items()}
        end_globals[int(u)] = {k: v.detach().clone() for k, v in own.items()}
        with torch.no_grad():
            if cfg.backbone == "pfedrec":   # stored: the fine-tuned copy (global rep + offset)
                weights = ref_mixing_weights(local, glob["views"], history) if cfg.variant == "ours" else None
                full = ref_shared(glob["views"], weights, torch.arange(glob["views"].shape[1]))
                local["table"] = full + local["table"]
            state["seen"][row] = True   # the user has completed a round of local training
            for k, v in local.items():
                state[k][row] = v.detach().to(state[k].dtype)
    return {"grads": total, "weight": weight, "loss_sum": loss_sum, "state": state,
            "per_user": per_user, "end_globals": end_globals}
