"""Amazon Reviews 2023 5-core rating-only benchmark CSV, with optional metadata and images.

``--raw`` is the CSV (``user_id,parent_asin,rating,timestamp``, timestamp in ms) or a folder
holding it. In a folder the CSV is looked up as ``<Category>.5core.rating_only.csv``, then
``<Category>.csv`` (Category e.g. All_Beauty, Gift_Cards), then the only ``*.csv``. Next to the
CSV, optionally: ``meta_<Category>.jsonl[.gz]`` (any one ``meta_*.jsonl[.gz]``: ``parent_asin``,
``title``, ``images`` with ``large``/``hi_res``/``thumb`` URLs, kept as information only) and an
``images/`` folder of ``<parent_asin>.jpg`` (or .jpeg/.png/.webp) files, which
``fedvlr_sim.datasets.images.download_images`` fills from the metadata URLs.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.preprocess import RawTables, build
from fedvlr_sim.datasets.rawio import find_one, read_csv
from fedvlr_sim.errors import FedVLRError

EXPECTED = "user_id,parent_asin,rating,timestamp"
IMAGE_FOLDER = "images"
IMAGE_URL_FIELDS = ("large", "hi_res", "thumb")  # an image's URLs, most preferred first
META_SCHEMA = {
    "parent_asin": pl.String,
    "title": pl.String,
    "images": pl.List(pl.Struct({field: pl.String for field in IMAGE_URL_FIELDS})),
}


def read(raw: Path, name: str, hint: str | None = None) -> Prepared:
    """Read the Amazon CSV at or in ``raw`` (``hint``: the category, e.g. All_Beauty)."""
    path = ratings_csv(raw, hint)
    ratings = read_csv(path, {"user_id": "str", "parent_asin": "str", "timestamp": "int"}, EXPECTED)
    folder = path.parent
    files = [path.name]
    items = pl.DataFrame(schema={"raw_id": pl.String})
    meta_path = metadata_file(folder)
    if meta_path is not None:
        items = read_metadata(meta_path)
        files.append(meta_path.name)
    images = find_one([folder], [IMAGE_FOLDER], "the item images", folder=True)
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


def ratings_csv(raw: Path, category: str | None) -> Path:
    """The ratings CSV: ``raw`` itself, or the one found in the folder ``raw`` (see module doc)."""
    return raw if raw.is_file() else _find_csv(raw, category)


def metadata_file(folder: Path) -> Path | None:
    """The item metadata JSON lines file next to the ratings CSV in ``folder``, if there is one."""
    return find_one([folder], ["meta_*.jsonl", "meta_*.jsonl.gz"], "item metadata")


def _find_csv(folder: Path, category: str | None) -> Path:
    patterns = ([f"{category}.5core.rating_only.csv", f"{category}.csv"] if category else []) + ["*.csv"]
    path = find_one([folder], patterns, "the ratings CSV")
    if path is None:
        raise FedVLRError(
            f"--raw {folder}: no ratings CSV found (looked for {', '.join(patterns)}; "
            f"expected the Amazon 2023 5-core rating-only CSV with {EXPECTED})"
        )
    return path


def read_metadata(path: Path) -> pl.DataFrame:
    """raw_id, title and image_url per item from Amazon metadata JSON lines.

    image_url: the first of the item's images that has a URL, its ``large`` URL, else ``hi_res``,
    else ``thumb``.
    """
    expected = "expected parent_asin, title, images"
    try:
        meta = pl.read_ndjson(path, schema=META_SCHEMA)
    except (OSError, pl.exceptions.PolarsError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise FedVLRError(f"{path}: cannot parse as JSON lines ({reason}; {expected})") from None
    if meta.height == 0:
        raise FedVLRError(f"{path}: no JSON lines ({expected} per line)")
    preferred_url = pl.coalesce(pl.element().struct.field(field) for field in IMAGE_URL_FIELDS)
    return meta.select(
        pl.col("parent_asin").alias("raw_id"),
        "title",
        pl.col("images").list.eval(preferred_url).list.drop_nulls().list.first().alias("image_url"),
    ).drop_nulls("raw_id")
