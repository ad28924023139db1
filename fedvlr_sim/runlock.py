"""An exclusive lock on a run folder, so that two runs never write the same `--out` at once.

The lock is `fcntl.flock` on `<run>/.lock`, held through an open file for the life of the run.
The operating system releases it when the process ends in any way (kill -9 included), so a stale
lock cannot exist; the file itself stays and only records the pid of the last holder, for the
message a second run gets.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedvlr_sim.config import create_folder
from fedvlr_sim.errors import FedVLRError

LOCK = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder `run_dir` (created if absent) exclusively, or raise FedVLRError."""
    run_dir = create_folder("--out", run_dir)
    with open(run_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FedVLRError(f"--out {run_dir}: another fedvlr-sim run (pid {_holder(handle)}) is using "
                              f"this folder") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _holder(handle) -> str:
    """The pid the holder wrote into the lock file ("unknown" if it has not written it yet)."""
    handle.seek(0)
    return handle.read().strip() or "unknown"
