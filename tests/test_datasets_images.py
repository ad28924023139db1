"""Downloading Amazon item images, against a local HTTP server on 127.0.0.1 only.

The raw folder holds a ratings CSV of eight items (every one of five users rates each) and their
metadata; each item's image URL points at a server path with one behaviour (ROUTES).
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from PIL import Image
from test_datasets_raw_formats import grid, write_csv

from fedvlr_sim.datasets import dataset_summary, download_images, load_dataset, prepare_dataset
from fedvlr_sim.errors import FedVLRError


def image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 90)).save(buffer, kind)
    return buffer.getvalue()


PNG, JPEG = image_bytes("PNG"), image_bytes("JPEG")
SLOW_ANSWER_WAIT_S = 5  # the slow path answers nothing; it is released at the end of each test
ROUTES = {  # path: (status, body) per try; the last entry repeats; None: no answer at all
    "/png": [(200, PNG)],
    "/jpeg": [(200, JPEG)],
    "/missing": [(404, b"")],
    "/forbidden": [(403, b"")],
    "/flaky": [(500, b""), (200, JPEG)],
    "/html": [(200, b"<html>not an image</html>")],
    "/slow": [None],
    "/gif": [(200, image_bytes("GIF"))],
}
IMAGES = {  # parent_asin: its metadata "images" (paths on the server)
    "B01": [{"large": "/png", "hi_res": "/missing"}],  # large is preferred
    "B02": [{"large": None, "hi_res": "/jpeg"}],
    "B03": [{"large": "/missing"}],
    "B04": [{"large": "/forbidden"}],
    "B05": [{"large": "/flaky"}],
    "B06": [{"large": "/html"}],
    "B07": [{"large": "/slow"}],
    "B08": [],
}
FAST = {"workers": 4, "retries": 1, "timeout_s": 0.4, "backoff_s": 0.01}
EXPECTED_FAILURES = {"http_403": 1, "http_404": 1, "no_url": 1, "not_an_image": 1, "timeout": 1}


@pytest.fixture
def server(monkeypatch):
    """The ROUTES on an ephemeral 127.0.0.1 port; ``hits`` counts the requests per path."""
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    hits, release = Counter(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] += 1
            tries = ROUTES[self.path]
            answer = tries[min(hits[self.path], len(tries)) - 1]
            if answer is None:
                release.wait(SLOW_ANSWER_WAIT_S)
                return
            status, body = answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", hits=hits)
    release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(SLOW_ANSWER_WAIT_S)


@pytest.fixture
def raw(tmp_path, server) -> Path:
    """An Amazon raw folder whose metadata points at ``server``."""
    folder = tmp_path / "amazon"
    write_csv(folder / "Toy.5core.rating_only.csv", "user_id,parent_asin,rating,timestamp",
              [(u, i, 5.0, t) for u, i, t in grid(["U1", "U2", "U3", "U4", "U5"], list(IMAGES))])
    write_metadata(folder / "meta_Toy.jsonl", {
        asin: [{field: path and server.url + path for field, path in image.items()} for image in images]
        for asin, images in IMAGES.items()
    })
    return folder


def write_metadata(path: Path, images: dict[str, list]) -> None:
    lines = [{"parent_asin": asin, "title": f"Item {asin}", "images": urls} for asin, urls in images.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def starts(message: str) -> str:
    """A pattern for an error message that begins with ``message``, taken literally."""
    return "^" + re.escape(message)


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def download(raw: Path, **options) -> dict:
    return download_images("Toy", raw, **(FAST | options))


# --- downloading ---------------------------------------------------------------------------------


def test_each_item_gets_one_image_named_by_parent_asin_and_every_failure_is_counted(raw, server):
    summary = download(raw)
    assert summary == {"items": 8, "downloaded": 3, "skipped_existing": 0, "failed": 5,
                       "failures": EXPECTED_FAILURES, "folder": str(raw / "images"),
                       "metadata": str(raw / "meta_Toy.jsonl")}
    assert files_in(raw / "images") == {"B01.png", "B02.jpg", "B05.jpg"}
    assert (raw / "images" / "B05.jpg").read_bytes() == JPEG


def test_transient_errors_are_retried_and_refusals_are_not(raw, server):
    download(raw)
    assert server.hits["/flaky"] == 2 and server.hits["/slow"] == 2  # retries=1
    assert server.hits["/missing"] == server.hits["/forbidden"] == server.hits["/html"] == 1
    assert server.hits["/png"] == 1


def test_progress_reports_each_finished_item(raw, server):
    calls = []
    download(raw, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 8) for done in range(9)]


def test_only_http_urls_and_the_formats_prepare_reads_are_kept(raw, server, tmp_path):
    write_metadata(tmp_path / "meta.jsonl", {"B01": [{"large": "file:///etc/hostname"}],
                                             "B02": [{"large": server.url + "/gif"}]})
    summary = download(raw, metadata=tmp_path / "meta.jsonl")
    assert summary["failures"] == {"bad_url": 1, "no_url": 6, "unsupported_format": 1}
    assert files_in(raw / "images") == set()


def test_an_id_that_is_no_plain_file_name_is_not_used_as_one(tmp_path, server):
    folder = tmp_path / "amazon"
    write_csv(folder / "Toy.csv", "user_id,parent_asin,rating,timestamp", [("U1", "../B01", 5.0, 1)])
    write_metadata(folder / "meta_Toy.jsonl", {"../B01": [{"large": server.url + "/png"}]})
    assert download(folder)["failures"] == {"unsafe_id": 1}
    assert files_in(folder) == {"Toy.csv", "meta_Toy.jsonl", "images"} and server.hits["/png"] == 0


# --- resuming ------------------------------------------------------------------------------------


def test_a_second_run_skips_the_images_it_has_and_downloads_nothing(raw, server):
    download(raw)
    before = Counter(server.hits)
    summary = download(raw)
    assert (summary["downloaded"], summary["skipped_existing"], summary["failures"]) == (0, 3, EXPECTED_FAILURES)
    assert server.hits["/png"] == before["/png"] and server.hits["/jpeg"] == before["/jpeg"]


def test_a_partial_temporary_file_and_a_truncated_image_are_replaced(raw, server):
    images = raw / "images"
    images.mkdir()
    (images / ".B01.part").write_bytes(PNG[: len(PNG) // 2])  # left by an interrupted run
    (images / "B02.jpg").write_bytes(JPEG[: len(JPEG) // 2])  # truncated by someone else
    summary = download(raw)
    assert (summary["downloaded"], summary["skipped_existing"]) == (3, 0)
    assert files_in(images) == {"B01.png", "B02.jpg", "B05.jpg"}
    assert (images / "B02.jpg").read_bytes() == JPEG


def test_an_incomplete_image_under_another_suffix_gives_way_to_the_new_one(raw, server):
    images = raw / "images"
    images.mkdir()
    (images / "B01.jpeg").write_bytes(b"\xff\xd8 not really a JPEG")
    download(raw)
    assert "B01.jpeg" not in files_in(images) and (images / "B01.png").read_bytes() == PNG


# --- prepare finds them --------------------------------------------------------------------------


def test_prepare_gives_downloaded_items_their_image_path_and_reports_the_shares(raw, server, tmp_path):
    download(raw)
    prepare_dataset("Toy", raw, tmp_path / "data", fmt="amazon")
    items = pl.read_parquet(tmp_path / "data" / "Toy" / "items.parquet")
    with_image = {raw_id: Path(path).name for raw_id, path in zip(items["raw_id"], items["image_path"]) if path}
    assert with_image == {"B01": "B01.png", "B02": "B02.jpg", "B05": "B05.jpg"}
    summary = dataset_summary(load_dataset("Toy", tmp_path / "data"))
    assert (summary["items_with_title"], summary["items_with_image"]) == (1.0, 0.375)


# --- bad input: one line naming the file or folder -----------------------------------------------


def test_no_metadata_next_to_the_csv_names_the_folder(raw):
    (raw / "meta_Toy.jsonl").unlink()
    with pytest.raises(FedVLRError, match=starts(f"{raw}: no meta_*.jsonl[.gz] next to Toy.5core")):
        download(raw)


def test_a_metadata_path_that_does_not_exist_is_named(raw, tmp_path):
    with pytest.raises(FedVLRError, match=starts(f"{tmp_path / 'meta.jsonl'}: file not found")):
        download(raw, metadata=tmp_path / "meta.jsonl")


def test_metadata_without_any_image_url_is_named(raw, tmp_path):
    write_metadata(tmp_path / "meta.jsonl", {asin: [] for asin in IMAGES})
    with pytest.raises(FedVLRError, match=starts(f"{tmp_path / 'meta.jsonl'}: no image URL for any of the 8 items")):
        download(raw, metadata=tmp_path / "meta.jsonl")


def test_a_file_where_the_image_folder_belongs_is_named(raw):
    (raw / "images").write_text("not a folder")
    with pytest.raises(FedVLRError, match=starts(f"{raw / 'images'}: expected a folder for the item images")):
        download(raw)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_image_folder_is_named(raw):
    (raw / "images").mkdir(mode=0o500)
    with pytest.raises(FedVLRError, match=starts(f"{raw / 'images'}: cannot write the item images there")):
        download(raw)


def test_datasets_in_other_formats_are_refused(raw):
    with pytest.raises(FedVLRError, match=starts("--dataset KU: image download is for the Amazon 2023 datasets")):
        download_images("KU", raw)


@pytest.mark.parametrize("option, value, expected", [("workers", 0, "--workers 0: expected at least 1"),
                                                     ("retries", -1, "--retries -1: expected at least 0"),
                                                     ("timeout_s", 0, "--timeout 0: expected more than 0"),
                                                     ("timeout_s", float("inf"), "--timeout inf: expected more than 0"),
                                                     ("backoff_s", float("inf"), "--backoff inf: expected at least 0")])
def test_options_out_of_range_are_named(raw, option, value, expected):
    with pytest.raises(FedVLRError, match=starts(expected)):
        download(raw, **{option: value})


def test_the_images_command_downloads_and_prints_the_summary(raw, server):
    from typer.testing import CliRunner

    from fedvlr_sim.cli import app

    options = ["--workers", "2", "--retries", "1", "--timeout", str(FAST["timeout_s"]),
               "--backoff", str(FAST["backoff_s"])]
    result = CliRunner().invoke(app, ["images", "--dataset", "Toy", "--raw", str(raw), *options])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["items"], summary["downloaded"], summary["failed"]) == (8, 3, 5)
    assert download(raw)["skipped_existing"] == 3, "what the command downloaded is on disk"
