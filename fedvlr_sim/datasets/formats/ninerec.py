"""NineRec downstream datasets (KU, Bili_Food, Bili_Dance, Bili_Movie) in their raw form.

``--raw`` is the dataset folder, or a folder holding it as ``<NineRec name>/`` (e.g. Bili_Movie/).
Files looked for in it:
  ``*_pair.csv`` or ``pair.csv``         interactions, no header: item,user,timestamp (required)
  ``*_item.csv``, ``item.csv``, ``items.csv``  item table: item,cn_title,title (required; the
                                          English ``title`` is used)
  ``*_cover/``, ``*_covers/``, ``cover/``, ``covers/`` or ``images/``  cover images ``<item id>.jpg``
                                          (optional)
A first line that repeats the column names is skipped. Ids are kept as strings.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.preprocess import RawTables, build
from fedvlr_sim.datasets.rawio import find_one, read_csv
from fedvlr_sim.errors import FedVLRError

PAIRS = ["*_pair.csv", "pair.csv"]
ITEMS = ["*_item.csv", "item.csv", "items.csv"]
COVERS = ["*_cover", "*_covers", "cover", "covers", "images"]
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
    interactions = read_csv(pairs, {"item": "str", "user": "str", "timestamp": "int"},
                            "item,user,timestamp", header="auto")
    items = read_csv(item_file, {"item": "str", "cn_title": "str", "title": "str"},
                     "item,cn_title,title", header="auto").select(pl.col("item").alias("raw_id"), "title")
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
