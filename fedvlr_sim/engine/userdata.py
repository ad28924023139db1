"""Per-user interaction data in the form the engine uses: train sets as CSR, held-out items."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class UserData:
    """Items of a set of users: train history as CSR, one valid and one test item each."""

    users: np.ndarray          # global user ids (int64, sorted)
    train_ptr: np.ndarray      # (U + 1,) offsets into train_items
    train_items: np.ndarray    # concatenated train items per user, each user's a sorted set
    valid: np.ndarray          # (U,)
    test: np.ndarray           # (U,)
    item_counts: np.ndarray | None = None     # (I,) train users of each item, over the whole dataset

    @classmethod
    def from_interactions(cls, n_users: int, user: np.ndarray, item: np.ndarray, split: np.ndarray,
                          n_items: int | None = None) -> "UserData":
        """Build from interaction columns (split 0 train, 1 valid, 2 test; one valid and one test
        row per user). Repeated train interactions with the same item count once. With `n_items`,
        the dataset-wide train count of every item is kept too (for the cold-prior reference and
        popularity-weighted negatives)."""
        train = split == 0
        pairs = np.unique(np.stack([user[train], item[train]], axis=1).astype(np.int64), axis=0)
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=ptr[1:])
        held_out = {}
        for code, name in ((1, "valid"), (2, "test")):
            rows = split == code
            target = np.full(n_users, -1, dtype=np.int64)
            target[user[rows]] = item[rows]
            held_out[name] = target
        item_counts = None if n_items is None else np.bincount(pairs[:, 1], minlength=n_items)
        return cls(np.arange(n_users, dtype=np.int64), ptr, pairs[:, 1].copy(), held_out["valid"], held_out["test"],
                   item_counts)

    def fingerprint(self) -> str:
        """A digest of every array, to check two processes hold the same users' data."""
        digest = hashlib.sha256()
        for array in (self.users, self.train_ptr, self.train_items, self.valid, self.test):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()

    @property
    def train_counts(self) -> np.ndarray:
        return np.diff(self.train_ptr)

    @property
    def never_trained(self) -> np.ndarray | None:
        """(I,) bool: items no user of the dataset has in train (None without item counts)."""
        return None if self.item_counts is None else self.item_counts == 0

    def subset(self, rows: np.ndarray) -> "UserData":
        """The data of local rows `rows` (sorted), as a new UserData."""
        counts = self.train_counts[rows]
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return UserData(self.users[rows], ptr, self._train_items_of(rows), self.valid[rows], self.test[rows],
                        self.item_counts)

    def _train_items_of(self, rows: np.ndarray) -> np.ndarray:
        """The concatenated train items of `rows`, in row order."""
        counts = self.train_counts[rows]
        starts = np.repeat(self.train_ptr[rows] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return self.train_items[starts + np.arange(counts.sum())]

    def padded_history(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Train items of local rows `rows`, padded with item 0: (items (n, T), mask (n, T))."""
        counts = self.train_counts[rows]
        width = max(1, int(counts.max()))
        pos = np.arange(width)[None, :]
        mask = pos < counts[:, None]
        index = np.where(mask, self.train_ptr[rows][:, None] + pos, 0)
        items = np.where(mask, self.train_items[np.minimum(index, len(self.train_items) - 1)], 0)
        return torch.from_numpy(items.astype(np.int64)), torch.from_numpy(mask.astype(np.float32))

    def train_matrix(self, rows: np.ndarray, n_items: int) -> torch.Tensor:
        """Boolean (n, n_items): True where row's user has the item in train (padding excluded)."""
        owner = np.repeat(np.arange(len(rows)), self.train_counts[rows])
        items = self._train_items_of(rows)
        matrix = torch.zeros(len(rows), n_items, dtype=torch.bool)
        matrix[torch.from_numpy(owner), torch.from_numpy(items)] = True
        return matrix

    def excluded(self, rows: np.ndarray, n_items: int, split: str) -> torch.Tensor:
        """Boolean (n, n_items): the items not ranked for each row's held-out item of `split`:
        train items (and the valid item at test time), never the target itself."""
        target = torch.from_numpy((self.valid if split == "valid" else self.test)[rows])
        excluded = self.train_matrix(rows, n_items)
        if split == "test":
            excluded.scatter_(1, torch.from_numpy(self.valid[rows])[:, None], True)
        return excluded.scatter_(1, target[:, None], False)

    def rank_targets(self, rows: np.ndarray, scores: torch.Tensor, split: str) -> np.ndarray:
        """Rank (0 = top) of each row's held-out item among its candidates (see `excluded`).
        `scores` is (n, I), or (n, k, I) for k scorings at once (ranks then (n, k)). Ties count
        against the target, and a non-finite score ranks last: a diverged model never scores."""
        target = torch.from_numpy((self.valid if split == "valid" else self.test)[rows]).to(scores.device)
        excluded = self.excluded(rows, scores.shape[-1], split).to(scores.device)
        if scores.dim() == 3:
            excluded, target = excluded[:, None, :], target[:, None]
        clean = torch.nan_to_num(scores, nan=-torch.inf)
        target_score = clean.gather(-1, target.expand(clean.shape[:-1])[..., None])
        target_score = torch.where(torch.isfinite(target_score), target_score, -torch.inf)
        # int32 counts: summing booleans into the default int64 costs three times as long
        return (((clean >= target_score) & ~excluded).sum(dim=-1, dtype=torch.int32) - 1).cpu().numpy()
