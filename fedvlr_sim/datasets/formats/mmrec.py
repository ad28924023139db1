"""MMRec layout, the FedVLR authors' processed form (e.g. KU), taken as it is.

Files in the folder:
  inter.csv            userID,itemID,rating,timestamp,split_label (comma or tab separated;
                       split 0 train, 1 valid, 2 test); ids are already 0..n-1
  image_features.npy   optional, (n_items, dim), row = itemID
  text_features.npy    optional, (n_items, dim), row = itemID
  i_id_mapping.csv     optional, <raw id column>,itemID  (raw ids go to items.parquet)
  u_id_mapping.csv     optional, <raw id column>,userID  (raw ids go to users.parquet)

The ids and the split are kept: no re-filtering, no re-splitting. Exact duplicate rows (same
userID, itemID, timestamp and split_label) are dropped, as SPEC section 1 drops duplicate
(user, item, timestamp) rows; KU has 5 such train rows, so it keeps 3,484 of its 3,489 rows.
The training history is a set for the engine, so this changes no model input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fedvlr_sim.datasets.canonical import Prepared, load_npy
from fedvlr_sim.datasets.dataset import Dataset, checked
from fedvlr_sim.datasets.rawio import first_line, optional_file, read_csv, sniff_separator
from fedvlr_sim.errors import FedVLRError

EXPECTED = "userID,itemID,rating,timestamp,split_label"
FEATURE_FILES = {"vision": "image_features.npy", "text": "text_features.npy"}
COLUMNS = {"userID": "int", "itemID": "int", "timestamp": "int", "split_label": "int"}
SPLIT_LABELS = (0, 1, 2)


def read(raw: Path, name: str, hint: str | None = None) -> Prepared:
    """Read the MMRec folder ``raw`` as dataset ``name`` (``hint`` is unused)."""
    if not raw.is_dir():
        raise FedVLRError(f"--raw {raw}: expected an MMRec folder containing inter.csv ({EXPECTED})")
    path = raw / "inter.csv"
    table = _read_interactions(path)
    rows = table.unique(keep="first", maintain_order=True)
    user, item = rows["userID"].to_numpy(), rows["itemID"].to_numpy()
    timestamp = rows["timestamp"].to_numpy()
    order = np.lexsort((timestamp, user))  # by user, then time; ties keep file order
    features = {part: load_npy(raw / f) for part, f in FEATURE_FILES.items()}
    ds = checked(
        Dataset(
            name=name,
            n_users=int(user.max()) + 1,
            n_items=int(item.max()) + 1,
            user=user[order],
            item=item[order],
            timestamp=timestamp[order],
            split=rows["split_label"].to_numpy()[order].astype(np.uint8),
            vision=features["vision"],
            text=features["text"],
        ),
        {"interactions": str(path)} | {p: str(raw / f) for p, f in FEATURE_FILES.items()},
    )
    ds.meta = _meta(ds, raw, rows_read=table.height, rows_kept=rows.height)
    items = pl.DataFrame({"item": np.arange(ds.n_items, dtype=np.int32),
                          "raw_id": _raw_ids(raw / "i_id_mapping.csv", "itemID", ds.n_items)})
    items = items.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in ("title", "image_path", "image_url"))
    users = pl.DataFrame({"user": np.arange(ds.n_users, dtype=np.int32),
                          "raw_id": _raw_ids(raw / "u_id_mapping.csv", "userID", ds.n_users)})
    return Prepared(ds, items, users)


def _read_interactions(path: Path) -> pl.DataFrame:
    """The typed columns of ``inter.csv``: no empty cells, split labels 0, 1 or 2."""
    table = read_csv(path, COLUMNS, EXPECTED, separator=sniff_separator(path))
    empty = table.select(pl.any_horizontal(pl.all().is_null())).to_series()
    if empty.any():
        raise FedVLRError(f"{path}: empty value on line {int(empty.arg_true()[0]) + 2} (expected {EXPECTED})")
    bad_split = ~table["split_label"].is_in(SPLIT_LABELS)
    if bad_split.any():
        row = int(bad_split.arg_true()[0])
        raise FedVLRError(f"{path}: column 'split_label' has value {table['split_label'][row]} on line {row + 2} "
                          f"(expected 0 train, 1 valid or 2 test)")
    return table


def _meta(ds: Dataset, raw: Path, rows_read: int, rows_kept: int) -> dict:
    """meta.json content of a dataset read from the MMRec folder ``raw``."""
    features = {part: getattr(ds, part) for part in FEATURE_FILES if getattr(ds, part) is not None}
    return {
        "name": ds.name,
        "source": {"format": "mmrec", "raw": str(raw.resolve()),
                   "files": ["inter.csv"] + [FEATURE_FILES[part] for part in features]},
        "preprocessing": {
            "rows_read": rows_read,
            "duplicate_rows_dropped": rows_read - rows_kept,
            "duplicates": "exact duplicate rows of inter.csv dropped (SPEC dedupe rule)",
            "split": "kept from inter.csv split_label (no re-filtering, no re-splitting)",
        },
        "features": {part: {"source": f"{FEATURE_FILES[part]} from the MMRec folder", "dim": int(vectors.shape[1])}
                     for part, vectors in features.items()},
    }


def _raw_ids(path: Path, id_column: str, count: int) -> pl.Series:
    """Raw id per internal id from an MMRec mapping file, or the internal ids when it is absent."""
    expected = f"<raw id>,{id_column}"
    if optional_file(path, expected) is None:
        return pl.Series("raw_id", [str(i) for i in range(count)])
    separator = sniff_separator(path)
    header = first_line(path).strip().split(separator)
    raw_column = next((c for c in header if c != id_column), None)
    if raw_column is None:
        raise FedVLRError(f"{path}: missing the raw id column (expected {expected})")
    table = read_csv(path, {raw_column: "str", id_column: "int"}, expected, separator=separator)
    ids = table[id_column].to_numpy()
    if table[id_column].null_count() or sorted(ids.tolist()) != list(range(count)):
        raise FedVLRError(f"{path}: column '{id_column}' must list each id 0..{count - 1} once")
    return table[raw_column].gather(np.argsort(ids)).alias("raw_id")
