"""The real datasets in ../shared/datasets give the paper's counts (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fedvlr_sim.datasets import dataset_summary, load_dataset, prepare_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def prepared(name: str, raw: str, data_dir: Path):
    if not (SHARED / raw).exists():
        pytest.skip(f"{SHARED / raw} not available")
    prepare_dataset(name, SHARED / raw, data_dir)
    return load_dataset(name, data_dir)


def counts(ds) -> tuple[int, int, int]:
    return ds.n_users, ds.n_items, len(ds.user)


def test_ku_keeps_the_authors_split_and_drops_its_5_duplicate_rows(tmp_path):
    ds = prepared("KU", "KU", tmp_path)
    assert counts(ds) == (204, 560, 3484)  # 3,489 rows in inter.csv, 5 exact duplicates
    assert ds.meta["preprocessing"]["duplicate_rows_dropped"] == 5
    ours = pl.DataFrame({"userID": ds.user, "itemID": ds.item, "split": ds.split})
    both = pl.read_csv(SHARED / "KU" / "inter.csv").unique().join(ours, on=["userID", "itemID"])
    assert both.height == 3484 and (both["split_label"] == both["split"]).all()


def test_ku_features_are_the_authors_clip_features_renormalised(tmp_path):
    ds = prepared("KU", "KU", tmp_path)
    original = np.load(SHARED / "KU" / "image_features.npy").astype(np.float32)
    assert ds.vision.dtype == np.float32 and ds.vision.shape == ds.text.shape == (560, 512)
    assert np.allclose(ds.vision, original, atol=1e-3)
    raw_ids = pl.read_parquet(tmp_path / "KU" / "items.parquet")["raw_id"].to_list()
    assert raw_ids[:3] == ["2", "16", "17"]  # from i_id_mapping.csv


def test_ku_has_the_cold_test_items_the_readme_describes(tmp_path):
    summary = dataset_summary(prepared("KU", "KU", tmp_path))
    assert summary["items_never_in_train"] == 16 and summary["cold_test_users"] == 88


def test_movielens_latest_small_gives_table1_counts_with_titles(tmp_path):
    ds = prepared("ML", "ML", tmp_path)
    assert counts(ds) == (610, 3650, 90274)
    titles = pl.read_parquet(tmp_path / "ML" / "items.parquet")["title"]
    assert titles[0] == "Toy Story (1995)" and titles.null_count() == 0


def test_amazon_beauty_gives_table1_counts(tmp_path):
    ds = prepared("Beauty", "Beauty", tmp_path)
    assert counts(ds) == (253, 356, 2535)
    assert ds.vision is None and ds.text is None
