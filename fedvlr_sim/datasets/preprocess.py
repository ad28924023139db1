"""Raw interactions to a canonical dataset (SPEC section 1).

Drop rows without user or item, drop duplicate (user, item, timestamp) rows, keep the iterative
5-core on users and items, re-index both to 0..n-1 in sorted raw-id order, then split each user's
history in time: last interaction test, second to last valid, the rest train (ties in time keep
the order of the input file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.dataset import TEST, TRAIN, VALID, Dataset
from fedvlr_sim.datasets.rawio import image_paths
from fedvlr_sim.errors import FedVLRError

MIN_COUNT = 5


@dataclass
class RawTables:
    """What a raw-format reader returns.

    ``interactions``: user, item (raw ids, Int64 or String), timestamp (Int64), in file order.
    ``items``: raw_id (String) plus title and/or image_url, for any set of items.
    ``image_dir``: folder of ``<raw_id>.jpg`` (or .jpeg/.png/.webp) item images, if any.
    ``source``: provenance for meta.json; ``label``: the interactions file, for messages.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    image_dir: Path | None
    source: dict
    label: str


def build(raw: RawTables, name: str, min_count: int = MIN_COUNT) -> Prepared:
    """Clean, filter, re-index and split ``raw`` into a dataset called ``name``."""
    rows = raw.interactions.drop_nulls(["user", "item"])
    missing_ids = raw.interactions.height - rows.height
    no_time = rows["timestamp"].is_null()
    if no_time.any():
        raise FedVLRError(f"{raw.label}: {int(no_time.sum())} rows have no timestamp (every interaction needs one)")
    deduplicated = rows.unique(["user", "item", "timestamp"], keep="first", maintain_order=True)
    core = k_core(deduplicated, min_count)
    if core.height == 0:
        raise FedVLRError(
            f"{raw.label}: no interactions left after the {min_count}-core filter "
            f"({rows.height} rows read; users and items need >= {min_count} interactions each)"
        )
    user, user_ids = reindex(core["user"])
    item, item_ids = reindex(core["item"])
    timestamp = core["timestamp"].to_numpy().astype(np.int64)
    order, split = temporal_split(user, timestamp)
    items = _item_table(item_ids, raw.items).with_columns(image_paths(raw.image_dir, item_ids))
    meta = {
        "name": name,
        "source": raw.source,
        "preprocessing": {
            "rows_read": raw.interactions.height,
            "rows_missing_user_or_item": missing_ids,
            "duplicate_rows_dropped": rows.height - deduplicated.height,
            "k_core": min_count,
            "rows_removed_by_k_core": deduplicated.height - core.height,
            "ids": "re-indexed 0..n-1 in sorted raw-id order (numeric when all ids are integers)",
            "split": "temporal leave-one-out per user; time ties keep file order",
        },
    }
    dataset = Dataset(
        name=name,
        n_users=len(user_ids),
        n_items=len(item_ids),
        user=user[order],
        item=item[order],
        timestamp=timestamp[order],
        split=split,
        meta=meta,
    )
    users = pl.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "raw_id": user_ids})
    return Prepared(dataset, items, users)


def k_core(rows: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """Rows whose user and item both have >= ``min_count`` rows, repeated until nothing changes."""
    while True:
        kept = rows.filter((pl.len().over("user") >= min_count) & (pl.len().over("item") >= min_count))
        if kept.height == rows.height:
            return kept
        rows = kept


def reindex(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 0..n-1 for raw ``ids`` in sorted raw-id order, and the raw ids as strings by code.

    Integer ids (or strings that all parse as integers) sort numerically, other strings
    lexicographically, so the numbering is deterministic and readable.
    """
    unique = ids.unique()
    key = unique.cast(pl.Int64, strict=False) if unique.dtype == pl.String else unique
    if key.null_count():
        key = unique
    ordered = pl.DataFrame({"id": unique, "key": key}).sort("key", "id")["id"]
    codes = ids.replace_strict(ordered, pl.int_range(len(ordered), eager=True), return_dtype=pl.Int64)
    return codes.to_numpy(), ordered.cast(pl.String).alias("raw_id")


def temporal_split(user: np.ndarray, timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order rows by (user, timestamp, input position); label each user's last row test, the one before valid.

    Returns the permutation and the split labels (uint8) of the permuted rows.
    """
    order = np.lexsort((timestamp, user))  # stable: equal times keep input order
    sorted_user = user[order]
    ends = np.cumsum(np.bincount(sorted_user))
    from_end = ends[sorted_user] - 1 - np.arange(len(order))
    split = np.select([from_end == 0, from_end == 1], [TEST, VALID], TRAIN).astype(np.uint8)
    return order, split


def _item_table(item_ids: pl.Series, info: pl.DataFrame) -> pl.DataFrame:
    info = info.with_columns(
        pl.lit(None, dtype=pl.String).alias(column) for column in ("title", "image_url") if column not in info.columns
    ).select("raw_id", "title", "image_url").unique("raw_id", keep="first", maintain_order=True)
    table = pl.DataFrame({"item": np.arange(len(item_ids), dtype=np.int32), "raw_id": item_ids})
    return table.join(info.cast({"raw_id": pl.String}), on="raw_id", how="left", maintain_order="left")
