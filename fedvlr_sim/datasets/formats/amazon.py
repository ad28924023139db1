"""Amazon Reviews 2023 5-core rating-only benchmark CSV, with optional metadata and images.

``--raw`` is the CSV (``user_id,parent_asin,rating,timestamp``, timestamp in ms) or a folder
holding it. In a folder the CSV is looked up as ``<Category>.5core.rating_only.csv``, then
``<Category>.csv`` (Category e.g. All_Beauty, Gift_Cards), then the only ``*.csv``. Next to the
CSV, optionally: ``meta_<Category>.jsonl[.gz]`` (any one ``meta_*.jsonl[.gz]``: ``parent_asin``,
``title``, ``images`` with ``large``/``hi_res`` URLs, kept as information only) and an
``images/`` folder of ``<parent_asin>.jpg`` (or .jpeg/.png/.webp) files.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.preprocess import RawTables, build
from fedvlr_sim.datasets.rawio import find_one, read_csv
from fedvlr_sim.errors import FedVLRError

EXPECTED = "user_id,parent_asin,rating,timestamp"
META_SCHEMA = {
    "parent_asin": pl.String,
    "title": pl.String,
    "images": pl.List(pl.Struct({"large": pl.String, "hi_res": pl.String})),
}


def read(raw: Path, name: str, hint: str | None = None) -> Prepared:
    """Read the Amazon CSV at or in ``raw`` (``hint``: the category, e.g. All_Beauty)."""
    path = raw if raw.is_file() else _find_csv(raw, hint)
    ratings = read_csv(path, {"user_id": "str", "parent_asin": "str", "timestamp": "int"}, EXPECTED)
    folder = path.parent
    files = [path.name]
    items = pl.DataFrame(schema={"raw_id": pl.String})
    meta_path = find_one([folder], ["meta_*.jsonl", "meta_*.jsonl.gz"], "item metadata")
    if meta_path is not None:
        items = _read_metadata(meta_path)
        files.append(meta_path.name)
    images = find_one([folder], ["images"], "the item images", folder=True)
    if images is not None:
        files.append("images/")
    return build(
        RawTables(
            interactions=ratings.rename({"user_id": "user", "parent_asin": "item"}),
            items=items,
            image_dir=images,
            source={"format": "amazon2023", "raw": str(folder.resolve()), "files": files},
            label=str(path),
        ),
        name,
    )


def _find_csv(folder: Path, category: str | None) -> Path:
    patterns = ([f"{category}.5core.rating_only.csv", f"{category}.csv"] if category else []) + ["*.csv"]
    path = find_one([folder], patterns, "the ratings CSV")
    if path is None:
        raise FedVLRError(
            f"--raw {folder}: no ratings CSV found (looked for {', '.join(patterns)}; "
            f"expected the Amazon 2023 5-core rating-only CSV with {EXPECTED})"
        )
    return path


def _read_metadata(path: Path) -> pl.DataFrame:
    """raw_id, title and first image URL per item from Amazon metadata JSON lines."""
    expected = "expected parent_asin, title, images"
    try:
        meta = pl.read_ndjson(path, schema=META_SCHEMA)
    except (OSError, pl.exceptions.PolarsError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise FedVLRError(f"{path}: cannot parse as JSON lines ({reason}; {expected})") from None
    if meta.height == 0:
        raise FedVLRError(f"{path}: no JSON lines ({expected} per line)")
    first = pl.col("images").list.first().struct
    return meta.select(
        pl.col("parent_asin").alias("raw_id"),
        "title",
        first.field("large").fill_null(first.field("hi_res")).alias("image_url"),
    ).drop_nulls("raw_id")
