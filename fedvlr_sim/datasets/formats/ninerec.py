"""NineRec downstream datasets (KU, Bili_Food, Bili_Dance, Bili_Movie) in their raw form.

``--raw`` is the dataset folder, or a folder holding it as ``<NineRec name>/`` (e.g. Bili_Movie/).
Files looked for in it:
  ``*_pair.csv`` or ``pair.csv``         interactions, no header: item,user,timestamp (required)
  ``*_item.csv``, ``item.csv``, ``items.csv``  item table: item,cn_title,title (required; the
                                          English ``title`` is used)
  ``*_cover/``, ``*_covers/``, ``cover/``, ``covers/`` or ``images/``  cover images ``<item id>.jpg``
                                          (optional)
NineRec's code reads the pairs as item,user,timestamp, its README says user,item,timestamp: a
first line naming the columns decides; without one, the column whose ids are found in the item
table holds the items (SPEC section 8). A first line that repeats the item table's column names
is skipped. Ids are kept as strings.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.preprocess import RawTables, build
from fedvlr_sim.datasets.rawio import find_one, first_line, read_csv
from fedvlr_sim.errors import FedVLRError

PAIRS = ["*_pair.csv", "pair.csv"]
ITEMS = ["*_item.csv", "item.csv", "items.csv"]
COVERS = ["*_cover", "*_covers", "cover", "covers", "images"]
PAIR_COLUMNS = "item,user,timestamp"
PAIR_HEADERS = (["item", "user", "timestamp"], ["user", "item", "timestamp"])
LAYOUT = ("expected NineRec layout: <name>_pair.csv (item,user,timestamp; no header), "
          "<name>_item.csv (item,cn_title,title), optional <name>_cover/ with <item id>.jpg")


def read(raw: Path, name: str, hint: str | None = None) -> Prepared:
    """Read the NineRec folder ``raw`` (``hint``: its NineRec name, e.g. Bili_Movie)."""
    folders = [raw] + ([raw / hint] if hint else [])
    pairs = find_one(folders, PAIRS, "the interactions file")
    if pairs is None:
        raise FedVLRError(f"--raw {raw}: no {' or '.join(PAIRS)} found ({LAYOUT})")
    folder = pairs.parent
    item_file = find_one([folder], ITEMS, "the item table")
    if item_file is None:
        raise FedVLRError(f"{folder}: no {', '.join(ITEMS)} found ({LAYOUT})")
    items = read_csv(item_file, {"item": "str", "cn_title": "str", "title": "str"},
                     "item,cn_title,title", header="auto").select(pl.col("item").alias("raw_id"), "title")
    interactions = _read_pairs(pairs, items["raw_id"], item_file)
    files = [pairs.name, item_file.name]
    covers = find_one([folder], COVERS, "the cover images", folder=True)
    if covers is not None:
        files.append(covers.name + "/")
    return build(
        RawTables(
            interactions=interactions.select("user", "item", "timestamp"),
            items=items,
            image_dir=covers,
            source={"format": "ninerec", "raw": str(folder.resolve()), "files": files},
            label=str(pairs),
        ),
        name,
    )


def _read_pairs(path: Path, item_ids: pl.Series, item_file: Path) -> pl.DataFrame:
    """item, user, timestamp of the interactions file, its id columns told apart as the module says."""
    if [field.strip().lower() for field in first_line(path).split(",")] in PAIR_HEADERS:
        return read_csv(path, {"item": "str", "user": "str", "timestamp": "int"}, PAIR_COLUMNS)
    pairs = read_csv(path, {"first": "str", "second": "str", "timestamp": "int"}, PAIR_COLUMNS, header=False)
    found = {column: _share_found(pairs[column], item_ids) for column in ("first", "second")}
    if found["first"] == found["second"] == 0.0:
        raise FedVLRError(f"{path}: none of its ids appears in {item_file} "
                          f"(expected the item table's ids in one column; {LAYOUT})")
    item_first = found["first"] >= found["second"]  # a tie keeps NineRec's code order
    return pairs.rename({"first": "item", "second": "user"} if item_first else {"first": "user", "second": "item"})


def _share_found(ids: pl.Series, item_ids: pl.Series) -> float:
    """The share of the distinct ``ids`` that are ``item_ids`` (0 when there are none)."""
    distinct = ids.drop_nulls().unique()
    return float(distinct.is_in(item_ids.implode()).mean()) if len(distinct) else 0.0
