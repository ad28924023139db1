"""The checkpoint store: plain data only (never code), verified by a manifest, one-line errors
for every kind of damage, a swap that survives a crash at any step, and a clean failure when
the disk is full."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from functools import cache, partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedvlr_sim.engine import checkpoint
from fedvlr_sim.errors import FedVLRError

SHARD_USERS = [np.array([0, 2, 4, 6]), np.array([1, 3, 5])]
ALL_USERS = np.arange(7)


# --------------------------------------------------------------------------- a tiny run's state
def make_model_and_optimizer(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model.register_buffer("table", torch.randn(5, 2).to(torch.bfloat16))
    optimizers = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1),
                  "sgd momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                  "adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95))}
    return model, optimizers[kind](model.parameters())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.ones(2, 4)).square().sum().backward()
    optimizer.step()


@cache
def server_state(kind: str = "adam") -> dict:
    model, optimizer = make_model_and_optimizer(kind)
    for _ in range(2):
        train_step(model, optimizer)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def one_more_step(kind: str, state: dict) -> dict:
    """The model after loading `state` into a fresh model and optimizer and training one step."""
    model, optimizer = make_model_and_optimizer(kind)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    train_step(model, optimizer)
    return model.state_dict()


def client_state(users: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows that can be told apart: each row is a function of its user id."""
    ids = torch.from_numpy(users).float()[:, None]
    return {"router": ids * torch.ones(3), "table": (ids + torch.arange(2)).to(torch.bfloat16)}


def write_checkpoint(run_dir: Path, round_: int, state: dict | None = None) -> None:
    tmp = checkpoint.begin(run_dir)
    for index, users in enumerate(SHARD_USERS):
        checkpoint.save_shard(tmp, index, users, client_state(users))
    checkpoint.commit(run_dir, tmp, state or server_state(), {"round": round_, "history": [{"loss": 0.5}]})


def place_checkpoint(run_dir: Path, name: str, round_: int) -> Path:
    """A complete checkpoint of `round_` at `run_dir / name`, as a crash may leave one."""
    scratch = run_dir.parent / f"scratch-{name}-{round_}"
    write_checkpoint(scratch, round_)
    run_dir.mkdir(exist_ok=True)
    return (scratch / "checkpoint").rename(run_dir / name)


def round_of(folder: Path) -> int:
    return checkpoint.read(folder)[1]["round"]


def restore(folder: Path) -> None:
    """Everything a resume reads."""
    checkpoint.read(folder)
    checkpoint.load_users_state(folder, ALL_USERS)


def assert_identical(got, expected, where="state"):
    """Same structure, same Python types (a state_dict's OrderedDict may come back as a dict, in
    the same order), bit-identical tensors of the same dtype."""
    assert type(got) is type(expected) or isinstance(expected, dict) and type(got) is dict, where
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert list(got) == list(expected) and [type(k) for k in got] == [type(k) for k in expected], where
        for key in expected:
            assert_identical(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert got == expected, where


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message


# --------------------------------------------------------------------------- layout and round trip
def test_a_checkpoint_is_plain_data_sealed_by_a_manifest_of_every_file(tmp_path):
    write_checkpoint(tmp_path, 1)
    folder = tmp_path / "checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "loop.json", "manifest.json", "server.json", "server.safetensors",
        "shard-0000.safetensors", "shard-0001.safetensors"]
    listed = json.loads((folder / "manifest.json").read_text())["files"]
    assert listed == {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                      for p in folder.iterdir() if p.name != "manifest.json"}
    checkpoint.verify(folder)


@pytest.mark.parametrize("kind", ["sgd", "sgd momentum", "adam"])
def test_server_state_round_trips_exactly_and_loads_into_a_fresh_optimizer(kind, tmp_path):
    expected = server_state(kind)
    write_checkpoint(tmp_path, 3, expected)
    got, loop_state = checkpoint.read(checkpoint.latest(tmp_path))
    assert loop_state == {"round": 3, "history": [{"loss": 0.5}]}
    assert_identical(got, expected)

    assert_identical(one_more_step(kind, got), one_more_step(kind, expected))


def test_client_state_is_gathered_for_any_users_in_any_order(tmp_path):
    write_checkpoint(tmp_path, 1)
    users = np.array([5, 0, 3])
    assert_identical(checkpoint.load_users_state(tmp_path / "checkpoint", users), client_state(users))


# --------------------------------------------------------------------------- never code
class PlantsAMarker:
    """Unpickling this creates a marker file: code run from a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def previous_format_checkpoint(folder: Path, write_server) -> None:
    """A checkpoint as the previous version wrote it: shards, `server.pt`, `loop.json`."""
    folder.mkdir(parents=True)
    for index, users in enumerate(SHARD_USERS):
        checkpoint.save_shard(folder, index, users, client_state(users))
    write_server(folder / "server.pt")
    (folder / "loop.json").write_text(json.dumps({"round": 4}))


@pytest.mark.parametrize("pickler", [partial(pickle.dump, protocol=2), torch.save],
                         ids=["plain pickle", "torch.save"])
def test_pickled_code_in_an_old_server_pt_is_refused_never_run(pickler, tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "run" / "checkpoint"

    def write_server(path):
        with open(path, "wb") as handle:
            pickler({"model": PlantsAMarker(marker), "optimizer": {}}, handle)

    previous_format_checkpoint(folder, write_server)
    with pytest.raises(FedVLRError) as refused:
        checkpoint.read(checkpoint.latest(tmp_path / "run"))
    assert not marker.exists()
    assert_one_line_naming(refused, folder / "server.pt")
    assert "weights_only=False" not in str(refused.value)


def test_an_old_server_pt_of_plain_tensors_is_still_read(tmp_path):
    expected = server_state("adam")
    folder = tmp_path / "checkpoint"
    previous_format_checkpoint(folder, lambda path: torch.save(expected, path))
    assert checkpoint.latest(tmp_path) == folder
    got, loop_state = checkpoint.read(folder)
    assert_identical(got, expected)
    assert loop_state["round"] == 4
    assert_identical(checkpoint.load_users_state(folder, ALL_USERS), client_state(ALL_USERS))


def test_no_code_of_the_package_loads_pickles_unsafely():
    package = Path(checkpoint.__file__).parents[1]
    unsafe = [p for p in package.rglob("*.py") if re.search(r"weights_only\s*=\s*False", p.read_text())]
    assert unsafe == []


# --------------------------------------------------------------------------- damage
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    path.write_bytes(bytes(reversed(path.read_bytes())))


DAMAGE = {
    "server tensors cut short": ("server.safetensors", truncate),
    "server tensors empty": ("server.safetensors", lambda p: p.write_bytes(b"")),
    "server tensors garbage": ("server.safetensors", garble),
    "server skeleton garbage": ("server.json", garble),
    "loop state cut short": ("loop.json", truncate),
    "shard cut short": ("shard-0001.safetensors", truncate),
    "shard garbage": ("shard-0000.safetensors", garble),
    "shard missing": ("shard-0001.safetensors", Path.unlink),
    "manifest cut short": ("manifest.json", truncate),
    "manifest missing": ("manifest.json", Path.unlink),
    "stray file": ("shard-0002.safetensors", lambda p: shutil.copy(p.with_name("shard-0000.safetensors"), p)),
}


@pytest.fixture
def run_with_two_checkpoints(tmp_path):
    """A run whose `checkpoint` holds round 2 and whose `checkpoint.old` holds round 1."""
    write_checkpoint(tmp_path / "run", 2)
    place_checkpoint(tmp_path / "run", "checkpoint.old", 1)
    return tmp_path / "run"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_in_a_one_line_error_and_skipped(damage, run_with_two_checkpoints):
    folder = run_with_two_checkpoints / "checkpoint"
    name, harm = DAMAGE[damage]
    harm(folder / name)
    with pytest.raises(FedVLRError) as damaged:
        restore(folder)
    assert_one_line_naming(damaged, folder / name)
    assert checkpoint.latest(run_with_two_checkpoints) == run_with_two_checkpoints / "checkpoint.old"
    restore(checkpoint.latest(run_with_two_checkpoints))


def rewrite_shard(folder: Path, shard: int, users, state: dict | None = None) -> None:
    users = np.asarray(users)
    checkpoint.save_shard(folder, shard, users, state or client_state(users))


CRAFTED = {  # damage that a manifest resealed over it cannot catch: (file named, "." the folder; how)
    "server tensors garbage": ("server.safetensors", lambda f: garble(f / "server.safetensors")),
    "server skeleton cut short": ("server.json", lambda f: truncate(f / "server.json")),
    "skeleton points at an absent tensor": ("server.json", lambda f: (f / "server.json").write_text(
        json.dumps({"dict": [["model", {"tensor": "nowhere"}], ["optimizer", {"dict": []}]]}))),
    "loop state without a round": ("loop.json", lambda f: (f / "loop.json").write_text('{"history": []}')),
    "more rows than users": ("shard-0001.safetensors", lambda f: rewrite_shard(
        f, 1, [1, 3, 5], {"router": torch.zeros(4, 3), "table": torch.zeros(3, 2, dtype=torch.bfloat16)})),
    "row shape differs between shards": ("shard-0001.safetensors", lambda f: rewrite_shard(
        f, 1, [1, 3, 5], {"router": torch.zeros(3, 4), "table": torch.zeros(3, 2, dtype=torch.bfloat16)})),
    "tensor absent from a shard": ("shard-0001.safetensors", lambda f: rewrite_shard(
        f, 1, [1, 3, 5], {"router": torch.zeros(3, 3)})),
    "a user missing (a shard lost)": (".", lambda f: rewrite_shard(f, 1, [1, 3])),
    "a user in two shards": (".", lambda f: rewrite_shard(f, 1, [1, 3, 5, 6])),
}


@pytest.mark.parametrize("craft", list(CRAFTED))
def test_inconsistent_content_under_a_valid_manifest_is_a_one_line_error(craft, tmp_path):
    write_checkpoint(tmp_path, 1)
    folder = tmp_path / "checkpoint"
    name, harm = CRAFTED[craft]
    harm(folder)
    checkpoint.seal(folder)
    with pytest.raises(FedVLRError) as damaged:
        restore(folder)
    assert_one_line_naming(damaged, folder / name)


# --------------------------------------------------------------------------- choosing the newest
def test_latest_is_the_highest_verified_round_whichever_folder_holds_it(tmp_path):
    run_dir = tmp_path / "run"
    for name, round_ in [("checkpoint.tmp", 3), ("checkpoint", 2), ("checkpoint.old", 1)]:
        place_checkpoint(run_dir, name, round_)
    assert checkpoint.latest(run_dir) == run_dir / "checkpoint.tmp"
    truncate(run_dir / "checkpoint.tmp" / "loop.json")
    assert checkpoint.latest(run_dir) == run_dir / "checkpoint"
    (run_dir / "checkpoint" / "manifest.json").unlink()
    assert checkpoint.latest(run_dir) == run_dir / "checkpoint.old"
    assert checkpoint.latest(tmp_path / "nothing here") is None


def test_an_unfinished_checkpoint_tmp_is_not_a_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path)
    checkpoint.save_shard(tmp, 0, SHARD_USERS[0], client_state(SHARD_USERS[0]))
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint"


# --------------------------------------------------------------------------- crashes
class Crash(Exception):
    """The process dies here."""


def path_of_fd(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def skip_sync(fd: int) -> None:
    pass


class CrashingFilesystem:
    """Counts the filesystem steps taken in a run folder (syncing a written file or a folder, a
    rename, a tree removal); step number `crash_at` (from 0) crashes instead. Syncs are counted
    but skipped: a crashing process loses nothing that the operating system has been given."""

    def __init__(self, monkeypatch, run_dir: Path, crash_at: int | None = None):
        self.steps, self.run_dir, self.crash_at = 0, run_dir.resolve(), crash_at
        monkeypatch.setattr(os, "fsync", self._counted(skip_sync, path_of=path_of_fd))
        monkeypatch.setattr(os, "rename", self._counted(os.rename))
        monkeypatch.setattr(shutil, "rmtree", self._counted(shutil.rmtree))

    def _counted(self, real, path_of=Path):
        def step(target, *args, **kwargs):
            if path_of(target).is_relative_to(self.run_dir):
                self.steps += 1
                if self.steps - 1 == self.crash_at:
                    raise Crash
            return real(target, *args, **kwargs)
        return step


def sealed_through_crash(monkeypatch, run_dir: Path, round_: int) -> bool:
    """Write checkpoint `round_` until a Crash stops it; whether it was sealed (fully written)."""
    sealed, seal = [], checkpoint.seal
    monkeypatch.setattr(checkpoint, "seal", lambda folder: sealed.append(seal(folder)))
    try:
        write_checkpoint(run_dir, round_)
    except Crash:
        pass
    return bool(sealed)


STEPS = range(17)


def test_the_crash_sweep_covers_every_step_of_the_longest_checkpoint(tmp_path, monkeypatch):
    for name, round_ in [("checkpoint.old", 1), ("checkpoint", 2), ("checkpoint.tmp", 3)]:
        place_checkpoint(tmp_path / "run", name, round_)
    filesystem = CrashingFilesystem(monkeypatch, tmp_path / "run")
    write_checkpoint(tmp_path / "run", 4)
    assert filesystem.steps < len(STEPS)


@pytest.mark.parametrize("first_crash", STEPS)
def test_two_crashes_in_a_row_at_any_steps_never_lose_a_fully_written_checkpoint(first_crash, tmp_path,
                                                                                 monkeypatch):
    for second_crash in STEPS:
        run_dir = tmp_path / f"crash-{first_crash}-{second_crash}"
        write_checkpoint(run_dir, 1)
        newest_sealed = 1
        for round_, crash_at in [(2, first_crash), (3, second_crash)]:
            CrashingFilesystem(monkeypatch, run_dir, crash_at)
            newest_sealed = round_ if sealed_through_crash(monkeypatch, run_dir, round_) else newest_sealed
            monkeypatch.undo()

        folder = checkpoint.latest(run_dir)
        assert newest_sealed <= round_of(folder) <= 3, run_dir.name
        restore(folder)
        write_checkpoint(run_dir, 4)
        assert round_of(checkpoint.latest(run_dir)) == 4
        assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint"]


def test_a_complete_tmp_beside_only_an_old_checkpoint_is_kept_by_the_next_checkpoint(tmp_path):
    """Two crashes in a row can leave only `checkpoint.old` and a complete `checkpoint.tmp`."""
    place_checkpoint(tmp_path, "checkpoint.old", 1)
    place_checkpoint(tmp_path, "checkpoint.tmp", 2)
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint.tmp"
    tmp = checkpoint.begin(tmp_path)
    assert list(tmp.iterdir()) == []
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint"
    assert round_of(tmp_path / "checkpoint") == 2


# --------------------------------------------------------------------------- disk full
WRITE_ORDER = ["shard-0000.safetensors", "shard-0001.safetensors", "server.safetensors", "server.json",
               "loop.json", "manifest.json"]


def bytes_before(folder: Path, name: str) -> int:
    """What writing a checkpoint like `folder` has written when it starts on file `name`."""
    return sum((folder / earlier).stat().st_size for earlier in WRITE_ORDER[:WRITE_ORDER.index(name)])


def fill_disk_after(monkeypatch, run_dir: Path, free: int) -> list[str]:
    """Files under `run_dir` get `free` more bytes, then writes fail with ENOSPC as on a full disk.
    Returns the names of the files whose writes failed."""
    real_write, run_dir, room, failed = os.write, run_dir.resolve(), [free], []

    def write(fd, data):
        path = path_of_fd(fd)
        if not path.is_relative_to(run_dir):
            return real_write(fd, data)
        if room[0] == 0:
            failed.append(path.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, memoryview(data)[: room[0]])
        room[0] -= written
        return written

    monkeypatch.setattr(os, "write", write)
    return failed


@pytest.mark.parametrize("full_in", WRITE_ORDER)
def test_a_full_disk_is_a_one_line_error_that_keeps_the_previous_checkpoint(full_in, tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 1)
    failed = fill_disk_after(monkeypatch, tmp_path, bytes_before(tmp_path / "checkpoint", full_in) + 1)
    with pytest.raises(FedVLRError, match="the disk is full") as full:
        write_checkpoint(tmp_path, 2)
    assert failed == [full_in]
    assert_one_line_naming(full, tmp_path / "checkpoint.tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert round_of(checkpoint.latest(tmp_path)) == 1

    monkeypatch.undo()              # space freed: the next checkpoint goes through
    write_checkpoint(tmp_path, 2)
    assert round_of(checkpoint.latest(tmp_path)) == 2


FILL_A_SMALL_DISK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np, torch
    from fedvlr_sim.engine import checkpoint
    from fedvlr_sim.errors import FedVLRError

    run_dir = Path(sys.argv[1])
    def write_checkpoint(round_, users):
        tmp = checkpoint.begin(run_dir)
        checkpoint.save_shard(tmp, 0, np.arange(users), {"table": torch.ones(users, 64)})
        checkpoint.commit(run_dir, tmp, {"model": {"w": torch.ones(3)}, "optimizer": {}}, {"round": round_})
    write_checkpoint(1, users=10)
    try:
        write_checkpoint(2, users=10_000)       # 2.5 MB on a 1 MB disk
    except FedVLRError as err:
        print(err)
    print(sorted(p.name for p in run_dir.iterdir()), checkpoint.read(checkpoint.latest(run_dir))[1]["round"])
""")


def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """On a 1 MB tmpfs mounted in a private mount namespace (skipped where that is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=1m fedvlr-test "$0" && exec "$@"', str(disk)]
    if shutil.which("unshare") is None or subprocess.run(mount + ["true"], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    result = subprocess.run(mount + [sys.executable, "-c", FILL_A_SMALL_DISK, str(disk / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    error, leftover = result.stdout.splitlines()
    assert error.startswith(f"{disk / 'run' / 'checkpoint.tmp'}: cannot write the checkpoint: the disk is full")
    assert leftover == "['checkpoint'] 1"
