"""Bad input to `fedvlr-sim prepare` and `fedvlr-sim features` ends in one `error:` line and exit 2.

The command-line cases run the installed console script on raw folders that are valid but for one
defect, and check the whole contract: exit code 2; stderr is exactly one line, starting with
`error:` and naming the broken file or option; no traceback anywhere; --data-dir exactly as it
was. `prepare` runs under a 4 GiB address-space limit, so turning a raw id like 999999999 into an
array of that length (8 GiB) fails the test at once. Feature-array defects are checked in-process
for both sources (an MMRec folder and a prepared dataset), and property-based tests feed the
raw-file readers arbitrary files: each one prepares a valid dataset or raises FedVLRError.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_datasets_raw_formats import (AMAZON_USERS, ASINS, ML_MOVIES, ML_USERS, NINEREC_ITEMS, NINEREC_USERS,
                                       unit_rows, write_amazon, write_mmrec, write_movielens, write_ninerec)

from fedvlr_sim.config import resolve
from fedvlr_sim.datasets import load_dataset, prepare_dataset
from fedvlr_sim.engine.simulation import features_of
from fedvlr_sim.errors import FedVLRError

CLI = Path(sys.executable).parent / "fedvlr-sim"
PREPARE_ADDRESS_SPACE = 4 << 30  # bytes; `prepare` with 2 polars threads needs about 1.5 GiB
HUGE_ID = 999_999_999
FUZZ = settings(max_examples=30, deadline=None, database=None, derandomize=True)


@dataclass(frozen=True)
class Layout:
    """A raw format: a writer of a valid example folder and the shape of its interactions file."""

    fmt: str
    write: Callable[[Path], Path]  # writes the example folder at the given path and returns it
    interactions: str  # the interactions file in that folder
    columns: str  # the interactions file's column names (NineRec's file has no header line)
    row: str  # one interactions row, with {user}, {item} and {timestamp} slots
    users: list  # raw ids of the example
    items: list


MMREC = Layout("mmrec", write_mmrec, "inter.csv", "userID,itemID,rating,timestamp,split_label",
               "{user},{item},1.0,{timestamp},0", [0, 1, 2], [0, 1, 2, 3])
MOVIELENS = Layout("movielens", write_movielens, "ratings.csv", "userId,movieId,rating,timestamp",
                   "{user},{item},4.0,{timestamp}", ML_USERS, ML_MOVIES)
AMAZON = Layout("amazon", write_amazon, "Toy.5core.rating_only.csv", "user_id,parent_asin,rating,timestamp",
                "{user},{item},5.0,{timestamp}", AMAZON_USERS, ASINS)
NINEREC = Layout("ninerec", write_ninerec, "Bili_Test_pair.csv", "item,user,timestamp",
                 "{item},{user},{timestamp}", NINEREC_USERS, NINEREC_ITEMS)
LAYOUTS = [pytest.param(layout, id=layout.fmt) for layout in (MMREC, MOVIELENS, AMAZON, NINEREC)]


# --- running the console script ------------------------------------------------------------------


def run_cli(*args: str, address_space: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`fedvlr-sim *args` in a subprocess, offline, optionally under an address-space limit in bytes."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"} | (env or {}),
                          preexec_fn=limit_memory if address_space else None)


def prepare_cli(raw: Path, layout: Layout, data_dir: Path) -> subprocess.CompletedProcess:
    """`fedvlr-sim prepare` of ``raw`` in ``layout``'s format as dataset "Broken", in bounded memory.

    Polars reserves address space per thread, so its thread count is fixed to keep the bound the
    same on machines with many cores.
    """
    return run_cli("prepare", "--dataset", "Broken", "--raw", str(raw), "--format", layout.fmt,
                   "--data-dir", str(data_dir), address_space=PREPARE_ADDRESS_SPACE, env={"POLARS_MAX_THREADS": "2"})


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def refusal(command: Callable[[], subprocess.CompletedProcess], data_dir: Path) -> str:
    """Run ``command``, check it was refused as the module says, and return its one stderr line."""
    data_dir.mkdir(exist_ok=True)
    before = contents(data_dir)
    result = command()
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert contents(data_dir) == before, "the failed command left something behind"
    return lines[0]


# --- broken raw files, through the command line ----------------------------------------------------


def append_row(path: Path, layout: Layout, **fields) -> None:
    """Append one interactions row; a field given as "\\udcff" and the like becomes that raw byte."""
    row = layout.row.format(**{"user": layout.users[0], "item": layout.items[0], "timestamp": 7} | fields)
    with path.open("ab") as handle:
        handle.write(row.encode("utf-8", "surrogateescape") + b"\n")


def header_only(path: Path, layout: Layout) -> None:
    path.write_text(layout.columns + "\n")


def row_with_a_surplus_field(path: Path, layout: Layout) -> None:
    append_row(path, layout, timestamp="7,surplus")


def timestamp_in_non_utf8_bytes(path: Path, layout: Layout) -> None:
    append_row(path, layout, timestamp="\udcff\udcfe")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("defect, problem", [(header_only, "no data rows"),
                                             (row_with_a_surplus_field, "has more fields than the first line"),
                                             (timestamp_in_non_utf8_bytes, "column 'timestamp' has non-integer")])
def test_broken_interactions_file_is_one_error_line_naming_it(layout, defect, problem, tmp_path):
    raw = layout.write(tmp_path / "raw")
    defect(raw / layout.interactions, layout)
    line = refusal(lambda: prepare_cli(raw, layout, tmp_path / "data"), tmp_path / "data")
    assert str(raw / layout.interactions) in line and problem in line


def test_mmrec_user_id_far_beyond_the_others_is_refused_without_an_array_that_long(tmp_path):
    raw = write_mmrec(tmp_path / "raw")
    append_row(raw / "inter.csv", MMREC, user=HUGE_ID)
    line = refusal(lambda: prepare_cli(raw, MMREC, tmp_path / "data"), tmp_path / "data")
    assert f"{raw / 'inter.csv'}: {HUGE_ID - 3} user ids have no interactions" in line


@pytest.mark.parametrize("layout", [MOVIELENS, AMAZON, NINEREC], ids=lambda layout: layout.fmt)
def test_raw_ids_near_a_billion_are_reindexed_without_an_array_that_long(layout, tmp_path):
    raw = layout.write(tmp_path / "raw")
    for k in range(5):  # one more user and one more item, each with 5 interactions: both survive the 5-core
        append_row(raw / layout.interactions, layout, user=HUGE_ID, item=layout.items[k], timestamp=100 + k)
        append_row(raw / layout.interactions, layout, user=layout.users[k], item=HUGE_ID, timestamp=200 + k)
    result = prepare_cli(raw, layout, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    for table in ("users", "items"):
        raw_ids = pl.read_parquet(tmp_path / "data" / "Broken" / f"{table}.parquet")["raw_id"]
        assert str(HUGE_ID) in raw_ids.to_list()


def test_mmrec_feature_file_that_is_a_folder_is_one_error_line_naming_it(tmp_path):
    raw = write_mmrec(tmp_path / "raw")
    (raw / "image_features.npy").unlink()
    (raw / "image_features.npy").mkdir()
    line = refusal(lambda: prepare_cli(raw, MMREC, tmp_path / "data"), tmp_path / "data")
    assert f"{raw / 'image_features.npy'}: is a folder" in line


def test_ninerec_folder_without_item_table_is_one_error_line_naming_the_expected_file(tmp_path):
    raw = write_ninerec(tmp_path / "raw")
    (raw / "Bili_Test_item.csv").unlink()
    line = refusal(lambda: prepare_cli(raw, NINEREC, tmp_path / "data"), tmp_path / "data")
    assert f"{raw}: no *_item.csv, item.csv, items.csv found" in line


def test_features_offline_without_cached_weights_is_one_error_line_naming_the_option(tmp_path):
    prepare_dataset("ML", write_movielens(tmp_path / "raw"), tmp_path / "data")
    line = refusal(lambda: run_cli("features", "--dataset", "ML", "--data-dir", str(tmp_path / "data"),
                                   env={"HF_HOME": str(tmp_path / "empty-hf-home")}), tmp_path / "data")
    assert line.startswith("error: --model ViT-B-32 --pretrained openai: cannot load CLIP (HF_HUB_OFFLINE is set")


# --- broken feature arrays, in-process, from both sources ------------------------------------------


def saved(make: Callable[[int], np.ndarray]) -> Callable[[Path, int], None]:
    """A writer of the .npy file holding ``make(n_items)`` (pickled when it holds objects)."""
    def write(path: Path, n_items: int) -> None:
        with path.open("wb") as handle:
            np.save(handle, make(n_items), allow_pickle=True)
    return write


def with_nan(n_items: int) -> np.ndarray:
    rows = unit_rows(n_items, 8)
    rows[1, 2] = np.nan
    return rows


def npz_archive(path: Path, n_items: int) -> None:
    with path.open("wb") as handle:
        np.savez(handle, features=unit_rows(n_items, 8))


FEATURE_DEFECTS = [
    pytest.param(saved(lambda n: unit_rows(n, 8)[0]), "shape (8,), expected (4, dim)", id="1-D"),
    pytest.param(saved(lambda n: np.full((n, 8), "0.35")), "dtype <U4, expected a floating-point array",
                 id="strings"),
    pytest.param(saved(lambda n: np.full((n, 8), 0.35, dtype=object)), "cannot read as a .npy array",
                 id="objects"),
    pytest.param(saved(lambda n: unit_rows(n, 8).astype(np.complex64)), "dtype complex64, expected a floating",
                 id="complex"),
    pytest.param(saved(lambda n: np.zeros((0, 8), np.float32)), "shape (0, 8), expected (4, dim)", id="zero-rows"),
    pytest.param(saved(lambda n: unit_rows(n + 1, 8)), "shape (5, 8), expected (4, dim)", id="one-row-too-many"),
    pytest.param(saved(with_nan), "non-finite values (NaN or inf), first in row 1", id="NaN"),
    pytest.param(saved(lambda n: unit_rows(n, 8).astype(np.float32) * 1e30),
                 "4 rows are not L2-normalised (row 0 has norm 1e+30)", id="huge-rows"),
    pytest.param(lambda path, n: path.write_bytes(b""), "empty file", id="zero-bytes"),
    pytest.param(lambda path, n: path.mkdir(), "is a folder", id="folder"),
    pytest.param(npz_archive, "an .npz archive, expected a .npy array", id="npz"),
]


def mmrec_features(tmp_path: Path) -> tuple[Path, Callable[[], object]]:
    """An MMRec folder's image features file, and preparing that folder."""
    raw = write_mmrec(tmp_path / "raw")
    return raw / "image_features.npy", lambda: prepare_dataset("Broken", raw, tmp_path / "data", "mmrec")


def prepared_features(tmp_path: Path) -> tuple[Path, Callable[[], object]]:
    """A prepared dataset's text features file, and loading that dataset."""
    prepare_dataset("Broken", write_mmrec(tmp_path / "raw"), tmp_path / "data")
    return tmp_path / "data" / "Broken" / "features" / "text.npy", lambda: load_dataset("Broken", tmp_path / "data")


@pytest.mark.filterwarnings("error::RuntimeWarning")   # the error line alone, no numpy warning before it
@pytest.mark.parametrize("source", [mmrec_features, prepared_features], ids=["mmrec-folder", "prepared-dataset"])
@pytest.mark.parametrize("write_broken, problem", FEATURE_DEFECTS)
def test_broken_feature_array_is_refused_naming_the_file(source, write_broken, problem, tmp_path):
    path, load = source(tmp_path)
    path.unlink()
    write_broken(path, 4)
    with pytest.raises(FedVLRError) as error:
        load()
    assert str(error.value).startswith(f"{path}: {problem}")


def test_a_fusion_run_on_a_dataset_that_lost_one_feature_file_names_that_file(tmp_path):
    path, load = prepared_features(tmp_path)
    path.unlink()
    with pytest.raises(FedVLRError, match=r"has no features/text\.npy beside features/vision\.npy: restore it"):
        features_of(load(), resolve([(None, {"variant": "ours"})]))


# --- property-based: any raw file prepares a valid dataset or raises FedVLRError -------------------

ANY_FIELD = st.one_of(
    st.integers(-2, 9).map(str),
    st.sampled_from(["", " ", "1.5", "1e9", "nan", str(HUGE_ID), str(2**63), '"', '"a,b"', "x,y", "\t"]),
    st.text(max_size=5),
    st.binary(max_size=3).map(lambda raw: raw.decode("utf-8", "surrogateescape")),  # any bytes, UTF-8 or not
)
EDITS = st.lists(st.tuples(st.sampled_from(["replace a field", "replace a field", "drop", "repeat", "cut"]),
                           st.integers(0, 99), st.integers(0, 9), ANY_FIELD), max_size=4)
FILES_TO_EDIT = {  # per format: its interactions file and the file beside it that it reads
    "mmrec": ["inter.csv", "i_id_mapping.csv"],
    "movielens": ["ratings.csv", "movies.csv"],
    "amazon": ["Toy.5core.rating_only.csv", "meta_Toy.jsonl"],
    "ninerec": ["Bili_Test_pair.csv", "Bili_Test_item.csv"],
}
MMREC_ITEM_MAPPING = "asin,itemID\nd,3\na,0\nc,2\nb,1\n"


def edited(text: str, edits: list[tuple[str, int, int, str]]) -> bytes:
    """``text`` with each edit applied to its line number ``row`` (modulo the line count) in turn.

    An edit replaces the comma-separated field ``column`` (modulo the field count) by ``value``,
    drops or repeats the line, or cuts the file before it.
    """
    lines = text.splitlines()
    for action, row, column, value in edits:
        if not lines:
            break
        row %= len(lines)
        if action == "replace a field":
            fields = lines[row].split(",")
            fields[column % len(fields)] = value
            lines[row] = ",".join(fields)
        elif action == "drop":
            del lines[row]
        elif action == "repeat":
            lines.insert(row, lines[row])
        else:
            lines = lines[:row]
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def unit_float_arrays() -> st.SearchStrategy[np.ndarray]:
    """(4, 8) float arrays with rows scaled to unit length (all-zero rows stay zero)."""
    arrays = hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), (4, 8),
                        elements=st.floats(-100, 100, width=16))
    return arrays.map(lambda x: x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), 1e-3))


def npy_files() -> st.SearchStrategy[bytes]:
    """.npy files of any array (any dtype, 0-3 dimensions) or of unit rows, and arbitrary bytes."""
    any_arrays = hnp.arrays(dtype=hnp.scalar_dtypes() | hnp.array_dtypes(max_size=2),
                            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    npy_magic = np.lib.format.magic(1, 0)
    return st.one_of((any_arrays | unit_float_arrays()).map(npy_bytes), st.binary(max_size=64),
                     st.binary(max_size=64).map(lambda tail: npy_magic + tail))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def prepares_or_refuses(layout: Layout, change: Callable[[Path], None]) -> None:
    """Write ``layout``'s example, ``change`` it, prepare it: a valid dataset or one-line FedVLRError only."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, data_dir = layout.write(Path(tmp) / "raw"), Path(tmp) / "data"
        change(raw)
        try:
            prepare_dataset("Fuzz", raw, data_dir, layout.fmt)
        except FedVLRError as error:
            assert "\n" not in str(error)
            assert not data_dir.exists() or not any(data_dir.iterdir())
        else:
            load_dataset("Fuzz", data_dir)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which", [0, 1], ids=["interactions", "beside-it"])
@FUZZ
@given(edits=EDITS)
def test_any_edit_of_a_raw_file_prepares_a_valid_dataset_or_raises_fedvlr_error(layout, which, edits):
    def edit(raw: Path) -> None:
        path = raw / FILES_TO_EDIT[layout.fmt][which]
        path.write_bytes(edited(path.read_text() if path.exists() else MMREC_ITEM_MAPPING, edits))

    prepares_or_refuses(layout, edit)


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")  # numpy's note on structured dtypes
@FUZZ
@given(content=npy_files())
def test_any_mmrec_feature_file_prepares_a_valid_dataset_or_raises_fedvlr_error(content):
    prepares_or_refuses(MMREC, lambda raw: (raw / "image_features.npy").write_bytes(content))
