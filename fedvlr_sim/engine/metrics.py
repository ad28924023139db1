"""Ranking metrics, reference rankings and the Spearman correlation (SPEC.md section 6)."""

from __future__ import annotations

import numpy as np
import torch

CUTOFFS = (10, 20, 50)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@K and NDCG@K averaged over users, for K in 10, 20, 50; rank 0 is the top.

    HR@K = 1 if rank < K; NDCG@K = 1 / log2(rank + 2) if rank < K, else 0 (one held-out item)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in CUTOFFS:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else float("nan")
        out[f"ndcg@{k}"] = float((hit / np.log2(ranks + 2)).mean()) if len(ranks) else float("nan")
    return out


def expected_random_metrics(candidates: np.ndarray) -> dict[str, float]:
    """The exact expected metrics of a uniformly random ranking, averaged over users, where
    user u's held-out item is one of `candidates[u]` ranked items (its rank is uniform)."""
    n = np.asarray(candidates, dtype=np.int64)
    out = {}
    for k in CUTOFFS:
        discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2))])   # sum over r < m
        top = np.minimum(k, n)
        out[f"hr@{k}"] = float((top / n).mean()) if len(n) else float("nan")
        out[f"ndcg@{k}"] = float((discounts[top] / n).mean()) if len(n) else float("nan")
    return out


def reference_scores(train_item_counts: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores of the reference rankings, as total orders: `popularity` (train interactions per
    item, ties by lower item id) and `cold_first` (items never seen in train first, in a random
    order drawn from `seed` so no item id is favoured, then by popularity)."""
    counts = np.asarray(train_item_counts, dtype=np.float64)
    popularity = counts - np.arange(len(counts)) / (len(counts) + 1.0)
    random_order = np.random.default_rng(seed).random(len(counts))
    cold_first = np.where(counts == 0, counts.max() + 2.0 + random_order, popularity)
    return {"popularity": popularity, "cold_first": cold_first}


def reference_ranks(data, train_item_counts: np.ndarray, seed: int = 0, split: str = "test",
                    block_elements: int = 1 << 24) -> dict[str, np.ndarray]:
    """Ranks of every user's held-out item of `split` under each reference ranking (`data` is a
    UserData), scored in blocks of users of about `block_elements` scores."""
    rows = np.arange(len(data.users))
    out = {}
    for name, scores in reference_scores(train_item_counts, seed).items():
        ranks = np.zeros(len(rows), dtype=np.int64)
        for chunk in np.array_split(rows, max(1, len(rows) * len(scores) // block_elements)):
            ranks[chunk] = data.rank_targets(chunk, torch.from_numpy(scores).expand(len(chunk), -1), split)
        out[name] = ranks
    return out


COLD_PRIOR_BETAS = (0.5, 1.0, 2.0, 4.0, 8.0)   # prior weights, in standard deviations of a user's scores


def with_cold_prior(scores: torch.Tensor, never_trained: torch.Tensor) -> torch.Tensor:
    """The model's scores (n, I) and, for each beta of COLD_PRIOR_BETAS, the "cold prior"
    reference: each user's scores standardised, plus beta for every item never seen in train.
    Shape (n, 1 + len(COLD_PRIOR_BETAS), I); entry 0 is the model itself."""
    standard = (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp_min(1e-12)
    betas = torch.tensor(COLD_PRIOR_BETAS, dtype=scores.dtype, device=scores.device)
    priors = betas[:, None] * never_trained.to(scores.dtype)[None, :]
    return torch.cat([scores[:, None], standard[:, None] + priors[None]], dim=1)


def best_cold_prior(valid_ranks: np.ndarray, test_ranks: np.ndarray, metric: str, split_metrics) -> dict:
    """The cold-prior reference with its beta chosen on valid `metric`: ranks (U, B) per beta;
    `split_metrics` turns test ranks into the split test metrics."""
    valid = [metrics_from_ranks(valid_ranks[:, b]) for b in range(valid_ranks.shape[1])]
    best = max(range(len(valid)), key=lambda b: valid[b][metric])
    return {"beta": COLD_PRIOR_BETAS[best], "valid": valid[best], "test": split_metrics(test_ranks[:, best])}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]
