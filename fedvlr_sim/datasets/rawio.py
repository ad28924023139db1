"""Reading raw input files: typed CSV columns, file look-up and image folders.

Every problem with the input becomes a one-line ``FedVLRError`` that names the file.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedvlr_sim.errors import FedVLRError

_DTYPES = {"int": pl.Int64, "float": pl.Float64, "str": pl.String}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_csv(
    path: Path,
    columns: dict[str, str],
    expected: str,
    *,
    header: bool | str = True,
    separator: str = ",",
) -> pl.DataFrame:
    """Read ``columns`` ({name: "int" | "float" | "str"}) from a CSV file, checking names and types.

    ``expected`` is the documented layout quoted in messages. ``header=True`` selects columns by
    name; ``header=False`` reads a file without header whose columns are ``columns`` in order;
    ``header="auto"`` does the same but drops a first line that repeats the column names.
    Empty cells become nulls; a non-empty cell that does not parse as its type is an error.
    """
    if not path.is_file():
        raise FedVLRError(f"{path}: file not found (expected {expected})")
    names = list(columns)
    try:
        table = pl.read_csv(
            path,
            has_header=header is True,
            new_columns=None if header is True else names,
            separator=separator,
            infer_schema=False,
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError:
        raise FedVLRError(f"{path}: file is empty (expected {expected})") from None
    except pl.exceptions.PolarsError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise FedVLRError(f"{path}: cannot parse as CSV ({reason}; expected {expected})") from None
    first_line = 1 if header is True else 0
    if header == "auto" and table.height and [str(v).strip().lower() for v in table.row(0)[: len(names)]] == names:
        table, first_line = table.slice(1), 1
    for name in names:
        if name not in table.columns:
            raise FedVLRError(f"{path}: missing column '{name}' (expected {expected})")
    table = table.select(names)
    return table.with_columns(_cast(table[name], kind, path, first_line) for name, kind in columns.items())


def _cast(column: pl.Series, kind: str, path: Path, first_line: int) -> pl.Series:
    """Cast a string column to ``kind``; the first unparsable value is reported with its line."""
    if kind == "str":
        return column
    cast = column.str.strip_chars().cast(_DTYPES[kind], strict=False)
    bad = cast.is_null() & column.is_not_null() & (column.str.strip_chars() != "")
    if bad.any():
        row = int(bad.arg_true()[0])
        raise FedVLRError(
            f"{path}: column '{column.name}' has non-{'integer' if kind == 'int' else 'numeric'} "
            f"value {column[row]!r} on line {row + 1 + first_line}"
        )
    return cast


def sniff_separator(path: Path) -> str:
    """Tab when the first line of ``path`` contains a tab (MMRec ``.inter`` style), else comma."""
    if not path.is_file():
        return ","
    with path.open("rb") as handle:
        return "\t" if b"\t" in handle.readline() else ","


def find_one(folders: list[Path], patterns: list[str], what: str, *, folder: bool = False) -> Path | None:
    """The single file (or, with ``folder=True``, folder) matching ``patterns``.

    Folders are searched in order, patterns in order within each; the first pattern with a match
    wins. Returns None when nothing matches; several matches for one pattern are an error.
    """
    for parent in folders:
        if not parent.is_dir():
            continue
        for pattern in patterns:
            hits = sorted(p for p in parent.glob(pattern) if p.is_dir() == folder and not p.name.startswith("."))
            if len(hits) > 1:
                names = ", ".join(p.name for p in hits)
                raise FedVLRError(f"{parent}: several candidates for {what} ({names}); keep only one")
            if hits:
                return hits[0]
    return None


def image_paths(folder: Path | None, raw_ids: pl.Series) -> pl.Series:
    """Absolute path of ``<folder>/<raw_id>.<jpg|jpeg|png|webp>`` per raw id, null where absent."""
    if folder is None:
        return pl.Series("image_path", [None] * len(raw_ids), dtype=pl.String)
    found = {
        p.stem: str(p.resolve())
        for p in sorted(folder.iterdir(), reverse=True)  # for one stem, JPEG wins over PNG and WebP
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }
    return raw_ids.replace_strict(found, default=None, return_dtype=pl.String).alias("image_path")
