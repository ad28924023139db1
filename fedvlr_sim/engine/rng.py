"""Counter-based random numbers keyed by (seed, stream, round, user, counter).

Every random draw that concerns user u in round t is a pure function of those keys, so results
do not depend on how users are split into chunks, shards, machines or backends, and a resumed
run draws exactly what an uninterrupted one would. The generator is SplitMix64 applied to the
combined key; vectorised over users and counters with numpy uint64 (wrapping) arithmetic.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


class Stream(enum.IntEnum):
    """Independent purposes of randomness; each gets its own key space."""

    SAMPLE_CLIENTS = 1
    NEGATIVES = 2
    ORDER = 3
    INIT_LOCAL = 4
    DP_NOISE = 5
    FEATURE_NOISE = 6


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def user_keys(seed: int, stream: Stream, round_idx: int, users) -> np.ndarray:
    """One 64-bit key per user for this (seed, stream, round)."""
    base = np.asarray([seed, int(stream), round_idx], dtype=np.uint64)
    h = _mix(np.atleast_1d(base[0]))
    h = _mix(h ^ base[1])
    h = _mix(h ^ base[2])
    users = np.asarray(users, dtype=np.int64).astype(np.uint64)
    return _mix(h ^ users)


def uniform(seed: int, stream: Stream, round_idx: int, users, counters) -> np.ndarray:
    """Uniform floats in [0, 1), shape (len(users), len(counters)).

    Entry (u, k) depends only on (seed, stream, round, user u, counter k): callers give each draw
    a counter that names it (e.g. epoch, position, negative index), never its place in a batch.
    """
    keys = user_keys(seed, stream, round_idx, users)
    counters = _mix(np.asarray(counters, dtype=np.int64).astype(np.uint64))
    bits = _mix(keys[:, None] ^ counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(seed: int, stream: Stream, round_idx: int, users, size: int,
           block_elements: int = 1 << 22) -> torch.Tensor:
    """Standard normal float32 tensor of shape (len(users), size), by Box-Muller.

    Users are drawn in blocks of about `block_elements` values to bound the float64 and uint64
    temporaries; a user's values do not depend on the blocking."""
    users = np.asarray(users)
    out = torch.empty((len(users), size), dtype=torch.float32)
    step = max(1, block_elements // max(1, size))
    for start in range(0, len(users), step):
        u = uniform(seed, stream, round_idx, users[start:start + step], np.arange(2 * size))
        radius = np.sqrt(-2.0 * np.log1p(-u[:, :size]))
        out[start:start + step] = torch.from_numpy((radius * np.cos(2.0 * np.pi * u[:, size:])).astype(np.float32))
    return out
