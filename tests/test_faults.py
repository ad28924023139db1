"""Faults around the installed `fedvlr-sim run`: the driver killed with SIGKILL at a random
instant, two runs started on one folder, and a checkpoint that carries pickled code.

A killed run continued with `--resume` ends with the ranking metrics of an uninterrupted run;
a second run on a folder in use is refused in one line while the first finishes; a pickle in a
checkpoint is never executed.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FEDVLR_SIM = Path(sys.executable).with_name("fedvlr-sim")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
ROUNDS = 10   # the kill comes at most KILL_WINDOW s after round 1: many rounds are still to run
KILL_WINDOW = 0.7
# the paper's plain SGD server step: Adam's normalised steps turn float round-off between two processes
# (BLAS summation order under load) into visible rank changes, which is not what these tests are about
RUN = ("run", "--backend", "local", "--dataset", "synthetic:tiny", "--rounds", str(ROUNDS), "--local-epochs", "1",
       "--dim", "8", "--checkpoint-every", "1", "--server-optimizer", "sgd", "--server-lr", "1.0")
TIMEOUT = 180


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """The installed console script in the background, no stdin, output captured."""
    return subprocess.Popen([str(FEDVLR_SIM), *args], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stdout, stderr


def wait_for(path: Path, process: subprocess.Popen) -> None:
    """Until `path` exists (the process must still be running to write it)."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert process.poll() is None, f"exited {process.returncode} before {path} appeared: {finish(process)}"
        assert time.monotonic() < deadline, f"no {path} after {TIMEOUT} s"
        time.sleep(0.05)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_one_line_error(returncode: int, stderr: str, *mentions: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def contested(tmp_path_factory):
    """A run on `shared/`, and a second run on `shared/` started while the first holds it."""
    cwd = tmp_path_factory.mktemp("contested")
    first = start(*RUN, "--out", "shared", cwd=cwd)
    wait_for(cwd / "shared" / "config.json", first)   # written under the folder's lock
    second = finish(start(*RUN, "--out", "shared", cwd=cwd))
    return cwd / "shared", finish(first), second


def test_a_second_run_on_a_folder_in_use_is_refused_and_the_first_finishes(contested):
    shared, (first_code, first_out, first_err), (second_code, _, second_err) = contested
    assert_one_line_error(second_code, second_err, "--out shared")
    assert first_code == 0, first_err
    assert f"results: {shared.name}" in first_out
    assert summary_of(shared)["rounds_run"] == ROUNDS


def test_a_driver_killed_at_a_random_instant_resumes_to_the_uninterrupted_result(
        contested, tmp_path, assert_same_metrics):
    """The first contested run is the uninterrupted reference: the same configuration."""
    delay = random.uniform(0.0, KILL_WINDOW)
    driver = start(*RUN, "--out", "killed", cwd=tmp_path)
    wait_for(tmp_path / "killed" / "checkpoint" / "manifest.json", driver)
    time.sleep(delay)
    assert driver.poll() is None, f"the run ended before the kill {delay:.2f} s after its first checkpoint"
    driver.send_signal(signal.SIGKILL)
    finish(driver)

    returncode, _, stderr = finish(start("run", "--resume", "killed", cwd=tmp_path))
    assert returncode == 0, f"killed {delay:.2f} s after the first checkpoint: {stderr}"
    assert_same_metrics(summary_of(tmp_path / "killed"), summary_of(contested[0]))


class Planted:
    """Unpickling this calls open(marker, "w"): the marker file appears if the pickle runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def torch_save(obj, path: Path) -> None:
    import torch

    torch.save(obj, path)


def pickle_dump(obj, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("write", [torch_save, pickle_dump], ids=["torch.save", "pickle"])
def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(write, tmp_path):
    """A previous-format checkpoint (server.pt) whose server state unpickles into a call."""
    from fedvlr_sim.config import RunConfig

    run_dir, marker = tmp_path / "run", tmp_path / "planted"
    (run_dir / "checkpoint").mkdir(parents=True)
    config = RunConfig.create(backend="local", dataset="synthetic:tiny", dim=8, rounds=2).flat()
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "checkpoint" / "loop.json").write_text(json.dumps({"round": 1, "seconds": 0.0}))
    write({"model": Planted(marker), "optimizer": {}}, run_dir / "checkpoint" / "server.pt")

    returncode, _, stderr = finish(start("run", "--resume", "run", cwd=tmp_path))
    assert not marker.exists(), "the pickle in the checkpoint was executed"
    assert_one_line_error(returncode, stderr, "server.pt")
    assert not (run_dir / "summary.json").exists()


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path):
    run = start(*RUN, "--out", "interrupted", cwd=tmp_path)
    wait_for(tmp_path / "interrupted" / "checkpoint" / "manifest.json", run)
    run.send_signal(signal.SIGINT)
    returncode, _, stderr = finish(run)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "fedvlr-sim run --resume interrupted" in last, stderr
    assert (tmp_path / "interrupted" / "metrics.parquet").exists(), "rounds done so far are kept"
    resumed = subprocess.run([str(FEDVLR_SIM), "run", "--resume", "interrupted"], cwd=tmp_path, env=ENV,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(tmp_path / "interrupted")["rounds_run"] == ROUNDS
