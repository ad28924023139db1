"""Synthetic worlds with a planted, personal modality preference (``synthetic:<preset>``).

Each item has latent visual, textual and collaborative factors (k each). Its observed vision and
text features are noisy orthonormal projections of the visual and textual factors to ``dim``
values (L2-normalised); the collaborative factor is in no feature. Each user has private weights
w_u ~ Dirichlet(alpha) over (vision, text, id) and a preference vector per modality. The user's
logit for an item is ``strength * sum_m w_u[m] <pref_u^m, latent_i^m> + popularity * pop_i``; the
user picks n_u items without replacement from the softmax of these logits (Gumbel top-k), the
picks get increasing timestamps in random order, and the usual temporal leave-one-out split
applies. Every item is interacted with at least once. Deterministic in (preset, seed).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from fedvlr_sim.datasets.dataset import Dataset, normalise_rows, validate_dataset
from fedvlr_sim.datasets.preprocess import temporal_split
from fedvlr_sim.errors import FedVLRError

MODALITIES = ("vision", "text", "id")
START_TIME = 1_600_000_000  # seconds
DAY = 86_400


@dataclass(frozen=True)
class Preset:
    """The shape of a synthetic world: users, items and interactions per user."""

    n_users: int
    n_items: int
    mean_per_user: float
    min_per_user: int
    description: str


@dataclass(frozen=True)
class Generator:
    """How a world is drawn (shared by all presets)."""

    latent_dim: int = 16
    feature_dim: int = 512
    feature_noise: float = 0.5  # noise norm relative to the signal norm in the observed features
    dirichlet_alpha: float = 0.5
    strength: float = 4.0  # inverse softmax temperature on the planted affinity
    popularity: float = 1.0  # scale of the log-popularity term
    chunk_cells: int = 1 << 23  # users x items logits computed at once


PRESETS: dict[str, Preset] = {
    "tiny": Preset(300, 300, 15.0, 5, "quick default world: 300 users, 300 items, ~15 per user"),
    "ku": Preset(204, 560, 17.1, 5, "KU's shape: 204 users, 560 items, ~3.5k interactions"),
    "food": Preset(5990, 1125, 6.09, 5, "Bili_Food's shape: 5,990 users, 1,125 items, ~36k interactions"),
    "dance": Preset(10231, 1676, 7.83, 5, "Bili_Dance's shape: 10,231 users, 1,676 items, ~80k interactions"),
    "movie": Preset(15908, 2528, 6.98, 5, "Bili_Movie's shape: 15,908 users, 2,528 items, ~111k interactions"),
    "beauty": Preset(253, 356, 10.0, 5, "Beauty's shape: 253 users, 356 items, ~2.5k interactions"),
    "cards": Preset(377, 129, 6.44, 5, "Cards' shape: 377 users, 129 items, ~2.4k interactions"),
    "ml": Preset(610, 3650, 148.0, 20, "ML's shape: 610 users, 3,650 items, ~90k interactions"),
}
GENERATOR = Generator()


def generate(preset: str, seed: int = 0) -> Dataset:
    """The synthetic world ``preset`` drawn with ``seed`` (name ``synthetic:<preset>``)."""
    if preset not in PRESETS:
        raise FedVLRError(
            f"unknown synthetic preset '{preset}': expected synthetic:<preset> with preset one of {', '.join(PRESETS)}"
        )
    shape, gen = PRESETS[preset], GENERATOR
    rng = np.random.default_rng([seed, zlib.crc32(preset.encode())])
    k, n_users, n_items = gen.latent_dim, shape.n_users, shape.n_items
    latent = rng.standard_normal((3, n_items, k)) / np.sqrt(k)
    preference = rng.standard_normal((3, n_users, k))
    weights = rng.dirichlet([gen.dirichlet_alpha] * 3, size=n_users)
    log_popularity = gen.popularity * rng.standard_normal(n_items)
    vision, text = (_observe(latent[m], gen, rng) for m in (0, 1))
    # fold w_u and the strength into one user vector per modality: logits = user_vec @ item_vec.T
    user_vec = np.concatenate([gen.strength * weights[:, [m]] * preference[m] for m in range(3)], axis=1)
    item_vec = np.concatenate(list(latent), axis=1)
    counts = _interaction_counts(shape, rng)
    user, item = _sample(user_vec, item_vec, log_popularity, counts, gen.chunk_cells, rng)
    user, item = _cover_all_items(user, item, user_vec, item_vec, log_popularity, rng)
    timestamp = _timestamps(user, n_users, rng)
    order, split = temporal_split(user, timestamp)
    ds = Dataset(
        name=f"synthetic:{preset}",
        n_users=n_users,
        n_items=n_items,
        user=user[order],
        item=item[order],
        timestamp=timestamp[order],
        split=split,
        vision=vision,
        text=text,
        planted_weights=weights.astype(np.float32),
        meta={
            "name": f"synthetic:{preset}",
            "source": {"format": "synthetic", "preset": preset, "seed": seed},
            "preset": asdict(shape),
            "generator": asdict(gen),
            "planted_weights": "per-user Dirichlet weights over " + ", ".join(MODALITIES),
        },
    )
    validate_dataset(ds)
    return ds


def _observe(latent: np.ndarray, gen: Generator, rng: np.random.Generator) -> np.ndarray:
    """Observed features: an orthonormal projection of ``latent`` plus isotropic noise, normalised."""
    basis, _ = np.linalg.qr(rng.standard_normal((gen.feature_dim, gen.latent_dim)))
    signal = normalise_rows(latent) @ basis.T
    noise = rng.standard_normal(signal.shape) * gen.feature_noise / np.sqrt(gen.feature_dim)
    return normalise_rows(signal + noise)


def _interaction_counts(shape: Preset, rng: np.random.Generator) -> np.ndarray:
    """Per-user counts: ``min_per_user`` plus a geometric tail with the preset's mean."""
    extra = rng.geometric(1.0 / (shape.mean_per_user - shape.min_per_user + 1), size=shape.n_users) - 1
    return np.minimum(shape.min_per_user + extra, shape.n_items // 2)


def _sample(user_vec, item_vec, log_popularity, counts, chunk_cells, rng):
    """Each user's ``counts[u]`` distinct items, drawn from the softmax of its logits (Gumbel top-k)."""
    n_users, n_items = len(user_vec), len(item_vec)
    step = max(1, chunk_cells // n_items)
    users, items = [], []
    for start in range(0, n_users, step):  # chunks bound memory; all work inside is vectorised
        rows = slice(start, min(start + step, n_users))
        keys = (user_vec[rows] @ item_vec.T + log_popularity).astype(np.float32)
        keys += rng.gumbel(size=keys.shape).astype(np.float32)
        top = int(counts[rows].max())
        best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(keys, best, 1), axis=1), 1)
        take = np.arange(top) < counts[rows, None]
        users.append(np.broadcast_to(np.arange(rows.start, rows.stop)[:, None], best.shape)[take])
        items.append(best[take])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _cover_all_items(user, item, user_vec, item_vec, log_popularity, rng):
    """Give every item nobody picked one interaction, with the user most drawn to it."""
    unseen = np.flatnonzero(np.bincount(item, minlength=len(item_vec)) == 0)
    if unseen.size == 0:
        return user, item
    keys = user_vec @ item_vec[unseen].T + log_popularity[unseen] + rng.gumbel(size=(len(user_vec), unseen.size))
    return np.concatenate([user, keys.argmax(axis=0)]), np.concatenate([item, unseen])


def _timestamps(user: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing times per user, in a random order of the user's items (about a day apart)."""
    order = np.lexsort((rng.random(len(user)), user))
    position = np.empty(len(user), dtype=np.int64)
    starts = np.cumsum(np.bincount(user, minlength=n_users)) - np.bincount(user, minlength=n_users)
    position[order] = np.arange(len(user)) - starts[user[order]]
    offset = rng.integers(0, 365 * DAY, size=n_users)
    return START_TIME + offset[user] + position * DAY + rng.integers(0, DAY, size=len(user))
