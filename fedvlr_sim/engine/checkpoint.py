"""Checkpoints: server state, per-shard client state and the loop's own state, verifiable and
safe to read.

A checkpoint is a folder of plain data; nothing in it is ever executed:

    checkpoint/
      shard-0000.safetensors   one per client shard: that shard's client state plus its "users"
      server.safetensors       every tensor of the server state, keyed by its path ("model/<name>",
                               "optimizer/state/<index>/<name>")
      server.json              the rest of the server state, a typed skeleton whose tensors point
                               into server.safetensors (tuples, ints, None come back exactly)
      loop.json                the loop's state (round, history, best, ...)
      manifest.json            written last: every other file with its size and sha256

It is written into `checkpoint.tmp/`, every file synced, sealed by the manifest, and then swapped
in (`checkpoint` -> `checkpoint.old`, `checkpoint.tmp` -> `checkpoint`, `checkpoint.old` removed).
Nothing complete is removed before a newer complete checkpoint is on disk, so a crash at any
instant leaves one that verifies; `latest` finds the newest of `checkpoint`, `checkpoint.tmp` and
`checkpoint.old`. Damage of any kind is a one-line FedVLRError naming the file. A checkpoint of
the previous format (`server.pt`) is read with `torch.load(weights_only=True)`, which refuses
pickled code. All randomness is keyed by (seed, round, user), so the round counter is the whole
random-number position.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import safetensors.torch
from safetensors import SafetensorError

from fedvlr_sim.errors import FedVLRError

CHECKPOINT = "checkpoint"
TMP = f"{CHECKPOINT}.tmp"
OLD = f"{CHECKPOINT}.old"
MANIFEST = "manifest.json"
SERVER_TENSORS = "server.safetensors"
SERVER_SKELETON = "server.json"
LOOP = "loop.json"
LEGACY_SERVER = "server.pt"
SHARD_PATTERN = "shard-*.safetensors"
FORMAT = 1
REQUIRED = (SERVER_TENSORS, SERVER_SKELETON, LOOP)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# --------------------------------------------------------------------------- writing
def save_shard(folder: Path, shard: int, users: np.ndarray, state: dict[str, torch.Tensor]) -> None:
    """One shard's client state (plus its user ids) as safetensors."""
    tensors = {k: _plain(v) for k, v in state.items()} | {"users": torch.from_numpy(np.asarray(users, np.int64))}
    with _writing(folder):
        _write_file(folder / f"shard-{shard:04d}.safetensors", safetensors.torch.save(tensors))


def begin(run_dir: Path) -> Path:
    """A fresh temporary folder to write the next checkpoint into. A complete `checkpoint.tmp`
    left by a crash during a swap is newer than the others: it is installed first, not lost."""
    tmp = run_dir / TMP
    if tmp.exists():
        if latest(run_dir) == tmp:
            _install(run_dir, tmp)
        else:
            shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(run_dir: Path, tmp: Path, server_state: dict, loop_state: dict) -> None:
    """Finish the checkpoint in `tmp` (whose shard files are written), seal it, swap it in."""
    with _writing(tmp):
        _write_server(tmp, server_state)
        _write_file(tmp / LOOP, json.dumps(loop_state).encode())
        seal(tmp)
    _install(run_dir, tmp)


def seal(folder: Path) -> None:
    """Write the manifest, last: the size and sha256 of every other file of the checkpoint."""
    files = {p.name: _fingerprint(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    _write_file(folder / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=1).encode())
    _fsync(folder)


def _install(run_dir: Path, complete: Path) -> None:
    """Swap the sealed checkpoint `complete` in; at every step a complete checkpoint exists."""
    final, old = run_dir / CHECKPOINT, run_dir / OLD
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(complete, final)
    _fsync(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_server(folder: Path, server_state: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(server_state, "", tensors)
    _write_file(folder / SERVER_TENSORS, safetensors.torch.save(tensors))
    _write_file(folder / SERVER_SKELETON, json.dumps(skeleton).encode())


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON skeleton of `value`; its tensors go to `tensors`, keyed by their path.

    Containers are tagged ({"dict": [[key, value], ...]}, {"list": [...]}, {"tuple": [...]},
    {"tensor": key}) so that int keys, tuples and lists come back as they were.
    """
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of the server state share the key {path!r}")
        tensors[path] = _plain(value)
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[_key(k), _split(v, _join(path, k), tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_split(v, _join(path, i), tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {path!r}")


def _key(key: Any) -> int | str:
    if not isinstance(key, (int, str)):
        raise TypeError(f"cannot checkpoint a dict key of type {type(key).__name__}")
    return key


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` and sync it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(folder: Path) -> None:
    """Make the entries of `folder` (new files, renames) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Turn a failed write into a one-line FedVLRError, removing the partial checkpoint."""
    try:
        yield
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        reason = "the disk is full" if err.errno in DISK_FULL else (err.strerror or str(err))
        raise FedVLRError(f"{folder}: cannot write the checkpoint: {reason}; the partial checkpoint was "
                          f"removed and the previous one kept") from None


# --------------------------------------------------------------------------- finding and verifying
def latest(run_dir: Path) -> Path | None:
    """The complete, verified checkpoint folder of a run with the highest round, or None."""
    candidates = [run_dir / name for name in (CHECKPOINT, TMP, OLD)]
    rounds = {folder: _verified_round(folder) for folder in candidates}
    complete = [folder for folder in candidates if rounds[folder] is not None]
    return max(complete, key=rounds.__getitem__, default=None)


def verify(folder: Path) -> None:
    """Raise FedVLRError unless `folder` is a complete checkpoint whose files match its manifest
    (a previous-format checkpoint: unless it has `server.pt` and a readable `loop.json`)."""
    if _is_legacy(folder):
        _read_loop(folder)
        return
    listed = _read_manifest(folder)
    for name, expected in listed.items():
        _check_file(folder / name, expected)
    unlisted = sorted(p.name for p in folder.iterdir() if p.name not in listed and p.name != MANIFEST)
    if unlisted:
        raise FedVLRError(f"{folder / unlisted[0]}: not listed in {MANIFEST}; expected only the files it lists")


def _verified_round(folder: Path) -> int | None:
    try:
        verify(folder)
        return _read_loop(folder)["round"]
    except FedVLRError:
        return None


def _is_legacy(folder: Path) -> bool:
    return not (folder / MANIFEST).exists() and (folder / LEGACY_SERVER).exists()


def _read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's {file name: {"bytes", "sha256"}}."""
    path = folder / MANIFEST
    manifest = _read_json(path, "the checkpoint's file list (written last; without it the checkpoint is incomplete)")
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None
    if not (isinstance(files, dict) and set(REQUIRED) <= files.keys()
            and all(_valid_entry(name, entry) for name, entry in files.items())):
        raise FedVLRError(f"{path}: malformed; expected format {FORMAT} listing {', '.join(REQUIRED)} and the "
                          f"shard files, each with its bytes and sha256")
    return files


def _valid_entry(name: str, entry: Any) -> bool:
    return (Path(name).name == name and isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
            and isinstance(entry.get("sha256"), str))


def _check_file(path: Path, expected: dict) -> None:
    if not path.is_file():
        raise FedVLRError(f"{path}: missing; {MANIFEST} lists it as part of the checkpoint")
    found = _fingerprint(path)
    if found["bytes"] != expected["bytes"]:
        raise FedVLRError(f"{path}: {found['bytes']} bytes, expected {expected['bytes']} as listed in {MANIFEST} "
                          f"(cut short or damaged)")
    if found["sha256"] != expected["sha256"]:
        raise FedVLRError(f"{path}: content differs from its sha256 in {MANIFEST} (damaged)")


def _fingerprint(path: Path) -> dict:
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {"bytes": os.fstat(handle.fileno()).st_size, "sha256": digest}


# --------------------------------------------------------------------------- reading
def read(folder: Path) -> tuple[dict, dict]:
    """(server state, loop state) of a checkpoint folder, verified first."""
    verify(folder)
    server_state = _read_legacy_server(folder / LEGACY_SERVER) if _is_legacy(folder) else _read_server(folder)
    return server_state, _read_loop(folder)


def load_users_state(folder: Path, users: np.ndarray) -> dict[str, torch.Tensor]:
    """The client state of `users` gathered from all shard files (the shard layout may differ)."""
    paths = _shard_files(folder)
    shards = [_read_shard(path) for path in paths]
    _check_same_layout(paths, shards)
    all_users = torch.cat([shard.pop("users") for shard in shards]).numpy()
    rows = torch.from_numpy(_rows_of(folder, all_users, np.asarray(users)))
    return {k: torch.cat([shard[k] for shard in shards])[rows] for k in shards[0]}


def _read_server(folder: Path) -> dict:
    tensors = _load_tensors(folder / SERVER_TENSORS, "the server's tensors")
    path = folder / SERVER_SKELETON
    skeleton = _read_json(path, "the server state's skeleton")
    try:
        state = _rebuild(skeleton, tensors)
    except (TypeError, ValueError) as err:
        raise FedVLRError(f"{path}: does not match {SERVER_TENSORS} ({_one_line(err)}); expected the skeleton "
                          f"written with it") from None
    return _server_state(state, path)


def _rebuild(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The value a skeleton of `_split` stands for."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not (isinstance(node, dict) and len(node) == 1):
        raise ValueError(f"unexpected node {str(node)[:60]}")
    (tag, body), = node.items()
    if tag == "tensor":
        if body not in tensors:
            raise ValueError(f"no tensor {body!r} there")
        return tensors[body]
    if tag == "dict":
        return {_key(k): _rebuild(v, tensors) for k, v in body}
    if tag in ("list", "tuple"):
        items = [_rebuild(v, tensors) for v in body]
        return tuple(items) if tag == "tuple" else items
    raise ValueError(f"unknown tag {tag!r}")


def _read_legacy_server(path: Path) -> dict:
    """The server state of a previous-format checkpoint; pickled code is refused, never run."""
    try:
        with warnings.catch_warnings():   # torch warns on stderr about some pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # refusals are UnpicklingError; damage raises many other types
        raise FedVLRError(f"{path}: refused or damaged ({_load_problem(err)}); expected the server state as plain "
                          f"tensors, read only with torch.load(weights_only=True)") from None
    return _server_state(state, path)


def _load_problem(err: Exception) -> str:
    """The gist of a torch.load error (its long advice, which includes unsafe options, dropped)."""
    refusal = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
    return (refusal.group(1) if refusal else _one_line(err)).split(". ")[0]


def _server_state(state: Any, path: Path) -> dict:
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)
            and isinstance(state.get("optimizer"), dict)):
        raise FedVLRError(f"{path}: expected a server state {{'model': ..., 'optimizer': ...}}")
    return state


def _read_loop(folder: Path) -> dict:
    path = folder / LOOP
    loop_state = _read_json(path, "the loop state")
    if not (isinstance(loop_state, dict) and type(loop_state.get("round")) is int):
        raise FedVLRError(f"{path}: expected a JSON object with an integer 'round'")
    return loop_state


def _shard_files(folder: Path) -> list[Path]:
    names = _read_manifest(folder) if (folder / MANIFEST).exists() else [p.name for p in folder.glob(SHARD_PATTERN)]
    paths = sorted(folder / name for name in names if fnmatch.fnmatch(name, SHARD_PATTERN))
    if not paths:
        raise FedVLRError(f"{folder}: no {SHARD_PATTERN} files; expected the client state of every user")
    return paths


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    shard = _load_tensors(path, "a shard of client state")
    users = shard.get("users")
    if users is None or users.dtype != torch.int64 or users.dim() != 1:
        raise FedVLRError(f"{path}: expected a 1-d int64 tensor 'users'")
    for name, tensor in shard.items():
        if tensor.dim() == 0 or len(tensor) != len(users):
            raise FedVLRError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}; expected one row for "
                              f"each of its {len(users)} users")
    return shard


def _check_same_layout(paths: list[Path], shards: list[dict[str, torch.Tensor]]) -> None:
    """Every shard file holds the same tensors, with the same dtype and row shape."""
    reference = _layout(shards[0])
    for path, shard in zip(paths[1:], shards[1:]):
        layout = _layout(shard)
        if layout != reference:
            differing = sorted(set(layout.items()) ^ set(reference.items()))[0][0]
            raise FedVLRError(f"{path}: tensor {differing!r} is {layout.get(differing, 'absent')}, expected "
                              f"{reference.get(differing, 'absent')} as in {paths[0].name}")


def _layout(shard: dict[str, torch.Tensor]) -> dict[str, str]:
    return {name: f"{str(t.dtype).removeprefix('torch.')}{list(t.shape[1:])}" for name, t in shard.items()}


def _rows_of(folder: Path, all_users: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Row of each of `users` in `all_users`; each must occur exactly once."""
    order = np.argsort(all_users, kind="stable")
    ordered = all_users[order]
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        raise FedVLRError(f"{folder}: user {repeated[0]} is in more than one shard file; expected each user once")
    missing = np.setdiff1d(users, all_users)
    if len(missing):
        raise FedVLRError(f"{folder}: no client state for {len(missing)} of the {len(users)} users (e.g. user "
                          f"{missing[0]}); expected every user of the run")
    return order[np.searchsorted(ordered, users)]


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FedVLRError(f"{path}: missing; expected {what}")
    try:
        return safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise FedVLRError(f"{path}: not a readable safetensors file ({_one_line(err)}); expected {what}") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FedVLRError(f"{path}: missing; expected {what}") from None
    except (OSError, ValueError) as err:
        raise FedVLRError(f"{path}: not readable JSON ({_one_line(err)}); expected {what}") from None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__
