"""The canonical on-disk form, validation on load, and finding datasets by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fedvlr_sim.datasets import KNOWN_DATASETS, SYNTHETIC_PRESETS, list_datasets, load_dataset
from fedvlr_sim.datasets.canonical import Prepared, read_dataset, sha256, write_prepared
from fedvlr_sim.errors import FedVLRError


def write_world(folder: Path, **changes) -> Path:
    """Write synthetic:tiny (with any Dataset field replaced) as a prepared dataset in ``folder``."""
    ds = load_dataset("synthetic:tiny", folder.parent)
    for field, value in changes.items():
        setattr(ds, field, value)
    items = pl.DataFrame({"item": np.arange(ds.n_items), "raw_id": [f"i{i}" for i in range(ds.n_items)],
                          "title": None, "image_path": None, "image_url": None})
    users = pl.DataFrame({"user": np.arange(ds.n_users), "raw_id": [f"u{u}" for u in range(ds.n_users)]})
    write_prepared(Prepared(ds, items, users), folder)
    return folder


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return write_world(tmp_path / "data" / "World")


def test_written_dataset_reads_back_identically(world):
    original = load_dataset("synthetic:tiny", world.parent)
    ds = read_dataset(world)
    assert (ds.n_users, ds.n_items) == (original.n_users, original.n_items)
    for column in ("user", "item", "timestamp", "split"):
        assert np.array_equal(getattr(ds, column), getattr(original, column))
    assert np.allclose(ds.vision, original.vision) and np.allclose(ds.text, original.text)
    assert (ds.user.dtype, ds.split.dtype, ds.vision.dtype) == (np.int64, np.uint8, np.float32)
    assert ds.planted_weights is None  # the truth of a synthetic world is not written


def test_canonical_files_have_the_documented_schema(world):
    schema = pl.read_parquet_schema(world / "interactions.parquet")
    assert schema == {"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64, "split": pl.UInt8}
    assert list(pl.read_parquet_schema(world / "items.parquet")) == ["item", "raw_id", "title", "image_path",
                                                                      "image_url"]
    meta = json.loads((world / "meta.json").read_text())
    assert meta["counts"]["interactions"] == pl.read_parquet(world / "interactions.parquet").height
    assert meta["checksums"]["items.parquet"] == sha256(world / "items.parquet")


# --- validation on load: each problem names the file --------------------------------------------


def test_missing_parquet_file_is_named(world):
    (world / "users.parquet").unlink()
    with pytest.raises(FedVLRError, match=r"World/users\.parquet: not found"):
        read_dataset(world)


def test_changed_parquet_file_fails_its_checksum(world):
    table = pl.read_parquet(world / "interactions.parquet")
    table.head(100).write_parquet(world / "interactions.parquet")
    with pytest.raises(FedVLRError, match=r"interactions\.parquet: sha256 differs from meta\.json"):
        read_dataset(world)


def rewrite_interactions(world, change) -> None:
    """Replace interactions.parquet by `change(table)` and record its new checksum, as a user
    editing the file and meta.json would."""
    change(pl.read_parquet(world / "interactions.parquet")).write_parquet(world / "interactions.parquet")
    meta = json.loads((world / "meta.json").read_text())
    meta["checksums"]["interactions.parquet"] = sha256(world / "interactions.parquet")
    (world / "meta.json").write_text(json.dumps(meta))


def test_missing_parquet_column_is_named(world):
    rewrite_interactions(world, lambda table: table.drop("split"))
    with pytest.raises(FedVLRError, match=r"interactions\.parquet: missing column 'split'"):
        read_dataset(world)


@pytest.mark.filterwarnings("error")   # no numpy warning line before the error
def test_missing_ids_are_named_not_cast(world):
    rewrite_interactions(world, lambda table: table.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("item")).alias("item")))
    with pytest.raises(FedVLRError, match=r"interactions\.parquet: column 'item' has 1 missing values"):
        read_dataset(world)


def test_user_without_a_test_row_is_rejected(tmp_path):
    ds = load_dataset("synthetic:tiny", tmp_path)
    split = ds.split.copy()
    split[np.flatnonzero((ds.user == 7) & (ds.split == 2))] = 0
    folder = write_world(tmp_path / "Bad", split=split)
    expected = r"interactions\.parquet: 1 users have not exactly one test row \(e\.g\. user 7\)"
    with pytest.raises(FedVLRError, match=expected):
        read_dataset(folder)


def test_item_ids_must_be_contiguous(tmp_path):
    ds = load_dataset("synthetic:tiny", tmp_path)
    folder = write_world(tmp_path / "Gap", item=np.where(ds.item == 5, 6, ds.item))
    with pytest.raises(FedVLRError, match=r"interactions\.parquet: 1 item ids have no interactions \(e\.g\. item 5\)"):
        read_dataset(folder)


def test_feature_dimensions_must_agree_on_load(world):
    half = np.load(world / "features" / "text.npy")[:, :256]
    np.save(world / "features" / "text.npy", half / np.linalg.norm(half, axis=1, keepdims=True))
    with pytest.raises(FedVLRError, match=r"vision\.npy and .*text\.npy: feature dimensions differ \(512 vs 256\)"):
        read_dataset(world)


def test_a_file_named_features_is_not_taken_for_no_features(world):
    shutil.rmtree(world / "features")
    (world / "features").write_text("not a folder")
    with pytest.raises(FedVLRError, match=r"World/features: is a file, expected the folder of vision\.npy"):
        read_dataset(world)


def test_checksums_that_are_not_an_object_are_named(world):
    meta = json.loads((world / "meta.json").read_text())
    (world / "meta.json").write_text(json.dumps(meta | {"checksums": ["interactions.parquet"]}))
    with pytest.raises(FedVLRError, match=r"meta\.json: 'checksums' must be an object"):
        read_dataset(world)


def test_unnormalised_features_are_rejected_on_load(world):
    np.save(world / "features" / "vision.npy", 2 * np.load(world / "features" / "vision.npy"))
    with pytest.raises(FedVLRError, match=r"features/vision\.npy: \d+ rows are not L2-normalised"):
        read_dataset(world)




# --- finding datasets by name -------------------------------------------------------------------


def test_prepared_folder_loads_by_name_and_known_names_ignore_case(tmp_path):
    write_world(tmp_path / "KU")
    assert load_dataset("ku", tmp_path).n_users == 300
    assert load_dataset("KU", tmp_path).meta["path"] == str(tmp_path / "KU")


def test_known_but_unprepared_dataset_says_how_to_get_it_and_offers_its_synthetic_twin(tmp_path):
    with pytest.raises(FedVLRError) as error:
        load_dataset("Movie", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for needle in ("not prepared", "NineRec", "Bili_Movie_pair.csv", "fedvlr-sim prepare --dataset Movie --raw PATH",
                   "--dataset synthetic:movie"):
        assert needle in message


def test_unknown_dataset_lists_known_names_and_presets(tmp_path):
    with pytest.raises(FedVLRError, match=r"unknown dataset 'Nope': known datasets are KU, Food, .*synthetic:tiny"):
        load_dataset("Nope", tmp_path)


def test_unknown_synthetic_preset_lists_presets(tmp_path):
    with pytest.raises(FedVLRError, match=r"unknown synthetic preset 'huge'.*tiny, ku, .*movie"):
        load_dataset("synthetic:huge", tmp_path)


def test_folder_without_meta_is_not_a_prepared_dataset(tmp_path):
    (tmp_path / "Half").mkdir()
    with pytest.raises(FedVLRError, match=r"Half: not a prepared dataset \(no meta\.json\)"):
        load_dataset("Half", tmp_path)


def test_every_known_dataset_has_table1_counts_a_source_and_a_synthetic_twin():
    assert list(KNOWN_DATASETS) == ["KU", "Food", "Dance", "Movie", "Beauty", "Cards", "ML"]
    for info in KNOWN_DATASETS.values():
        assert info.users > 0 and info.items > 0 and info.interactions > 0
        assert "http" in info.obtain and "\n" not in info.obtain
        assert info.preset in SYNTHETIC_PRESETS


def test_list_datasets_shows_known_and_other_prepared_folders(tmp_path):
    write_world(tmp_path / "KU")
    write_world(tmp_path / "Extra")
    (tmp_path / "Broken").mkdir()
    (tmp_path / "Broken" / "meta.json").write_text("{")
    entries = {e["name"]: e for e in list_datasets(tmp_path)}
    assert list(entries)[:7] == list(KNOWN_DATASETS)
    assert entries["KU"]["prepared"] and entries["KU"]["features"] == ["vision", "text"]
    assert entries["Extra"]["users"] == 300 and entries["Extra"]["obtain"] is None
    assert not entries["Movie"]["prepared"] and "Bili_Movie" in entries["Movie"]["obtain"]
    assert "not valid JSON" in entries["Broken"]["problem"]
