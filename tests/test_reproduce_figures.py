"""`fedvlr-sim reproduce` fig3, fig7, fig8 and fig10 on synthetic:tiny: each writes its table and
figure, and the data each figure draws is checked against the run folders, recomputed here in
plain numpy (grids are cut to a few points to keep the runs few)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import safetensors.numpy
from typer.testing import CliRunner

from fedvlr_sim.cli import app
from fedvlr_sim.config import MODALITIES
from fedvlr_sim.datasets import load_dataset
from fedvlr_sim.engine.backbones import BACKBONES
from fedvlr_sim.reproduce.catalogue import EXPERIMENTS, LR_AXIS, WEIGHT_DECAYS, grid_experiment
from fedvlr_sim.reproduce.embeddings import ITEMS_SHOWN, pca_2d, popular_items, server_embeddings
from fedvlr_sim.reproduce.experiment import Choices, GridAxis
from fedvlr_sim.reproduce.figures import grid_matrix
from fedvlr_sim.reproduce.grid import LR_GRID
from fedvlr_sim.reproduce.heterogeneity import N_GROUPS, activity_groups, group_metrics, group_ranges

TINY = ("--set", "dim=8", "--set", "local_epochs=1", "--set", "checkpoint_every=0")


def reproduce(tmp_path: Path, name: str, seeds: int, *extra: str) -> pl.DataFrame:
    """Run experiment `name` on synthetic:tiny for 2 rounds; check its files; return its rows."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["reproduce", name, "--dataset", "synthetic:tiny", "--seeds", str(seeds),
                                      "--rounds", "2", "--out", str(out), "--data-dir", str(tmp_path), *TINY, *extra])
    assert result.exit_code == 0, result.output
    for suffix in ("parquet", "md", "png"):
        assert (out / f"{name}.{suffix}").stat().st_size > 0
    return pl.read_parquet(out / f"{name}.parquet")


def train_pairs(seed: int, data_dir: Path) -> np.ndarray:
    """The distinct (user, item) train pairs of synthetic:tiny drawn with `seed`."""
    ds = load_dataset("synthetic:tiny", data_dir, seed=seed)
    train = ds.split == 0
    return np.unique(np.stack([ds.user[train], ds.item[train]], axis=1), axis=0)


# ---------------------------------------------------------------- fig3
def test_activity_groups_are_equal_sized_by_activity_ties_by_user():
    counts = np.array([5, 1, 3, 3, 9, 1, 3, 7, 2, 4])
    groups = activity_groups(counts, 5)
    # users by (count, id): 1 5 | 8 2 | 3 6 | 9 0 | 7 4
    assert groups.tolist() == [3, 0, 1, 2, 4, 0, 2, 4, 1, 3]
    assert group_ranges(counts, 5) == ["1-1", "2-3", "3-3", "4-5", "7-9"]
    assert np.bincount(activity_groups(np.arange(7), 3)).tolist() == [3, 2, 2]


def test_fig3_draws_activity_reliance_and_accuracy_by_group(tmp_path):
    rows = reproduce(tmp_path, "fig3", 2)
    assert rows["row"].to_list() == ["fcf", "fcf"] and rows["column"].to_list() == ["+ours", "+ours"]
    assert "| fcf |" in (tmp_path / "out" / "fig3.md").read_text()
    for row in rows.iter_rows(named=True):
        run = Path(row["run"])
        counts = np.bincount(train_pairs(row["seed"], tmp_path)[:, 0])
        shares = np.load(run / "modality_reliance.npy")
        assert shares.shape == (len(counts), len(MODALITIES)) and np.allclose(shares.sum(axis=1), 1, atol=1e-5)
        ranks = np.load(run / "test_ranks.npy")
        by_activity = np.lexsort((np.arange(len(counts)), counts))
        expected = [[np.mean(metric[users]) for users in np.array_split(by_activity, N_GROUPS)]
                    for metric in (ranks < 50, (ranks < 50) / np.log2(ranks + 2.0))]
        assert np.allclose(group_metrics(run), expected)
        assert np.mean(expected[0]) == pytest.approx(row["test_hr@50"])   # equal groups: their mean is HR@50


# ---------------------------------------------------------------- fig7 and fig8
def test_grid_cells_cover_the_lr_l2_and_fedrap_grids():
    fig7 = EXPERIMENTS["fig7"].cells(Choices(backbone="fedavg"))
    points = [(c.options["lr"], c.options["weight_decay"]) for c in fig7]
    assert points == [(a, b) for a in LR_GRID for b in WEIGHT_DECAYS]
    assert {c.options["backbone"] for c in fig7} == {"fedavg"} and not any(c.tuned for c in fig7)
    assert (fig7[1].row, fig7[1].column) == ("lr 0.001", "L2 1e-05")
    grid = BACKBONES["fedrap"].hyper_grid
    fig8 = EXPERIMENTS["fig8"].cells(Choices())
    assert [(c.options["fedrap_lambda"], c.options["fedrap_mu"]) for c in fig8] == [
        (a, b) for a in grid["fedrap_lambda"] for b in grid["fedrap_mu"]]
    assert {(c.options["backbone"], c.options["variant"]) for c in fig8} == {("fedrap", "ours")}


def test_grid_matrix_is_the_mean_over_seeds_and_na_where_every_seed_diverged():
    y, x = GridAxis("lr", "lr", (0.01, 0.1)), GridAxis("weight_decay", "L2", (0.0, 1e-3))
    rows = [{"lr": 0.1, "weight_decay": 0.0, "m": 0.2}, {"lr": 0.1, "weight_decay": 0.0, "m": 0.4},
            {"lr": 0.01, "weight_decay": 1e-3, "m": 0.1}, {"lr": 0.01, "weight_decay": 0.0, "m": 0.3}]
    assert np.allclose(grid_matrix(rows, y, x, "m"), [[0.3, 0.1], [0.3, np.nan]], equal_nan=True)


def test_fig7_heatmap_of_lr_by_weight_decay(tmp_path, monkeypatch):
    y, x = GridAxis("lr", LR_AXIS.label, (0.01, 0.1)), GridAxis("weight_decay", "L2", (0.0, 1e-2))
    monkeypatch.setitem(EXPERIMENTS, "fig7", grid_experiment("fig7", "lr x L2", y, x))
    rows = reproduce(tmp_path, "fig7", 1)
    assert rows.height == 4
    for row in rows.iter_rows(named=True):
        saved = json.loads((Path(row["run"]) / "config.json").read_text())
        assert (saved["lr"], saved["weight_decay"]) == (row["lr"], row["weight_decay"])
        assert (row["row"], row["column"]) == (f"lr {row['lr']:g}", f"L2 {row['weight_decay']:g}")
    by_point = {(r["lr"], r["weight_decay"]): r["test_ndcg@50"] for r in rows.iter_rows(named=True)}
    assert np.allclose(grid_matrix(rows.to_dicts(), y, x), [[by_point[(a, b)] for b in x.values] for a in y.values])
    text = (tmp_path / "out" / "fig7.md").read_text()
    assert "| L2 0 HR@50 | L2 0 NDCG@50 | L2 0.01 HR@50 | L2 0.01 NDCG@50 |" in text and "| lr 0.1 |" in text


def test_fig8_heatmap_of_fedrap_lambda_by_mu(tmp_path, monkeypatch):
    y, x = GridAxis("fedrap_lambda", "lambda", (1e-3, 1e-1)), GridAxis("fedrap_mu", "mu", (1e-3,))
    monkeypatch.setitem(EXPERIMENTS, "fig8", grid_experiment("fig8", "lambda x mu", y, x, backbone="fedrap"))
    rows = reproduce(tmp_path, "fig8", 1, "--backbone", "fcf")
    assert rows["backbone"].to_list() == ["fedrap", "fedrap"]   # whatever --backbone says
    assert rows["row"].to_list() == ["lambda 0.001", "lambda 0.1"]
    assert np.allclose(grid_matrix(rows.to_dicts(), y, x)[:, 0], rows["test_ndcg@50"].to_numpy())


# ---------------------------------------------------------------- fig10
def test_pca_keeps_a_plane_and_scales_each_set():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(2, 8)) / np.sqrt(8)
    a, b = rng.normal(size=(30, 2)) @ plane, rng.normal(size=(20, 2)) @ plane
    got = pca_2d({"a": a, "b": 10 * b})
    scale = {"a": np.linalg.norm(a, axis=1).mean(), "b": np.linalg.norm(b, axis=1).mean()}
    union, flat = np.concatenate([a / scale["a"], b / scale["b"]]), np.concatenate([got["a"], got["b"]])
    assert np.allclose(_distances(flat), _distances(union))
    assert popular_items(np.array([2, 0, 2, 1, 1, 2]), 4, 3).tolist() == [2, 1, 0]


def _distances(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


def _layer_norm(z, gain, bias):
    return (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5) * gain + bias


def _views(w: dict) -> tuple[np.ndarray, dict]:
    """(the default +ours views: sum, mlp, gate, x_v, x_c, x_d, each at unit RMS per item; the
    inputs x_v, x_c, x_d) from the checkpoint's server tensors, in numpy."""
    def linear(x, name):
        return x @ w[f"model/fusion.{name}.weight"].T + w[f"model/fusion.{name}.bias"]

    x = {m: _layer_norm(linear(w[f"model/fusion.{m}"], f"project.{m}.0"), w[f"model/fusion.project.{m}.1.weight"],
                        w[f"model/fusion.project.{m}.1.bias"]) for m in ("vision", "text")}
    x["id"] = w["model/fusion.ids"]
    stacked = np.concatenate([x["vision"], x["text"], x["id"]], axis=1)
    hidden = np.maximum(linear(np.maximum(linear(stacked, "mlp.0"), 0), "mlp.2"), 0)
    gates = np.split(1 / (1 + np.exp(-linear(stacked, "gate"))), 3, axis=1)
    gate = gates[0] * x["vision"] + gates[1] * x["text"] + gates[2] * x["id"]
    views = np.stack([x["vision"] + x["text"] + x["id"], linear(hidden, "mlp.4"), gate, x["vision"], x["text"], x["id"]])
    return views / np.sqrt((views ** 2).mean(axis=2, keepdims=True) + 1e-6), x


def test_fig10_projects_the_trained_servers_embeddings_and_two_users_views(tmp_path):
    rows = reproduce(tmp_path, "fig10", 1)
    run = Path(rows["run"][0])
    assert json.loads((run / "config.json").read_text())["checkpoint_every"] > 0   # the cell keeps a checkpoint
    server = safetensors.numpy.load_file(run / "checkpoint" / "server.safetensors")
    views, inputs = _views(server)
    pairs = train_pairs(0, tmp_path)
    items = np.argsort(-np.bincount(pairs[:, 1], minlength=len(views[0])), kind="stable")[:ITEMS_SHOWN]
    shares = np.load(run / "modality_reliance.npy")
    users = [int(np.argmin(shares[:, 2])), int(np.argmax(shares[:, 2]))]

    got = server_embeddings(run)
    assert list(got) == ["id", "vision", "text", *(f"user {u}" for u in users)]
    for modality in MODALITIES:
        assert np.allclose(got[modality], inputs[modality][items], atol=1e-5)
    clients = safetensors.numpy.load_file(run / "checkpoint" / "shard-0000.safetensors")
    for user in users:
        client = {k: v[list(clients["users"]).index(user)] for k, v in clients.items()}
        h = views[:, pairs[pairs[:, 0] == user, 1]].mean(axis=1).reshape(-1)
        hidden = np.maximum(h @ client["router.w1"] + client["router.b1"], 0)
        logits = hidden @ client["router.w2"] + client["router.b2"]
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert np.allclose(got[f"user {user}"], np.tensordot(weights, views, 1)[items], atol=1e-4)
