"""The run-folder lock: one run at a time per `--out`, and never a stale lock after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fedvlr_sim.errors import FedVLRError
from fedvlr_sim.runlock import run_lock

HOLDER = """
import sys, time
from pathlib import Path
from fedvlr_sim.runlock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on `tmp_path / "run"`."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()
    process.stdout.close()


def test_a_second_run_on_a_held_folder_is_refused_naming_the_holder(holder, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(FedVLRError) as refused:
        with run_lock(run_dir):
            pass
    assert str(refused.value) == f"--out {run_dir}: another fedvlr-sim run (pid {holder.pid}) is using this folder"


def test_the_lock_is_free_once_the_holder_is_killed_with_sigkill(holder, tmp_path):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_released_when_the_run_ends_and_creates_the_folder(tmp_path):
    run_dir = tmp_path / "new" / "run"
    with run_lock(run_dir):
        assert run_dir.is_dir()
    with run_lock(run_dir):
        pass


def test_two_runs_in_one_process_exclude_each_other_too(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(FedVLRError, match=rf"\(pid {os.getpid()}\)"):
            with run_lock(tmp_path):
                pass


def test_a_run_that_loses_the_race_for_a_new_folder_leaves_the_winners_folder_alone(holder, tmp_path, monkeypatch):
    """Two runs started at once on an absent --out both see it free; the one refused the lock must
    not clean up the folder as if it had created it (that deleted the winner's config mid-write)."""
    from fedvlr_sim import runner
    from fedvlr_sim.config import RunConfig

    run_dir = tmp_path / "run"
    winners_file = run_dir / "config.json.tmp"
    winners_file.write_text("{}")
    real_exists = type(run_dir).exists
    monkeypatch.setattr(type(run_dir), "exists",
                        lambda path: False if path == run_dir else real_exists(path))   # it looked absent
    with pytest.raises(FedVLRError, match="another fedvlr-sim run"):
        with runner.new_run(RunConfig().replace(out=str(run_dir))):
            pass
    monkeypatch.undo()
    assert winners_file.read_text() == "{}"
