"""``prepare``: raw files of any supported format to the canonical folder, written atomically."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fedvlr_sim.datasets.canonical import INTERACTIONS, ITEMS, META, USERS, read_dataset, write_prepared
from fedvlr_sim.datasets.formats import READERS
from fedvlr_sim.datasets.registry import KNOWN_DATASETS, known
from fedvlr_sim.errors import FedVLRError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prepare_dataset(name: str, raw: Path, data_dir: Path, fmt: str | None = None, replace: bool = False) -> Path:
    """Read ``raw`` and write ``data_dir/<name>/`` in canonical form; return that folder.

    ``fmt`` (mmrec, ninerec, amazon, movielens) defaults to the known dataset's format; a folder
    with ``inter.csv`` is read as MMRec layout. The result is written to a temporary folder,
    read back and validated, and only then replaces an existing ``data_dir/<name>``, which
    takes ``replace`` (the folder is replaced whole: features embedded since are gone).
    """
    info = known(name)
    name = info.name if info else name
    if not _NAME.fullmatch(name):
        raise FedVLRError(f"--dataset {name!r}: a prepared dataset name may use letters, digits, '_', '-', '.'")
    dest = Path(data_dir) / name
    if dest.exists() and not replace:
        raise FedVLRError(f"--dataset {name}: {dest} is already prepared{_contents_note(dest)}; pass --replace to "
                          "prepare it again (the folder is replaced whole)")
    raw = Path(raw).expanduser()
    if not raw.exists():
        raise FedVLRError(f"--raw {raw}: no such file or folder")
    reader = READERS[_format(name, raw, fmt)]
    prepared = reader(raw, name, info.source_name if info else None)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".{name}.preparing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_prepared(prepared, staging)
        read_dataset(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _install(staging, dest)


def _contents_note(folder: Path) -> str:
    """Names of what `folder` holds beyond the files `prepare` writes (features embedded by
    `fedvlr-sim features`, files of the user's), as a clause for an error message."""
    written = {INTERACTIONS, ITEMS, USERS, META}
    others = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in written)
    if not others:
        return ""
    shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
    return f" and holds {shown}"


def _format(name: str, raw: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in READERS:
            raise FedVLRError(f"--format {fmt!r}: expected one of {', '.join(READERS)}")
        return fmt
    if (raw / "inter.csv").is_file():
        return "mmrec"
    info = known(name)
    if info is None:
        raise FedVLRError(
            f"--dataset {name}: not a known dataset ({', '.join(KNOWN_DATASETS)}); "
            f"pass --format ({', '.join(READERS)}) to prepare other data"
        )
    return info.fmt


def _install(staging: Path, dest: Path) -> Path:
    """Put ``staging`` at ``dest``; an existing ``dest`` is removed only once the swap is done."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
