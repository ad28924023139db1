"""The canonical on-disk form of a prepared dataset: write it, read it back, validate it.

``<data_dir>/<name>/`` holds
  interactions.parquet  user int32, item int32, timestamp int64, split uint8 (0 train, 1 valid, 2 test)
  items.parquet         item int32, raw_id str, title str?, image_path str? (absolute), image_url str?
  users.parquet         user int32, raw_id str
  features/vision.npy, features/text.npy   float32 (n_items, dim), L2-normalised rows (optional)
  meta.json             name, source, preprocessing, counts, item_info (items with a title, with an
                        image), features, sha256 of the parquet files
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fedvlr_sim.datasets.dataset import Dataset, checked, dataset_summary, normalise_rows
from fedvlr_sim.datasets.rawio import optional_file
from fedvlr_sim.errors import FedVLRError

INTERACTIONS, ITEMS, USERS, META = "interactions.parquet", "items.parquet", "users.parquet", "meta.json"
FEATURE_FILES = {"vision": "features/vision.npy", "text": "features/text.npy"}
FORMAT_VERSION = 1

INTERACTION_SCHEMA = {"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64, "split": pl.UInt8}
ITEM_SCHEMA = {"item": pl.Int32, "raw_id": pl.String, "title": pl.String, "image_path": pl.String,
               "image_url": pl.String}
USER_SCHEMA = {"user": pl.Int32, "raw_id": pl.String}


@dataclass
class Prepared:
    """A dataset ready to be written: the arrays plus the item and user tables (ITEM/USER_SCHEMA)."""

    dataset: Dataset
    items: pl.DataFrame
    users: pl.DataFrame


def write_prepared(prepared: Prepared, folder: Path) -> None:
    """Write ``prepared`` into the new folder ``folder`` (no validation: callers validate first)."""
    ds = prepared.dataset
    folder.mkdir(parents=True)
    pl.DataFrame(
        {"user": ds.user, "item": ds.item, "timestamp": ds.timestamp, "split": ds.split},
        schema=INTERACTION_SCHEMA,
    ).write_parquet(folder / INTERACTIONS)
    prepared.items.cast(ITEM_SCHEMA).select(list(ITEM_SCHEMA)).write_parquet(folder / ITEMS)
    prepared.users.cast(USER_SCHEMA).select(list(USER_SCHEMA)).write_parquet(folder / USERS)
    for part in FEATURE_FILES:
        if getattr(ds, part) is not None:
            save_features(folder, part, getattr(ds, part))
    summary = dataset_summary(ds)
    meta = dict(ds.meta)
    meta.update(
        format_version=FORMAT_VERSION,
        name=ds.name,
        counts={k: summary[k] for k in ("users", "items", "interactions", "train", "valid", "test")},
        checksums={f: sha256(folder / f) for f in (INTERACTIONS, ITEMS, USERS)},
        item_info=_item_info(prepared.items),
    )
    write_meta(folder, meta)


def _item_info(items: pl.DataFrame) -> dict:
    """How many items of the item table have a title and how many an image file."""
    return {"titles": int(items["title"].is_not_null().sum()), "images": int(items["image_path"].is_not_null().sum())}


def read_dataset(folder: Path) -> Dataset:
    """Load and validate the prepared dataset in ``folder``; every problem names the file."""
    meta = read_meta(folder)
    interactions = _read_parquet(folder, INTERACTIONS, INTERACTION_SCHEMA, meta)
    n_items = _read_parquet(folder, ITEMS, ITEM_SCHEMA, meta).height
    n_users = _read_parquet(folder, USERS, USER_SCHEMA, meta).height
    features_folder(folder)
    features = {part: load_npy(folder / f) for part, f in FEATURE_FILES.items()}
    ds = Dataset(
        name=meta.get("name", folder.name),
        n_users=n_users,
        n_items=n_items,
        user=interactions["user"].to_numpy().astype(np.int64),
        item=interactions["item"].to_numpy().astype(np.int64),
        timestamp=interactions["timestamp"].to_numpy().astype(np.int64),
        split=interactions["split"].to_numpy().astype(np.uint8),
        vision=features["vision"],
        text=features["text"],
        meta=meta | {"path": str(folder)},
    )
    files = {"interactions": str(folder / INTERACTIONS)} | {p: str(folder / f) for p, f in FEATURE_FILES.items()}
    return checked(ds, files)


def read_meta(folder: Path) -> dict:
    """The parsed ``meta.json`` of a prepared dataset."""
    path = folder / META
    if not path.is_file():
        raise FedVLRError(f"{path}: not found (expected a dataset written by `fedvlr-sim prepare`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedVLRError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise FedVLRError(f"{path}: expected a JSON object")
    if not isinstance(meta.get("checksums", {}), dict):
        raise FedVLRError(f"{path}: 'checksums' must be an object of file name to sha256")
    return meta


def features_folder(folder: Path) -> Path:
    """``folder/features`` of a prepared dataset, which may be absent but must not be a file."""
    path = folder / "features"
    if path.exists() and not path.is_dir():
        raise FedVLRError(f"{path}: is a file, expected the folder of vision.npy and text.npy (or nothing)")
    return path


def read_items(folder: Path) -> pl.DataFrame:
    """The validated item table of a prepared dataset (item, raw_id, title, image_path, image_url)."""
    return _read_parquet(folder, ITEMS, ITEM_SCHEMA, read_meta(folder))


def _read_parquet(folder: Path, name: str, schema: dict, meta: dict) -> pl.DataFrame:
    path = folder / name
    if not path.is_file():
        raise FedVLRError(f"{path}: not found (expected a dataset written by `fedvlr-sim prepare`)")
    expected = meta.get("checksums", {}).get(name)
    if expected is not None and sha256(path) != expected:
        raise FedVLRError(f"{path}: sha256 differs from meta.json (file changed after prepare); prepare it again")
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise FedVLRError(f"{path}: cannot read parquet ({str(exc).splitlines()[0]})") from None
    layout = ", ".join(f"{c} {t}" for c, t in schema.items())
    for column, dtype in schema.items():
        if column not in table.columns:
            raise FedVLRError(f"{path}: missing column '{column}' (expected {layout})")
        if dtype.is_integer() and not table[column].dtype.is_integer():
            raise FedVLRError(f"{path}: column '{column}' has type {table[column].dtype} (expected {layout})")
        if dtype.is_integer() and table[column].null_count():
            raise FedVLRError(f"{path}: column '{column}' has {table[column].null_count()} missing values "
                              f"(expected {layout}, no nulls)")
    key = next(iter(schema))
    if name != INTERACTIONS and not (table[key].to_numpy() == np.arange(table.height)).all():
        raise FedVLRError(f"{path}: column '{key}' must be 0..{table.height - 1} in order")
    return table


def load_npy(path: Path) -> np.ndarray | None:
    """The array in the ``.npy`` file ``path`` (never unpickled), or None when nothing is there."""
    if optional_file(path, "a .npy array (n_items, dim)") is None:
        return None
    if path.stat().st_size == 0:
        raise FedVLRError(f"{path}: empty file (expected a .npy array (n_items, dim))")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FedVLRError(f"{path}: cannot read as a .npy array ({str(exc).strip().splitlines()[0]})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise FedVLRError(f"{path}: an .npz archive, expected a .npy array (n_items, dim)")
    return array


def save_features(folder: Path, part: str, features: np.ndarray) -> None:
    """Atomically write one modality's features as float32 with L2-normalised rows."""
    path = folder / FEATURE_FILES[part]
    path.parent.mkdir(exist_ok=True)
    _atomic_write(path, lambda handle: np.save(handle, normalise_rows(features)))


def write_meta(folder: Path, meta: dict) -> None:
    """Atomically (re)write ``meta.json``."""
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / META, lambda handle: handle.write(text.encode()))


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        write(handle)
    os.replace(tmp, path)
