"""Raw-format readers on small files written here, and every kind of bad raw input.

Each raw layout is written exactly as its source documents it (SPEC section 8), then prepared
with ``prepare_dataset`` and loaded back with ``load_dataset``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from fedvlr_sim.datasets import dataset_summary, load_dataset, prepare_dataset
from fedvlr_sim.errors import FedVLRError

# --- raw file writers ---------------------------------------------------------------------------


def grid(users: list, items: list) -> list[tuple]:
    """(user, item, timestamp): every user meets every item once, in list order, 10 s apart."""
    return [(u, i, 1_000 * a + 10 * b) for a, u in enumerate(users) for b, i in enumerate(items)]


def write_csv(path: Path, header: str | None, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_mmrec(folder: Path, n_users: int = 3, n_items: int = 4, dim: int = 8,
                header: str = "userID,itemID,rating,timestamp,split_label") -> Path:
    """A valid MMRec folder: user u sees items u, u+1, ... (mod n_items); splits train, train, valid, test."""
    splits = [0] * (n_items - 2) + [1, 2]
    rows = [(u, (u + k) % n_items, 1.0, 100 * u + k, splits[k]) for u in range(n_users) for k in range(n_items)]
    write_csv(folder / "inter.csv", header, rows)
    np.save(folder / "image_features.npy", unit_rows(n_items, dim, 1))
    np.save(folder / "text_features.npy", unit_rows(n_items, dim, 2))
    return folder


def prepare_and_load(name: str, raw: Path, data_dir: Path, fmt: str | None = None):
    prepare_dataset(name, raw, data_dir, fmt)
    return load_dataset(name, data_dir), pl.read_parquet(data_dir / name / "items.parquet")


def rows_of(ds, split: int) -> dict[int, int]:
    """user -> item of the given split (valid or test)."""
    mask = ds.split == split
    return dict(zip(ds.user[mask].tolist(), ds.item[mask].tolist()))


# --- NineRec ------------------------------------------------------------------------------------

NINEREC_ITEMS = ["9", "10", "100", "11", "2", "30"]  # numeric order: 2, 9, 10, 11, 30, 100
NINEREC_USERS = ["u3", "u1", "u2", "u5", "u4", "u6"]


def write_ninerec(raw: Path) -> Path:
    """A NineRec folder: a 6x6 grid plus a sparse user and a once-seen item that 5-core removes."""
    pairs = [(i, u, t) for u, i, t in grid(NINEREC_USERS, NINEREC_ITEMS)]
    pairs += [("9", "sparse", 5), ("10", "sparse", 6), ("777", "u1", 7)]
    pairs.append(pairs[0])  # an exact duplicate is dropped
    write_csv(raw / "Bili_Test_pair.csv", None, pairs)
    titles = [(i, f"中文{i}", f"Title {i}") for i in NINEREC_ITEMS if i != "30"] + [("30", "无", "")]
    write_csv(raw / "Bili_Test_item.csv", "item,cn_title,title", titles)
    write_image(raw / "Bili_Test_cover" / "9.jpg", (255, 0, 0))
    write_image(raw / "Bili_Test_cover" / "100.png", (0, 255, 0))
    return raw


@pytest.fixture
def ninerec_raw(tmp_path: Path) -> Path:
    return write_ninerec(tmp_path / "raw" / "Bili_Test")


def test_ninerec_is_5core_filtered_reindexed_in_numeric_id_order_and_split_in_time(ninerec_raw, tmp_path):
    ds, items = prepare_and_load("Toy", ninerec_raw, tmp_path / "data", fmt="ninerec")
    assert (ds.n_users, ds.n_items, len(ds.user)) == (6, 6, 36)
    steps = ds.meta["preprocessing"]
    assert (steps["duplicate_rows_dropped"], steps["rows_removed_by_k_core"]) == (1, 3)
    assert items["raw_id"].to_list() == ["2", "9", "10", "11", "30", "100"]
    users = pl.read_parquet(tmp_path / "data" / "Toy" / "users.parquet")["raw_id"].to_list()
    assert users == sorted(NINEREC_USERS)
    code = {raw_id: i for i, raw_id in enumerate(items["raw_id"])}
    assert set(rows_of(ds, 2).values()) == {code[NINEREC_ITEMS[-1]]}  # everyone's last item is test
    assert set(rows_of(ds, 1).values()) == {code[NINEREC_ITEMS[-2]]}


def test_ninerec_titles_and_cover_images_are_attached_by_item_id(ninerec_raw, tmp_path):
    _, items = prepare_and_load("Toy", ninerec_raw, tmp_path / "data", fmt="ninerec")
    by_id = {row["raw_id"]: row for row in items.iter_rows(named=True)}
    assert by_id["9"]["title"] == "Title 9"
    assert by_id["30"]["title"] is None
    assert Path(by_id["9"]["image_path"]) == (ninerec_raw / "Bili_Test_cover" / "9.jpg").resolve()
    assert Path(by_id["100"]["image_path"]).name == "100.png"
    assert by_id["2"]["image_path"] is None


def test_ninerec_folder_can_be_the_parent_of_the_known_dataset_folder(tmp_path):
    raw = tmp_path / "NineRec" / "Bili_Movie"
    write_csv(raw / "Bili_Movie_pair.csv", None, [(i, u, t) for u, i, t in grid(list("abcde"), list("vwxyz"))])
    write_csv(raw / "Bili_Movie_item.csv", None, [(i, "-", f"T{i}") for i in "vwxyz"])
    ds, items = prepare_and_load("Movie", tmp_path / "NineRec", tmp_path / "data")
    assert (ds.n_users, ds.n_items) == (5, 5)
    assert items["title"].to_list() == ["Tv", "Tw", "Tx", "Ty", "Tz"]


def test_equal_timestamps_keep_file_order_in_the_split(tmp_path):
    rows = grid(list("abcde"), list("vwxyz"))
    rows = [(u, i, 0) for u, i, _ in rows]  # all at the same time: file order decides
    raw = tmp_path / "raw"
    write_csv(raw / "pair.csv", None, [(i, u, t) for u, i, t in rows])
    write_csv(raw / "item.csv", None, [(i, "-", i) for i in "vwxyz"])
    ds, _ = prepare_and_load("Ties", raw, tmp_path / "data", fmt="ninerec")
    assert set(rows_of(ds, 2).values()) == {4} and set(rows_of(ds, 1).values()) == {3}


@pytest.mark.parametrize("header", [None, "user,item,timestamp"])
def test_ninerec_pairs_in_readme_order_are_told_apart_by_the_item_table_or_a_header(tmp_path, header):
    raw = tmp_path / "raw"
    write_csv(raw / "pair.csv", header, grid(NINEREC_USERS[:5], NINEREC_ITEMS[:5]))  # user,item,timestamp
    write_csv(raw / "item.csv", None, [(i, "-", f"T{i}") for i in NINEREC_ITEMS])
    ds, items = prepare_and_load("Readme", raw, tmp_path / "data", fmt="ninerec")
    assert items["raw_id"].to_list() == ["2", "9", "10", "11", "100"]
    assert pl.read_parquet(tmp_path / "data" / "Readme" / "users.parquet")["raw_id"].to_list() == ["u1", "u2", "u3",
                                                                                                   "u4", "u5"]


def test_ninerec_pairs_sharing_no_id_with_the_item_table_are_refused(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "pair.csv", None, [(i, u, t) for u, i, t in grid(list("abcde"), list("vwxyz"))])
    write_csv(raw / "item.csv", None, [(i, "-", i) for i in "VWXYZ"])
    with pytest.raises(FedVLRError, match=r"pair\.csv: none of its ids appears in .*item\.csv"):
        prepare_dataset("Apart", raw, tmp_path / "data", fmt="ninerec")


def test_ninerec_without_an_item_table_says_which_files_were_expected(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "KU_pair.csv", None, [(i, u, t) for u, i, t in grid(list("abcde"), list("vwxyz"))])
    with pytest.raises(FedVLRError, match=r"_item\.csv.*item,cn_title,title"):
        prepare_dataset("KU", raw, tmp_path / "data", fmt="ninerec")


# --- Amazon Reviews 2023 ------------------------------------------------------------------------

ASINS = ["B0E", "B0A", "B0D", "B0C", "B0B"]
AMAZON_USERS = ["AU2", "AU1", "AU3", "AU5", "AU4"]


def write_amazon(raw: Path) -> Path:
    """An Amazon folder: a 5x5 ratings grid, metadata for three of its items, two item images."""
    rows = [(u, i, 5.0, t) for u, i, t in grid(AMAZON_USERS, ASINS)]
    write_csv(raw / "Toy.5core.rating_only.csv", "user_id,parent_asin,rating,timestamp", rows)
    meta = [
        {"parent_asin": "B0A", "title": "Rose soap", "images": [{"large": "https://x/a.jpg", "hi_res": None}],
         "details": {"Brand": "X"}, "price": None},
        {"parent_asin": "B0B", "title": "Shampoo", "images": [{"large": None, "hi_res": "https://x/b.jpg"}]},
        {"parent_asin": "B0C", "title": None, "images": []},
        {"parent_asin": "OTHER", "title": "not in the ratings", "images": []},
    ]
    (raw / "meta_Toy.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    write_image(raw / "images" / "B0A.jpg", (0, 0, 255))
    write_image(raw / "images" / "B0D.png", (9, 9, 9))
    return raw


@pytest.fixture
def amazon_raw(tmp_path: Path) -> Path:
    return write_amazon(tmp_path / "amazon")


def test_amazon_folder_gives_titles_urls_and_images_per_parent_asin(amazon_raw, tmp_path):
    ds, items = prepare_and_load("Shop", amazon_raw, tmp_path / "data", fmt="amazon")
    assert (ds.n_users, ds.n_items, len(ds.user)) == (5, 5, 25)
    assert items["raw_id"].to_list() == sorted(ASINS)
    assert items["title"].to_list() == ["Rose soap", "Shampoo", None, None, None]
    assert items["image_url"].to_list() == ["https://x/a.jpg", "https://x/b.jpg", None, None, None]
    assert [p and Path(p).name for p in items["image_path"]] == ["B0A.jpg", None, None, "B0D.png", None]
    assert ds.timestamp.dtype == np.int64


def test_amazon_raw_may_be_the_csv_file_itself(amazon_raw, tmp_path):
    ds, items = prepare_and_load("Shop", amazon_raw / "Toy.5core.rating_only.csv", tmp_path / "data", fmt="amazon")
    assert ds.n_items == 5 and items["title"].is_not_null().sum() == 2


def test_amazon_image_url_is_the_first_image_with_one_preferring_large_then_hi_res_then_thumb(amazon_raw, tmp_path):
    images = {"B0A": [{"large": None, "hi_res": None}, {"large": "L2", "hi_res": "H2"}],
              "B0B": [{"hi_res": "H", "thumb": "T"}], "B0C": [{"thumb": "T", "variant": "MAIN"}]}
    lines = [{"parent_asin": asin, "images": urls} for asin, urls in images.items()]
    (amazon_raw / "meta_Toy.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, items = prepare_and_load("Shop", amazon_raw, tmp_path / "data", fmt="amazon")
    assert items["image_url"].to_list()[:3] == ["L2", "H", "T"]


def test_amazon_summary_gives_the_shares_of_items_with_a_title_and_an_image(amazon_raw, tmp_path):
    ds, _ = prepare_and_load("Shop", amazon_raw, tmp_path / "data", fmt="amazon")
    summary = dataset_summary(ds)
    assert (summary["items_with_title"], summary["items_with_image"]) == (0.4, 0.4)


@pytest.mark.parametrize("text, problem", [('{"parent_asin": "B0A", \n', "cannot parse as JSON lines"),
                                           ("", "no JSON lines")])
def test_amazon_metadata_that_is_not_json_lines_is_named(amazon_raw, tmp_path, text, problem):
    (amazon_raw / "meta_Toy.jsonl").write_text(text)
    with pytest.raises(FedVLRError, match=rf"meta_Toy\.jsonl: {problem}"):
        prepare_dataset("Shop", amazon_raw, tmp_path / "data", fmt="amazon")


def test_a_file_where_a_folder_is_expected_is_named(amazon_raw, tmp_path):
    shutil.rmtree(amazon_raw / "images")
    (amazon_raw / "images").write_text("not a folder")
    with pytest.raises(FedVLRError, match=r"amazon/images: expected a folder for the item images"):
        prepare_dataset("Shop", amazon_raw, tmp_path / "data", fmt="amazon")


# --- MovieLens and MMRec ------------------------------------------------------------------------


ML_USERS = [3, 1, 2, 5, 4]
ML_MOVIES = [50, 7, 300, 12, 9]


def write_movielens(folder: Path) -> Path:
    """A MovieLens folder: a 5x5 ratings grid and titles for two of its movies."""
    rows = [(u, i, 4.0, t) for u, i, t in grid(ML_USERS, ML_MOVIES)]
    write_csv(folder / "ratings.csv", "userId,movieId,rating,timestamp", rows)
    write_csv(folder / "movies.csv", "movieId,title,genres",
              [(7, "Heat (1995)", "Action"), (9, '"Sabrina, Again (1995)"', "Comedy")])
    return folder


def test_movielens_counts_every_rating_and_takes_titles_from_movies_csv(tmp_path):
    raw = write_movielens(tmp_path / "ml-latest-small")
    with (raw / "ratings.csv").open("a") as ratings:
        ratings.write(",7,4.0,99\n")  # no user: dropped
    ds, items = prepare_and_load("ML", tmp_path, tmp_path / "data")  # the parent of ml-latest-small/ works too
    assert (ds.n_users, ds.n_items, len(ds.user)) == (5, 5, 25)
    assert ds.meta["preprocessing"]["rows_missing_user_or_item"] == 1
    assert items["raw_id"].to_list() == ["7", "9", "12", "50", "300"]
    assert items["title"].to_list()[:3] == ["Heat (1995)", "Sabrina, Again (1995)", None]


def test_mmrec_keeps_ids_split_and_features(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    ds, items = prepare_and_load("Mine", raw, tmp_path / "data")  # a folder with inter.csv is MMRec
    assert (ds.n_users, ds.n_items, len(ds.user)) == (3, 4, 12)
    assert rows_of(ds, 2) == {0: 3, 1: 0, 2: 1}
    assert np.allclose(ds.vision, np.load(raw / "image_features.npy").astype(np.float32), atol=2e-3)
    assert ds.vision.dtype == np.float32 and ds.meta["source"]["format"] == "mmrec"
    assert items["raw_id"].to_list() == ["0", "1", "2", "3"]


def test_mmrec_mapping_files_give_raw_ids(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    write_csv(raw / "i_id_mapping.csv", "asin,itemID", [("d", 3), ("a", 0), ("c", 2), ("b", 1)])
    write_csv(raw / "u_id_mapping.csv", "user_id,userID", [(95, 0), (98, 1), (108, 2)])
    _, items = prepare_and_load("Mine", raw, tmp_path / "data", fmt="mmrec")
    assert items["raw_id"].to_list() == ["a", "b", "c", "d"]
    assert pl.read_parquet(tmp_path / "data" / "Mine" / "users.parquet")["raw_id"].to_list() == ["95", "98", "108"]


def test_mmrec_exact_duplicate_rows_are_dropped_and_counted(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    lines = (raw / "inter.csv").read_text().splitlines()
    (raw / "inter.csv").write_text("\n".join(lines + [lines[1], lines[1]]) + "\n")
    ds, _ = prepare_and_load("Mine", raw, tmp_path / "data")
    assert len(ds.user) == 12 and ds.meta["preprocessing"]["duplicate_rows_dropped"] == 2


def test_mmrec_tab_separated_inter_file_is_read(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    (raw / "inter.csv").write_text((raw / "inter.csv").read_text().replace(",", "\t"))
    ds, _ = prepare_and_load("Mine", raw, tmp_path / "data")
    assert len(ds.user) == 12


# --- bad input: one test per case, the message names the file or option -------------------------


def test_missing_file_is_named(tmp_path):
    (tmp_path / "ml").mkdir()
    with pytest.raises(FedVLRError, match=r"no ratings\.csv"):
        prepare_dataset("ML", tmp_path / "ml", tmp_path / "data")


def test_missing_raw_path_is_named(tmp_path):
    with pytest.raises(FedVLRError, match=r"--raw .*nowhere: no such file"):
        prepare_dataset("ML", tmp_path / "nowhere", tmp_path / "data")


def test_missing_column_is_named_with_the_expected_header(tmp_path):
    raw = write_mmrec(tmp_path / "KU", header="userID,itemID,rating,time,split_label")
    expected = "inter.csv: missing column 'timestamp' (expected userID,itemID,rating,timestamp,split_label)"
    with pytest.raises(FedVLRError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        prepare_dataset("KU", raw, tmp_path / "data", fmt="mmrec")


def test_non_numeric_ids_are_named_with_column_value_and_line(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    lines = (raw / "ratings.csv").read_text().splitlines()
    lines[3] = "abc" + lines[3][1:]
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FedVLRError, match=r"ratings\.csv: column 'userId' has non-integer value 'abc' on line 4"):
        prepare_dataset("ML", raw, tmp_path / "data")


def test_mmrec_split_labels_other_than_0_1_2_are_named_with_their_line(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    with (raw / "inter.csv").open("a") as inter:
        inter.write("0,1,1.0,5,256\n")  # 256 must not wrap around to 0 (train)
    with pytest.raises(FedVLRError, match=r"inter\.csv: column 'split_label' has value 256 on line 14"):
        prepare_dataset("Mine", raw, tmp_path / "data")


def test_modalities_must_have_the_same_dimension(tmp_path):
    raw = write_mmrec(tmp_path / "mm")
    np.save(raw / "text_features.npy", unit_rows(4, 6))
    with pytest.raises(FedVLRError, match=r"image_features\.npy and .*text_features\.npy: feature dimensions differ"):
        prepare_dataset("Mine", raw, tmp_path / "data")


def test_nothing_left_after_5core_is_an_error_naming_the_file(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "Bili_Food_pair.csv", None, [(i, u, t) for u, i, t in grid(list("abc"), list("vwxyz"))])
    write_csv(raw / "Bili_Food_item.csv", None, [(i, "-", i) for i in "vwxyz"])
    with pytest.raises(FedVLRError, match=r"Bili_Food_pair\.csv: no interactions left after the 5-core filter"):
        prepare_dataset("Food", raw, tmp_path / "data")


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(FedVLRError, match=r"--format 'parquet': expected one of mmrec, ninerec, amazon, movielens"):
        prepare_dataset("Mine", write_mmrec(tmp_path / "mm"), tmp_path / "data", fmt="parquet")


def test_unknown_name_without_format_asks_for_one(tmp_path):
    with pytest.raises(FedVLRError, match=r"--dataset Mine: not a known dataset .*--format"):
        prepare_dataset("Mine", write_movielens(tmp_path / "ml"), tmp_path / "data")


# --- writing is atomic --------------------------------------------------------------------------


def test_failed_prepare_keeps_the_existing_dataset_and_leaves_no_temporary_folder(tmp_path):
    data = tmp_path / "data"
    prepare_dataset("Mine", write_mmrec(tmp_path / "good"), data)
    broken = write_mmrec(tmp_path / "broken")
    np.save(broken / "text_features.npy", unit_rows(3, 8))
    with pytest.raises(FedVLRError, match="text_features.npy"):
        prepare_dataset("Mine", broken, data, replace=True)
    assert load_dataset("Mine", data).n_items == 4
    assert [p.name for p in data.iterdir()] == ["Mine"]


def test_preparing_a_prepared_dataset_again_needs_replace_and_names_what_it_would_delete(tmp_path):
    data = tmp_path / "data"
    prepare_dataset("Mine", write_mmrec(tmp_path / "small"), data)
    (data / "Mine" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (data / "Mine").rglob("*"))
    with pytest.raises(FedVLRError, match=r"--dataset Mine: .*Mine is already prepared and holds .*notes\.txt.*--replace"):
        prepare_dataset("Mine", write_mmrec(tmp_path / "large", n_users=5, n_items=6), data)
    assert sorted(p.name for p in (data / "Mine").rglob("*")) == before


def test_preparing_again_with_replace_replaces_the_dataset(tmp_path):
    data = tmp_path / "data"
    prepare_dataset("Mine", write_mmrec(tmp_path / "small"), data)
    prepare_dataset("Mine", write_mmrec(tmp_path / "large", n_users=5, n_items=6), data, replace=True)
    assert (load_dataset("Mine", data).n_users, load_dataset("Mine", data).n_items) == (5, 6)
    assert [p.name for p in data.iterdir()] == ["Mine"]
