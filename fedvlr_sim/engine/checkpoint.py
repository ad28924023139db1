"""Atomic checkpoints: server state, per-shard client state and the loop's own state.

A checkpoint is a folder `<run>/checkpoint/` written as `checkpoint.tmp/` and then renamed into
place, so a crash at any moment leaves either the previous checkpoint or the new one, never a
half-written one. All randomness is keyed by (seed, round, user), so the round counter is the
whole random-number position.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint"


def save_shard(folder: Path, shard: int, users: np.ndarray, state: dict[str, torch.Tensor]) -> None:
    """One shard's client state (plus its user ids) as safetensors."""
    tensors = {k: v.contiguous() for k, v in state.items()} | {"users": torch.from_numpy(users)}
    save_file(tensors, str(folder / f"shard-{shard:04d}.safetensors"))


def load_users_state(folder: Path, users: np.ndarray) -> dict[str, torch.Tensor]:
    """The client state of `users` gathered from all shard files (the shard layout may differ)."""
    parts = [load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))]
    all_users = torch.cat([p.pop("users") for p in parts]).numpy()
    order = np.argsort(all_users)
    rows = torch.from_numpy(order[np.searchsorted(all_users[order], users)])
    return {k: torch.cat([p[k] for p in parts])[rows] for k in parts[0]}


def begin(run_dir: Path) -> Path:
    """A fresh temporary folder to write the next checkpoint into."""
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(run_dir: Path, tmp: Path, server_state: dict, loop_state: dict) -> None:
    """Finish the checkpoint in `tmp` and swap it into place atomically."""
    torch.save(server_state, tmp / "server.pt")
    (tmp / "loop.json").write_text(json.dumps(loop_state))
    final, old = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        folder = run_dir / name
        if (folder / "loop.json").exists():
            return folder
    return None


def read(folder: Path) -> tuple[dict, dict]:
    """(server state, loop state) of a checkpoint folder."""
    return torch.load(folder / "server.pt", weights_only=False), json.loads((folder / "loop.json").read_text())
