"""Reading raw input files: typed CSV columns, file look-up and image folders.

Every problem with the input becomes a one-line ``FedVLRError`` that names the file.
"""

from __future__ import annotations

import csv
import io
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
    name; ``header=False`` reads a file without header whose columns are exactly ``columns`` in
    order; ``header="auto"`` does the same but drops a first line that repeats the column names.
    Empty cells become nulls; a non-empty cell that does not parse as its type is an error, and
    so is a file without data rows.
    """
    require_file(path, expected)
    names = list(columns)
    table = _parse(path, header is True, separator, expected)
    first_line = 1 if header is True else 0
    if header is not True:
        if table.width != len(names):
            raise FedVLRError(f"{path}: {table.width} columns, expected {len(names)} ({expected})")
        table = table.rename(dict(zip(table.columns, names)))
        if header == "auto" and table.height and [str(v).strip().lower() for v in table.row(0)] == names:
            table, first_line = table.slice(1), 1
    for name in names:
        if name not in table.columns:
            raise FedVLRError(f"{path}: missing column '{name}' (expected {expected})")
    if table.height == 0:
        raise FedVLRError(f"{path}: no data rows (expected {expected})")
    table = table.select(names)
    return table.with_columns(_cast(table[name], kind, path, first_line) for name, kind in columns.items())


def require_file(path: Path, expected: str) -> None:
    """Raise unless ``path`` is a regular file (``expected`` describes it in the message)."""
    if path.is_file():
        return
    found = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "file not found"
    raise FedVLRError(f"{path}: {found} (expected {expected})")


def optional_file(path: Path, expected: str) -> Path | None:
    """``path`` when it is a regular file, None when nothing is there; anything else is an error."""
    if not path.exists():
        return None
    require_file(path, expected)
    return path


def _parse(path: Path, has_header: bool, separator: str, expected: str) -> pl.DataFrame:
    """Every cell of ``path`` as a string (invalid UTF-8 replaced), or a one-line error."""
    try:
        return pl.read_csv(path, has_header=has_header, separator=separator, infer_schema=False,
                           encoding="utf8-lossy")
    except pl.exceptions.NoDataError:
        raise FedVLRError(f"{path}: file is empty (expected {expected})") from None
    except (OSError, pl.exceptions.PolarsError) as exc:
        line = _ragged_line(path, separator)
        reason = (f"line {line} has more fields than the first line" if line
                  else str(exc).strip().splitlines()[0])
        raise FedVLRError(f"{path}: cannot parse as CSV ({reason}; expected {expected})") from None


def _ragged_line(path: Path, separator: str) -> int | None:
    """Number of the first line with more fields than the first line of ``path``, if there is one."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    width = None
    for row in reader:
        width = len(row) if width is None else width
        if len(row) > width:
            return reader.line_num
    return None


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


def first_line(path: Path) -> str:
    """The first line of the file ``path``, decoded as UTF-8 (invalid bytes replaced), without BOM."""
    with path.open("rb") as handle:
        return handle.readline().decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def sniff_separator(path: Path) -> str:
    """Tab when the first line of ``path`` contains a tab (MMRec ``.inter`` style), else comma."""
    return "\t" if path.is_file() and "\t" in first_line(path) else ","


def find_one(folders: list[Path], patterns: list[str], what: str, *, folder: bool = False) -> Path | None:
    """The single file (or, with ``folder=True``, folder) matching ``patterns``.

    Folders are searched in order, patterns in order within each; the first pattern with a match
    wins. Returns None when nothing matches; several matches for one pattern, or a match of the
    wrong kind (a folder where a file is expected, or the reverse), are errors.
    """
    kind = "a folder" if folder else "a file"
    for parent in folders:
        if not parent.is_dir():
            continue
        for pattern in patterns:
            hits = sorted(p for p in parent.glob(pattern) if not p.name.startswith("."))
            wrong = [p for p in hits if p.is_dir() != folder]
            if wrong:
                raise FedVLRError(f"{wrong[0]}: expected {kind} for {what}")
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
