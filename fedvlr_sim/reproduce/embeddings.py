"""Figure 10, what the trained server holds, from the last checkpoint of a +ours run (the
server and every client as the run ended; read with the checkpoint's own reader, never a
pickle): the ID embeddings D, the projected vision and text features LN(P_v V) and LN(P_c C)
of the most popular items, and two users' personal representations of the same items (the
user's router mixture of the views, or what its backbone predicts with, e.g. FedRAP's table plus
that mixture). The two users are those with the least and the most reliance on the ID modality
(modality_reliance.npy). Each set is scaled to unit mean row norm and all are projected together
on their two principal axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedvlr_sim.config import MODALITIES
from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.reproduce.figures import datasets_of, figure_axes, save_figure
from fedvlr_sim.reproduce.rundata import run_dataset, run_users

ITEMS_SHOWN = 200
KEEP_CHECKPOINT = {"checkpoint_every": 5}   # the run's last checkpoint is the trained state drawn


def contrasting_users(shares: np.ndarray) -> np.ndarray:
    """The users with the least and the most reliance share on the ID modality."""
    id_share = shares[:, MODALITIES.index("id")]
    return np.array([np.argmin(id_share), np.argmax(id_share)])


def popular_items(train_items: np.ndarray, n_items: int, n_shown: int = ITEMS_SHOWN) -> np.ndarray:
    """The `n_shown` items with the most train interactions (ties by item id)."""
    return np.argsort(-np.bincount(train_items, minlength=n_items), kind="stable")[:n_shown]


def server_embeddings(run_dir: Path) -> dict[str, np.ndarray]:
    """The shown items' embeddings in the run's last checkpoint: `id`, `vision`, `text` and one
    `user <u>` entry per contrasting user, each (items, width)."""
    import torch

    from fedvlr_sim.engine import checkpoint

    folder = checkpoint.latest(Path(run_dir))
    if folder is None:
        raise FedVLRError(f"{run_dir}: no checkpoint, so no trained server to draw (run with checkpoint_every > 0)")
    cfg, server = _trained_server(run_dir, folder)
    data = run_users(run_dir)
    users = contrasting_users(np.load(Path(run_dir) / "modality_reliance.npy"))
    items = popular_items(data.train_items, len(server.fusion.ids))
    with torch.no_grad():
        fusion = server.fusion
        sets = {"id": fusion.ids} | {m: fusion.project[m](getattr(fusion, m)) for m in ("vision", "text")}
        sets |= _personal_reps(cfg, server.publish(), checkpoint.load_users_state(folder, users), data, users)
        return {name: value[items].numpy() for name, value in sets.items()}


def _trained_server(run_dir: Path, folder: Path):
    """(the run's configuration, its server with the checkpoint's parameters)."""
    from fedvlr_sim.engine import checkpoint
    from fedvlr_sim.engine.simulation import make_server

    cfg, dataset = run_dataset(run_dir)
    server = make_server(cfg, dataset)
    server.load_state_dict(checkpoint.read(folder)[0]["model"])
    return cfg, server


def _personal_reps(cfg, glob: dict, state: dict, data, users: np.ndarray) -> dict:
    """Each user's representation of every item (I, width): the backbone's prediction-time
    representation over the user's router mixture of the views `glob` holds."""
    from fedvlr_sim.engine import model

    hist, hist_mask = data.padded_history(users)
    reps = {}
    for k, user in enumerate(users):
        local = {name: value[k].float() for name, value in state.items() if name != "seen"}
        shared = model.shared_item_reps(local, glob, hist[k], hist_mask[k])
        reps[f"user {user}"] = cfg.model.backbone_def.eval_reps(local, shared, state["seen"][k])
    return reps


def pca_2d(sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every set scaled to unit mean row norm, then all projected on the two principal axes of
    their union (numpy SVD), each (rows, 2)."""
    scaled = {name: x / np.linalg.norm(x, axis=1).mean() for name, x in sets.items()}
    union = np.concatenate(list(scaled.values()))
    centre = union.mean(axis=0)
    _, _, axes = np.linalg.svd(union - centre, full_matrices=False)
    return {name: (x - centre) @ axes[:2].T for name, x in scaled.items()}


def embedding_figure(rows: list[dict], path: Path) -> None:
    """One panel per dataset, from its first seed's run: every set of `server_embeddings` in
    two dimensions, one colour each."""
    datasets = datasets_of(rows)
    plt, fig, axes = figure_axes(1, len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        run = Path(next(r["run"] for r in rows if r["dataset"] == dataset))
        shares = np.load(run / "modality_reliance.npy")
        for name, points in pca_2d(server_embeddings(run)).items():
            ax.scatter(*points.T, s=6, alpha=0.6, label=_legend(name, shares))
        ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{dataset}: item embeddings of the trained server")
        ax.legend(fontsize="small", markerscale=2)
    save_figure(plt, fig, path)


def _legend(name: str, shares: np.ndarray) -> str:
    """A set's legend entry; a user's names its reliance shares."""
    if not name.startswith("user "):
        return {"id": "ID (D)", "vision": "vision LN(P_v V)", "text": "text LN(P_c C)"}[name]
    user_shares = shares[int(name.split()[1])]
    return f"{name} (" + ", ".join(f"{m} {s:.2f}" for m, s in zip(MODALITIES, user_shares)) + ")"
