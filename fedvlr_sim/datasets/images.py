"""Download the item images of an Amazon 2023 dataset into its raw folder, resumably.

One image per item of the ratings CSV, from the URL that ``formats.amazon.read_metadata`` picks
(the item's first image with a URL: ``large``, else ``hi_res``, else ``thumb``). Each image is
checked with Pillow and written as ``images/<parent_asin>.<jpg|png|webp>`` next to the CSV (the
suffix of its format), where ``prepare`` looks for it. Bytes go to ``.<parent_asin>.part`` first
and are renamed, so an interrupted run never leaves a partial file under an image name; a run
skips items that already have a complete image. Timeouts, connection errors, HTTP 429 and 5xx
are retried with exponential backoff; other HTTP errors are not.
"""

from __future__ import annotations

import http.client
import io
import math
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import polars as pl
from PIL import Image

from fedvlr_sim.datasets.formats import amazon
from fedvlr_sim.datasets.rawio import find_one, image_paths, read_csv, require_file
from fedvlr_sim.datasets.registry import known
from fedvlr_sim.errors import FedVLRError

DOWNLOADED, SKIPPED = "downloaded", "skipped_existing"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}  # image formats ``prepare`` reads
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # raw ids usable as file names
USER_AGENT = "fedvlr-sim (item image download)"
METADATA = "Amazon 2023 item metadata JSON lines (parent_asin, images with large/hi_res URLs)"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Policy:
    """How one image is fetched: retries after the first try, per-request timeout, first backoff,
    and the event that cuts backoffs short once the run is stopped."""

    retries: int
    timeout_s: float
    backoff_s: float
    cancelled: threading.Event


class _Failure(Exception):
    """An image that could not be had; ``reason`` is its key in the summary's failures."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason, self.transient = reason, transient


def download_images(
    name: str,
    raw: Path,
    metadata: Path | None = None,
    *,
    workers: int = 8,
    retries: int = 3,
    timeout_s: float = 20.0,
    backoff_s: float = 1.0,
    progress: Progress | None = None,
) -> dict:
    """Download one image per item of the Amazon dataset ``name`` whose ratings CSV is (in) ``raw``.

    ``metadata`` defaults to the ``meta_*.jsonl[.gz]`` next to the CSV; ``workers`` parallel
    downloads; ``retries`` per image after the first try, waiting ``backoff_s``, then twice as
    long each time; ``progress(done, total)`` is called as items finish. Returns items,
    downloaded, skipped_existing, failed, failures ({reason: count}), folder and metadata.
    Failure reasons: no_url, unsafe_id, bad_url, http_<status>, timeout, connection_error,
    not_an_image, unsupported_format (neither JPEG, PNG nor WebP).
    """
    _check_options(workers, retries, timeout_s, backoff_s)
    csv = amazon.ratings_csv(Path(raw).expanduser(), _category(name))
    items = read_csv(csv, {"parent_asin": "str"}, amazon.EXPECTED)["parent_asin"].drop_nulls().unique().sort()
    meta_path = _metadata_path(csv, metadata)
    urls = _image_urls(meta_path, items, csv)
    folder = _writable_image_folder(csv.parent)
    existing = dict(zip(items, image_paths(folder, items)))
    policy = _Policy(retries, timeout_s, backoff_s, threading.Event())
    tasks = [partial(_ensure_image, folder, item, urls.get(item), existing[item], policy) for item in items]
    outcomes = _run_all(tasks, workers, progress, policy.cancelled)
    return _summary(outcomes, folder, meta_path)


def _check_options(workers: int, retries: int, timeout_s: float, backoff_s: float) -> None:
    """Raise FedVLRError naming the first option out of its range (by its command-line name)."""
    for option, value, ok, expected in (("--workers", workers, workers >= 1, "at least 1"),
                                        ("--retries", retries, retries >= 0, "at least 0"),
                                        ("--timeout", timeout_s, 0 < timeout_s < math.inf, "more than 0 seconds, finite"),
                                        ("--backoff", backoff_s, 0 <= backoff_s < math.inf, "at least 0 seconds, finite")):
        if not ok:
            raise FedVLRError(f"{option} {value}: expected {expected}")


def _category(name: str) -> str | None:
    """The Amazon category of the known dataset ``name`` (None for other names); others are refused."""
    info = known(name)
    if info is not None and info.fmt != "amazon":
        raise FedVLRError(f"--dataset {info.name}: image download is for the Amazon 2023 datasets "
                          f"(Beauty, Cards); {info.name} is in {info.fmt} format")
    return info.source_name if info else None


def _metadata_path(csv: Path, metadata: Path | None) -> Path:
    """The metadata file given, or the one next to ``csv``; its absence is an error."""
    if metadata is not None:
        path = Path(metadata).expanduser()
        require_file(path, METADATA)
        return path
    found = amazon.metadata_file(csv.parent)
    if found is None:
        raise FedVLRError(f"{csv.parent}: no meta_*.jsonl[.gz] next to {csv.name} (expected {METADATA}; "
                          f"or pass its path)")
    return found


def _image_urls(meta_path: Path, items: pl.Series, csv: Path) -> dict[str, str]:
    """Image URL per item of ``items`` that has one in the metadata; none at all is an error."""
    table = amazon.read_metadata(meta_path).filter(pl.col("raw_id").is_in(items.implode()))
    urls = table.drop_nulls("image_url").unique("raw_id", keep="first", maintain_order=True)
    if urls.height == 0:
        raise FedVLRError(f"{meta_path}: no image URL for any of the {len(items)} items of {csv.name} "
                          f"(expected {METADATA})")
    return dict(zip(urls["raw_id"], urls["image_url"]))


def _writable_image_folder(folder: Path) -> Path:
    """``folder/images``, created if needed, after checking that a file can be written there."""
    path = find_one([folder], [amazon.IMAGE_FOLDER], "the item images", folder=True) or folder / amazon.IMAGE_FOLDER
    try:
        path.mkdir(exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise FedVLRError(f"{path}: cannot write the item images there ({exc.strerror or exc})") from None
    return path


def _run_all(tasks: list[Callable[[], str]], workers: int, progress: Progress | None,
             cancelled: threading.Event) -> list[str]:
    """Outcomes of ``tasks`` run on ``workers`` threads; on an error or Ctrl-C, waiting tasks are
    dropped and ``cancelled`` is set so that running ones stop retrying."""
    report = progress or (lambda done, total: None)
    report(0, len(tasks))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedvlr-images")
    try:
        futures = [pool.submit(task) for task in tasks]
        outcomes = []
        for future in as_completed(futures):
            outcomes.append(future.result())
            report(len(outcomes), len(tasks))
        return outcomes
    finally:
        cancelled.set()
        pool.shutdown(cancel_futures=True)


def _ensure_image(folder: Path, item: str, url: str | None, existing: str | None, policy: _Policy) -> str:
    """Give ``item`` a complete image file: DOWNLOADED, SKIPPED, or the reason it failed."""
    if existing is not None and _is_complete(Path(existing)):
        return SKIPPED
    if url is None:
        return "no_url"
    if not SAFE_ID.fullmatch(item):
        return "unsafe_id"
    try:
        data = _fetch(url, policy)
        suffix = _suffix(io.BytesIO(data))
    except _Failure as failure:
        return failure.reason
    _install(data, folder / f"{item}{suffix}", replaces=None if existing is None else Path(existing))
    return DOWNLOADED


def _is_complete(path: Path) -> bool:
    """Whether ``path`` holds an image that decodes completely, in a format ``prepare`` reads."""
    try:
        _suffix(path)
    except _Failure:
        return False
    return True


def _suffix(source: Path | io.BytesIO) -> str:
    """File suffix of the image in ``source``, which Pillow must decode completely."""
    try:
        with Image.open(source) as image:
            image.load()
            kind = image.format
    except (OSError, ValueError, Image.DecompressionBombError):
        raise _Failure("not_an_image") from None
    if kind not in SUFFIXES:
        raise _Failure("unsupported_format")
    return SUFFIXES[kind]


def _fetch(url: str, policy: _Policy) -> bytes:
    """The body at ``url``; transient failures are retried with exponential backoff until cancelled."""
    for attempt in range(policy.retries):
        try:
            return _get(url, policy.timeout_s)
        except _Failure as failure:
            if not failure.transient:
                raise
        if policy.cancelled.wait(policy.backoff_s * 2**attempt):
            raise _Failure("cancelled")
    return _get(url, policy.timeout_s)


def _get(url: str, timeout_s: float) -> bytes:
    """One GET of an http(s) ``url``; every failure becomes a ``_Failure`` saying whether to retry."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise _Failure("bad_url")
    try:
        with urlopen(Request(url, headers={"User-Agent": USER_AGENT}), timeout=timeout_s) as response:
            return response.read()
    except HTTPError as exc:
        raise _Failure(f"http_{exc.code}", transient=exc.code == 429 or exc.code >= 500) from None
    except TimeoutError:
        raise _Failure("timeout", transient=True) from None
    except URLError as exc:
        timed_out = isinstance(exc.reason, TimeoutError)
        raise _Failure("timeout" if timed_out else "connection_error", transient=True) from None
    except (OSError, http.client.HTTPException):
        raise _Failure("connection_error", transient=True) from None
    except ValueError:
        raise _Failure("bad_url") from None


def _install(data: bytes, path: Path, replaces: Path | None) -> None:
    """Write ``data`` to ``path`` through a temporary name; remove the incomplete file it ``replaces``."""
    temporary = path.with_name(f".{path.stem}.part")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
        if replaces is not None and replaces != path:
            replaces.unlink(missing_ok=True)
    except OSError as exc:
        raise FedVLRError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _summary(outcomes: list[str], folder: Path, meta_path: Path) -> dict:
    """The counts of ``outcomes`` (DOWNLOADED, SKIPPED or a failure reason) and where things are."""
    failures = Counter(outcomes)
    downloaded, skipped = failures.pop(DOWNLOADED, 0), failures.pop(SKIPPED, 0)
    return {"items": len(outcomes), "downloaded": downloaded, "skipped_existing": skipped,
            "failed": sum(failures.values()), "failures": dict(sorted(failures.items())),
            "folder": str(folder), "metadata": str(meta_path)}
