"""Synthetic worlds: shape, determinism, and a planted modality preference that can be recovered."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedvlr_sim.datasets import SYNTHETIC_PRESETS, dataset_summary, load_dataset


def world(preset: str, seed: int = 0):
    return load_dataset(f"synthetic:{preset}", data_dir=None, seed=seed)


def test_same_seed_gives_the_same_world_and_another_seed_a_different_one():
    a, b, c = world("tiny", 3), world("tiny", 3), world("tiny", 4)
    for field in ("user", "item", "timestamp", "split", "vision", "text", "planted_weights"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.planted_weights, c.planted_weights)


def test_tiny_world_is_small_and_complete():
    ds = world("tiny")
    s = dataset_summary(ds)
    assert ds.name == "synthetic:tiny" and s["users"] == 300 and 200 <= s["items"] <= 400
    assert 12 <= s["interactions_per_user"]["mean"] <= 18 and s["interactions_per_user"]["min"] >= 5
    assert np.bincount(ds.item, minlength=ds.n_items).min() >= 1  # every item appears
    assert (s["valid"], s["test"]) == (300, 300)
    assert s["items_with_title"] is None and s["items_with_image"] is None  # a world has no item table


def test_timestamps_increase_within_each_user_and_the_last_is_the_test_row():
    ds = world("tiny")
    same_user = ds.user[1:] == ds.user[:-1]
    assert (np.diff(ds.timestamp)[same_user] > 0).all()
    last = np.r_[~same_user, True]
    assert (ds.split[last] == 2).all()


def test_features_are_512d_unit_rows_and_planted_weights_are_heterogeneous_simplex_points():
    ds = world("ku")
    assert ds.vision.shape == ds.text.shape == (560, 512)
    assert np.allclose(np.linalg.norm(ds.vision, axis=1), 1, atol=1e-5)
    w = ds.planted_weights
    assert w.shape == (204, 3) and w.dtype == np.float32 and np.allclose(w.sum(axis=1), 1, atol=1e-5)
    assert (w.argmax(axis=1)[:, None] == np.arange(3)).sum(axis=0).min() > 30  # each modality leads for many
    assert ds.meta["source"] == {"format": "synthetic", "preset": "ku", "seed": 0}
    assert ds.meta["generator"]["latent_dim"] == 16


def test_movie_preset_has_bili_movie_shape_and_generates_in_seconds():
    start = time.perf_counter()
    ds = world("movie")
    elapsed = time.perf_counter() - start
    s = dataset_summary(ds)
    assert (s["users"], s["items"]) == (15908, 2528)
    assert 100_000 <= s["interactions"] <= 120_000
    assert elapsed < 20, f"synthetic:movie took {elapsed:.1f}s"


@pytest.mark.parametrize("preset", sorted(set(SYNTHETIC_PRESETS) - {"movie"}))  # movie: above
def test_every_preset_has_its_stated_user_and_item_counts(preset):
    shape, ds = SYNTHETIC_PRESETS[preset], world(preset)
    assert (ds.n_users, ds.n_items) == (shape.n_users, shape.n_items)
    assert abs(len(ds.user) / ds.n_users - shape.mean_per_user) < 0.15 * shape.mean_per_user


# --- the planted preference is recoverable from the observed data -------------------------------


def hit_rate(ds, scores: np.ndarray, users: np.ndarray, k: int = 10) -> float:
    """HR@k of the test item among items the user has not trained on, over ``users`` (a mask)."""
    scores = scores.copy()
    train = ds.split == 0
    scores[ds.user[train], ds.item[train]] = -np.inf
    test = ds.split == 2
    u, target = ds.user[test], ds.item[test]
    rank = (scores[u] > scores[u, target][:, None]).sum(axis=1)
    return float((rank < k)[users[u]].mean())


def profile_scores(ds, features: np.ndarray) -> np.ndarray:
    """Similarity of each item to the mean of the user's train items, z-scored per user."""
    train = ds.split == 0
    profile = np.zeros((ds.n_users, features.shape[1]))
    np.add.at(profile, ds.user[train], features[ds.item[train]])
    scores = profile @ features.T
    return (scores - scores.mean(axis=1, keepdims=True)) / scores.std(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ku_world():
    ds = world("ku")
    train = ds.split == 0
    popularity = np.log1p(np.bincount(ds.item[train], minlength=ds.n_items)).astype(float)
    pop = np.tile((popularity - popularity.mean()) / popularity.std(), (ds.n_users, 1))
    return ds, pop, profile_scores(ds, ds.vision), profile_scores(ds, ds.text)


def test_users_led_by_vision_are_served_by_vision_and_users_led_by_text_by_text(ku_world):
    ds, _, vision, text = ku_world
    w = ds.planted_weights
    by_vision, by_text = w[:, 0] > 0.6, w[:, 1] > 0.6
    assert hit_rate(ds, vision, by_vision) > 2 * hit_rate(ds, text, by_vision)
    assert hit_rate(ds, text, by_text) > 2 * hit_rate(ds, vision, by_text)


def test_knowing_the_planted_weights_beats_popularity_clearly(ku_world):
    ds, pop, vision, text = ku_world
    w = ds.planted_weights.astype(float)
    personal = 3 * w[:, [0]] * vision + 3 * w[:, [1]] * text + pop
    everyone = np.ones(ds.n_users, dtype=bool)
    assert hit_rate(ds, personal, everyone) > 2 * hit_rate(ds, pop, everyone)
