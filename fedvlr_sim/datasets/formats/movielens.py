"""MovieLens latest-small: every rating is an interaction; titles from movies.csv.

``--raw`` is ``ratings.csv`` itself, the folder holding it, or a folder holding
``ml-latest-small/ratings.csv``. ``movies.csv`` next to ``ratings.csv`` is optional (titles).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.datasets.canonical import Prepared
from fedvlr_sim.datasets.preprocess import RawTables, build
from fedvlr_sim.datasets.rawio import find_one, optional_file, read_csv
from fedvlr_sim.errors import FedVLRError

RATINGS = "userId,movieId,rating,timestamp"
MOVIES = "movieId,title,genres"


def read(raw: Path, name: str, hint: str | None = None) -> Prepared:
    """Read MovieLens ratings (and titles) from ``raw`` and preprocess them as dataset ``name``."""
    path = raw if raw.is_file() else find_one([raw, raw / "ml-latest-small"], ["ratings.csv"], "ratings")
    if path is None:
        raise FedVLRError(
            f"--raw {raw}: no ratings.csv here or in {raw / 'ml-latest-small'} (expected MovieLens "
            f"latest-small: ratings.csv with {RATINGS}, movies.csv with {MOVIES})"
        )
    ratings = read_csv(path, {"userId": "int", "movieId": "int", "timestamp": "int"}, RATINGS)
    movies_path = optional_file(path.parent / "movies.csv", MOVIES)
    files = [path.name]
    items = pl.DataFrame(schema={"raw_id": pl.String, "title": pl.String})
    if movies_path is not None:
        movies = read_csv(movies_path, {"movieId": "int", "title": "str"}, MOVIES)
        items = movies.select(pl.col("movieId").cast(pl.String).alias("raw_id"), "title")
        files.append(movies_path.name)
    return build(
        RawTables(
            interactions=ratings.rename({"userId": "user", "movieId": "item"}),
            items=items,
            image_dir=None,
            source={"format": "movielens", "raw": str(path.parent.resolve()), "files": files},
            label=str(path),
        ),
        name,
    )
