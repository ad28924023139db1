"""The in-memory dataset every engine component reads, its invariants and its summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedvlr_sim.errors import FedVLRError

TRAIN, VALID, TEST = 0, 1, 2
NORM_TOLERANCE = 1e-2  # float16 storage keeps row norms within about 1e-3 of 1


@dataclass
class Dataset:
    """Implicit-feedback interactions with a temporal leave-one-out split and item features.

    Rows are sorted by user, then time. ``split``: 0 train, 1 valid, 2 test; every user has at
    least one train row and exactly one valid and one test row. ``vision``/``text``: float32
    (n_items, dim) with L2-normalised rows, or None. ``planted_weights``: the true per-user
    (vision, text, id) weights of a synthetic world, else None.
    """

    name: str
    n_users: int
    n_items: int
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray
    vision: np.ndarray | None = None
    text: np.ndarray | None = None
    planted_weights: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with every row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def validate_dataset(ds: Dataset, files: Mapping[str, str] | None = None) -> None:
    """Raise FedVLRError unless ``ds`` meets the invariants above.

    ``files`` maps "interactions", "vision", "text" to the file each part came from, so that the
    one-line message names it.
    """
    label = {"interactions": f"{ds.name} interactions", "vision": f"{ds.name} vision features",
             "text": f"{ds.name} text features"} | dict(files or {})
    _check_interactions(ds, label["interactions"])
    dims = {}
    for part, feats in (("vision", ds.vision), ("text", ds.text)):
        if feats is not None:
            dims[part] = _check_features(feats, ds.n_items, label[part])
    if len(set(dims.values())) > 1:
        raise FedVLRError(
            f"{label['vision']} and {label['text']}: feature dimensions differ "
            f"({dims['vision']} vs {dims['text']}); both modalities must come from one model"
        )
    if ds.planted_weights is not None:
        w = ds.planted_weights
        if w.shape != (ds.n_users, 3) or not np.allclose(w.sum(axis=1), 1.0, atol=1e-4) or (w < 0).any():
            raise FedVLRError(f"{ds.name}: planted_weights must be (n_users, 3) rows on the simplex")


def checked(ds: Dataset, files: Mapping[str, str]) -> Dataset:
    """``validate_dataset(ds, files)``, then re-normalise the features exactly, as float32."""
    validate_dataset(ds, files)
    ds.vision = None if ds.vision is None else normalise_rows(ds.vision)
    ds.text = None if ds.text is None else normalise_rows(ds.text)
    return ds


def _check_interactions(ds: Dataset, label: str) -> None:
    n = len(ds.user)
    if n == 0:
        raise FedVLRError(f"{label}: no interactions")
    if not len(ds.item) == len(ds.timestamp) == len(ds.split) == n:
        raise FedVLRError(f"{label}: user, item, timestamp and split columns differ in length")
    for what, ids, count in (("user", ds.user, ds.n_users), ("item", ds.item, ds.n_items)):
        _check_contiguous(ids, count, what, label)
    if not np.isin(ds.split, (TRAIN, VALID, TEST)).all():
        raise FedVLRError(f"{label}: split values must be 0 (train), 1 (valid) or 2 (test)")
    for what, part, ok in (("no train row", TRAIN, lambda c: c >= 1),
                           ("not exactly one valid row", VALID, lambda c: c == 1),
                           ("not exactly one test row", TEST, lambda c: c == 1)):
        bad = np.flatnonzero(~ok(np.bincount(ds.user[ds.split == part], minlength=ds.n_users)))
        if bad.size:
            raise FedVLRError(
                f"{label}: {bad.size} users have {what} (e.g. user {bad[0]}); every user needs "
                f">=1 train, exactly 1 valid and exactly 1 test row"
            )


def _check_contiguous(ids: np.ndarray, count: int, what: str, label: str) -> None:
    """Raise unless ``ids`` use exactly 0..count-1; memory grows with len(ids), never with the largest id."""
    if ids.min() < 0 or ids.max() >= count:
        raise FedVLRError(f"{label}: {what} ids must lie in 0..{count - 1}, found {ids.min()}..{ids.max()}")
    present = np.unique(ids)
    if present.size < count:
        gaps = np.flatnonzero(present != np.arange(present.size))
        first_absent = int(gaps[0]) if gaps.size else present.size
        raise FedVLRError(
            f"{label}: {count - present.size} {what} ids have no interactions (e.g. {what} {first_absent}); "
            f"ids must be contiguous 0..{count - 1}"
        )


def _check_features(feats: np.ndarray, n_items: int, label: str) -> int:
    if feats.dtype.kind != "f":
        raise FedVLRError(f"{label}: dtype {feats.dtype}, expected a floating-point array ({n_items}, dim)")
    if feats.ndim != 2 or feats.shape[0] != n_items or feats.shape[1] == 0:
        raise FedVLRError(f"{label}: shape {feats.shape}, expected ({n_items}, dim): one row per item")
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        raise FedVLRError(f"{label}: non-finite values (NaN or inf), first in row {np.flatnonzero(~finite)[0]}")
    norms = np.linalg.norm(feats.astype(np.float64), axis=1)   # float64: no overflow of huge rows
    off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if off.size:
        raise FedVLRError(
            f"{label}: {off.size} rows are not L2-normalised (row {off[0]} has norm {norms[off[0]]:.4g})"
        )
    return feats.shape[1]


def dataset_summary(ds: Dataset) -> dict:
    """Counts, split sizes, interactions per user, cold test items, shares of items with a title and
    with an image, and features of ``ds``."""
    per_user = np.bincount(ds.user, minlength=ds.n_users)
    in_train = np.zeros(ds.n_items, dtype=bool)
    in_train[ds.item[ds.split == TRAIN]] = True
    test_items = ds.item[ds.split == TEST]
    cold = ~in_train[test_items]
    return {
        "name": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": len(ds.user),
        "train": int((ds.split == TRAIN).sum()),
        "valid": int((ds.split == VALID).sum()),
        "test": int((ds.split == TEST).sum()),
        "density": len(ds.user) / (ds.n_users * ds.n_items),
        "interactions_per_user": {
            "mean": float(per_user.mean()),
            "median": float(np.median(per_user)),
            "min": int(per_user.min()),
            "max": int(per_user.max()),
        },
        "items_never_in_train": int((~in_train).sum()),
        "cold_test_items": int(np.unique(test_items[cold]).size),
        "cold_test_users": int(cold.sum()),
        "features": {
            "vision": None if ds.vision is None else int(ds.vision.shape[1]),
            "text": None if ds.text is None else int(ds.text.shape[1]),
        },
        "items_with_title": _item_share(ds, "titles"),
        "items_with_image": _item_share(ds, "images"),
        "planted_weights": ds.planted_weights is not None,
    }


def _item_share(ds: Dataset, what: str) -> float | None:
    """Share of items with a title or an image (``what``: titles, images), from the item counts that
    ``meta.json`` records from the items table; None for a dataset without one (synthetic worlds)."""
    count = ds.meta.get("item_info", {}).get(what)
    return None if count is None else round(count / ds.n_items, 4)
