"""The installed `fedvlr-sim reproduce`: bad input ends in one line, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

FEDVLR_SIM = Path(sys.executable).parent / "fedvlr-sim"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
CASES = {
    "unknown experiment": (("reproduce", "table99", "--dataset", "synthetic:tiny"), "table99"),
    "unreachable cluster": (("reproduce", "table5", "--dataset", "synthetic:tiny", "--address", "127.0.0.1:9",
                             "--rounds", "1", "--seeds", "1"), "--address"),
    "unknown dataset": (("reproduce", "table5", "--dataset", "NoSuchSet"), "NoSuchSet"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce-cli")

    def attempt(name):
        folder = root / name.replace(" ", "-")
        folder.mkdir()
        args, _ = CASES[name]
        process = subprocess.run([str(FEDVLR_SIM), *args, "--out", "out", "--data-dir", "."], cwd=folder, env=ENV,
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        return process, sorted(p.name for p in (folder / "out").rglob("*.md")) if (folder / "out").exists() else []

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(CASES, pool.map(attempt, CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(outcomes, name):
    process, written = outcomes[name]
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and CASES[name][1] in lines[0], process.stderr
    assert "Traceback" not in process.stdout + process.stderr
    assert written == []
