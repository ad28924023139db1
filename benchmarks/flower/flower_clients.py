"""FCF+ours (the per-user math of fedvlr-sim) as a Flower simulation, one ClientApp per user.

Runs in Flower's own environment (benchmarks/flower/.venv, see requirements.txt); it must not
import fedvlr_sim, whose Ray differs from the one flwr pins. The data comes from
export_data.py (fedvlr-sim's Python) as movie_<N>.npz.

Written the way a Flower user writes it:

- `client_app` (a `ClientApp`): each virtual SuperNode is one user (its partition id). The user's
  private state, the FCF user vector and the router R_u (|G|w -> hidden -> |G|), lives in
  `context.state` as an `ArrayRecord` and survives between rounds. A train message carries the
  global fused views F (G x I x w); the client runs A local epochs of pointwise BCE with r
  negatives per positive (SGD on its private state, views fixed) and replies with the view
  gradient summed over its steps: only the rows it touched (its history, positives and
  negatives), with their indices, instead of the dense G x I x w array.
- `server_app` (a `ServerApp`) runs `ViewsStrategy`, a `FedAvg` with full participation whose
  `aggregate_train` adds the clients' sparse row gradients, divides by the number of clients
  (FedAvg's weighted mean with weight 1 each) and takes an Adam step on the views, as
  fedvlr-sim's server does.

The math (history_summary, mixing_weights, shared_rep, user_loss, FCF's logits) is copied from
fedvlr_sim/engine/model.py and fedvlr_sim/engine/backbones.py, written for one user.

    python flower_clients.py --data work/movie_1000.npz --rounds 2 --out flower_1000.json
    python flower_clients.py --check work/check.npz     # this math against fedvlr-sim's
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# ------------------------------------------------------------------ the per-user math (copied)


def history_summary(views: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
    """The router's input h_u = concat_j mean_{i in history} F_j[i], shape (G * w,)."""
    rows = views[:, hist] * hist_mask[None, :, None]
    return (rows.sum(dim=1) / hist_mask.sum().clamp_min(1.0)).reshape(-1)


def mixing_weights(local: dict, views: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
    """The private router: w_u = softmax(R_u(h_u)), shape (G,)."""
    hidden = F.relu(history_summary(views, hist, hist_mask) @ local["router.w1"] + local["router.b1"])
    return torch.softmax(hidden @ local["router.w2"] + local["router.b2"], dim=-1)


def shared_rep(views: torch.Tensor, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The user's mixture of the views for `items`, shape (*items, w)."""
    return torch.tensordot(weights, views[:, items], dims=1)


def fcf_logits(local: dict, e: torch.Tensor) -> torch.Tensor:
    """FCF: a private user vector, dot-product scores."""
    return e @ local["user"]


def user_loss(local: dict, views: torch.Tensor, weights: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """One user's minibatch loss: mean pointwise BCE over positives (B,) and negatives (B, r)."""
    score_pos = fcf_logits(local, shared_rep(views, pos, weights))
    score_neg = fcf_logits(local, shared_rep(views, neg, weights))
    n_rows = mask.sum()
    per_row = F.softplus(-score_pos) + F.softplus(score_neg).sum(dim=1)
    return (per_row * mask).sum() / (n_rows * (1 + neg.shape[1])).clamp_min(1.0)


def client_update(local: dict, views: torch.Tensor, hist: torch.Tensor, batches, lr: float,
                  weight_decay: float = 0.0) -> tuple[float, torch.Tensor, dict]:
    """One user's round: SGD on its private state over `batches` of (pos, neg, mask), with the
    views fixed. Returns (mean loss over steps, view gradient summed over steps, new state)."""
    local = {k: v.detach().clone().requires_grad_() for k, v in local.items()}
    views = views.detach().requires_grad_()
    hist_mask = torch.ones(len(hist))
    grad_views = torch.zeros_like(views)
    losses = []
    for pos, neg, mask in batches:
        weights = mixing_weights(local, views, hist, hist_mask)
        loss = user_loss(local, views, weights, pos, neg, mask)
        *grads, grad_v = torch.autograd.grad(loss, [*local.values(), views])
        with torch.no_grad():
            for param, grad in zip(local.values(), grads):
                if weight_decay:
                    param.mul_(1.0 - lr * weight_decay)
                param.add_(grad, alpha=-lr)
            grad_views += grad_v
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else 0.0, grad_views, {k: v.detach() for k, v in local.items()}


def touched_update(local: dict, views: torch.Tensor, hist: torch.Tensor, batches, lr: float):
    """`client_update` on only the view rows the user touches (history, positives, negatives):
    the same math on a gathered (G, k, w) copy, so autograd never fills a dense G x I x w
    gradient. Returns (mean loss, the rows (k,), their view gradient (G, k, w), new state)."""
    rows = torch.unique(torch.cat([hist, *[torch.cat([pos, neg.reshape(-1)]) for pos, neg, _ in batches]]))
    relabel = [(torch.searchsorted(rows, pos), torch.searchsorted(rows, neg), mask) for pos, neg, mask in batches]
    loss, grad_rows, local = client_update(local, views[:, rows], torch.searchsorted(rows, hist), relabel, lr)
    return loss, rows, grad_rows, local


def init_local(seed: int, user: int, n_views: int, width: int, hidden: int) -> dict[str, torch.Tensor]:
    """A user's initial private state, with fedvlr-sim's distributions (not its exact draws):
    router weights ~ N(0, 1/fan_in), biases 0, the user vector ~ N(0, 0.1^2)."""
    rng = np.random.default_rng([seed, 1, user])
    gw = n_views * width

    def normal(shape, std):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * np.float32(std))

    return {"router.w1": normal((gw, hidden), 1 / math.sqrt(gw)), "router.b1": torch.zeros(hidden),
            "router.w2": normal((hidden, n_views), 1 / math.sqrt(hidden)), "router.b2": torch.zeros(n_views),
            "user": normal((width,), 0.1)}


def draw_batches(seed: int, round_idx: int, user: int, items: np.ndarray, n_items: int, epochs: int,
                 neg_ratio: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each epoch visits the user's positives in a fresh random order, in batches of
    batch_size // neg_ratio positives, each with `neg_ratio` uniform negatives among the items
    the user has not interacted with in train (fedvlr-sim's scheme, numpy's generator)."""
    rng = np.random.default_rng([seed, 2, round_idx, user])
    free = np.setdiff1d(np.arange(n_items), items, assume_unique=True)
    per_batch = max(1, batch_size // neg_ratio)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(len(items))
        for start in range(0, len(items), per_batch):
            pos = items[order[start:start + per_batch]]
            neg = free[rng.integers(0, len(free), size=(len(pos), neg_ratio))]
            batches.append((torch.from_numpy(pos), torch.from_numpy(neg), torch.ones(len(pos))))
    return batches


# ------------------------------------------------------------------ the Flower apps

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

_WORLDS: dict[str, dict[str, np.ndarray]] = {}   # each simulation worker loads a world once


def world(path: str) -> dict[str, np.ndarray]:
    """The exported world (train items as CSR and settings), loaded once per process."""
    if path not in _WORLDS:
        with np.load(path) as data:
            _WORLDS[path] = {k: data[k] for k in data.files if k != "views"}
    return _WORLDS[path]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One user's local training round; its private state stays in `context.state`."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    config = msg.content["config"]
    data = world(str(config["data"]))
    user = int(context.node_config["partition-id"])
    items = data["train_items"][data["train_ptr"][user]:data["train_ptr"][user + 1]].astype(np.int64)
    views = msg.content["arrays"].to_torch_state_dict()["views"]
    n_views, n_items, width = views.shape
    seed = int(data["seed"])
    if "local" not in context.state:
        context.state["local"] = ArrayRecord(init_local(seed, user, n_views, width, int(data["router_hidden"])))
        context.state["meta"] = ConfigRecord({"rounds-trained": 0})
    local = context.state["local"].to_torch_state_dict()
    batches = draw_batches(seed, int(config["server-round"]), user, items, n_items, int(data["local_epochs"]),
                           int(data["neg_ratio"]), int(data["batch_size"]))
    loss, rows, grad_rows, local = touched_update(local, views, torch.from_numpy(items), batches, float(data["lr"]))
    context.state["local"] = ArrayRecord(local)
    rounds_trained = int(context.state["meta"]["rounds-trained"]) + 1
    context.state["meta"]["rounds-trained"] = rounds_trained
    reply = RecordDict({"arrays": ArrayRecord({"rows": rows, "grad": grad_rows}),
                        "metrics": MetricRecord({"loss": loss, "num-examples": 1, "rounds-trained": rounds_trained,
                                                 "client-seconds": time.perf_counter() - started})})
    return Message(content=reply, reply_to=msg)


class ViewsStrategy(FedAvg):
    """FedAvg's sampling and messaging (full participation), with an aggregation that adds the
    clients' sparse view gradients, takes their mean and steps the views with Adam. It also
    times each round: from configuring it to the end of the server step."""

    def __init__(self, views: torch.Tensor, server_lr: float, n_users: int):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_users,
                         min_available_nodes=n_users)
        self.views = torch.nn.Parameter(views.clone())
        self.optimizer = torch.optim.Adam([self.views], lr=server_lr)
        self.rounds: list[dict] = []
        self._start = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._start = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        if errors:
            raise RuntimeError(f"round {server_round}: {len(errors)} client(s) failed: {errors[0].error.reason}")
        grad = torch.zeros_like(self.views)
        weight, loss, client_seconds, trained = 0.0, 0.0, 0.0, []
        for msg in valid:
            update = msg.content["arrays"].to_torch_state_dict()
            metrics = msg.content["metrics"]
            grad.index_add_(1, update["rows"], update["grad"])
            weight += float(metrics["num-examples"])
            loss += float(metrics["loss"])
            client_seconds += float(metrics["client-seconds"])
            trained.append(int(metrics["rounds-trained"]))
        self.optimizer.zero_grad(set_to_none=True)
        self.views.grad = grad / max(weight, 1e-12)
        self.optimizer.step()
        seconds = time.perf_counter() - self._start
        # client_seconds: the ClientApp's own time (state, batches, math), summed over clients;
        # rounds_trained: how many rounds each client's context.state has trained (must be this round)
        self.rounds.append({"round": server_round, "seconds": seconds, "clients": len(valid),
                            "loss": loss / max(len(valid), 1), "client_seconds_sum": client_seconds,
                            "rounds_trained_min": min(trained, default=0), "rounds_trained_max": max(trained, default=0)})
        print(f"flower round {server_round}: {len(valid)} clients in {seconds:.2f} s "
              f"({len(valid) / seconds:.1f} client updates/s), mean loss {loss / max(len(valid), 1):.4f}",
              file=sys.stderr, flush=True)
        return ArrayRecord({"views": self.views.detach().clone()}), MetricRecord({"loss": loss / max(len(valid), 1)})


SETTINGS: dict = {}      # set by main() before the simulation starts (the ServerApp runs in this process)
RESULTS: dict = {}

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    with np.load(SETTINGS["data"]) as data:
        views, server_lr, n_users = torch.from_numpy(data["views"]), float(data["server_lr"]), int(data["n_users"])
    strategy = ViewsStrategy(views, server_lr, n_users)
    strategy.start(grid=grid, initial_arrays=ArrayRecord({"views": views}), num_rounds=SETTINGS["rounds"] + 1,
                   train_config=ConfigRecord({"data": SETTINGS["data"]}))
    RESULTS["rounds"] = strategy.rounds


# ------------------------------------------------------------------ drivers


def versions() -> dict:
    import flwr
    import ray

    return {"flwr": flwr.__version__ if hasattr(flwr, "__version__") else _dist_version("flwr"),
            "ray": ray.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def simulate(data: str, rounds: int, cpus_per_client: float) -> dict:
    """One warm-up round and `rounds` timed rounds of the Flower simulation."""
    from flwr.simulation import run_simulation

    import flower_clients as apps   # the apps by module name, so Ray workers import them, not pickled copies

    with np.load(data) as npz:
        n_users = int(npz["n_users"])
    apps.SETTINGS.update(data=str(Path(data).resolve()), rounds=rounds)
    apps.RESULTS.clear()
    backend_config = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                      "init_args": {"num_cpus": os.cpu_count()}}
    start = time.perf_counter()
    run_simulation(server_app=apps.server_app, client_app=apps.client_app, num_supernodes=n_users,
                   backend_config=backend_config)
    wall = time.perf_counter() - start
    if len(apps.RESULTS.get("rounds", [])) != rounds + 1:
        raise SystemExit(f"the Flower simulation ended after {len(apps.RESULTS.get('rounds', []))} of "
                         f"{rounds + 1} rounds (see the log above)")
    timed = apps.RESULTS["rounds"][1:]
    seconds = float(np.mean([r["seconds"] for r in timed]))
    persisted = all(r["rounds_trained_min"] == r["rounds_trained_max"] == r["round"] for r in apps.RESULTS["rounds"])
    return {"system": "flower", "users": n_users, "rounds_timed": rounds, "seconds_per_round": seconds,
            "updates_per_second": timed[-1]["clients"] / seconds, "warmup_seconds": apps.RESULTS["rounds"][0]["seconds"],
            "client_seconds_per_update": float(np.mean([r["client_seconds_sum"] / r["clients"] for r in timed])),
            "client_state_persisted": persisted,
            "rounds": apps.RESULTS["rounds"], "wall_seconds": wall, "cpus_per_client": cpus_per_client,
            "cpus": os.cpu_count(), "versions": versions()}


def check(path: str) -> dict:
    """This file's client update against fedvlr-sim's for the users in check.npz (same state,
    same minibatches): largest differences of the loss, the view gradient and the new state."""
    torch.set_num_threads(1)
    data = np.load(path)
    views = torch.from_numpy(data["views"])
    diffs = {"loss": 0.0, "grad_views": 0.0, "state": 0.0}
    scale = {"loss": 0.0, "grad_views": 0.0}
    for user in data["users"]:
        prefix = f"{user}/"
        local = {k[len(prefix + "init/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith(prefix + "init/")}
        batches = [(torch.from_numpy(p), torch.from_numpy(n), torch.from_numpy(m))
                   for p, n, m in zip(data[prefix + "pos"], data[prefix + "neg"], data[prefix + "mask"])]
        hist = torch.from_numpy(data[prefix + "hist"])
        dense = client_update(local, views, hist, batches, lr=0.1)
        loss, rows, grad_rows, new = touched_update(local, views, hist, batches, lr=0.1)
        sparse = (loss, torch.zeros_like(views).index_add_(1, rows, grad_rows), new)
        for loss, grad_views, new in (dense, sparse):   # the plain and the ClientApp's path
            diffs["loss"] = max(diffs["loss"], abs(loss - float(data[prefix + "loss"])))
            diffs["grad_views"] = max(diffs["grad_views"],
                                      float((grad_views - torch.from_numpy(data[prefix + "grad_views"])).abs().max()))
            for name, value in new.items():
                diffs["state"] = max(diffs["state"],
                                     float((value - torch.from_numpy(data[prefix + "final/" + name])).abs().max()))
        scale["loss"] = max(scale["loss"], abs(float(data[prefix + "loss"])))
        scale["grad_views"] = max(scale["grad_views"], float(np.abs(data[prefix + "grad_views"]).max()))
    return {"users": len(data["users"]), "max_abs_diff": diffs, "max_abs_value": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="movie_<N>.npz from export_data.py")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, after one warm-up round")
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per ClientApp")
    parser.add_argument("--check", help="check.npz from export_data.py --check: compare the math, no simulation")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    result = check(args.check) if args.check else simulate(args.data, args.rounds, args.cpus_per_client)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
