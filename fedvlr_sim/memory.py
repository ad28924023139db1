"""The memory a run will need, estimated from its configuration and dataset before anything is
allocated, so that an impossible size ends in a one-line error instead of an allocation failure
deep inside torch.

The estimate adds the tensors a run holds at once (float32 unless stated):

- server parameters: the item ID table |I| x d and the feature projections, each with its
  gradient and two optimiser moments;
- server views: |G| x |I| x w, with the autograd graph of the operators and the view gradient;
- local state: every user's persistent state (router, head or user vectors, and for PFedRec and
  FedRAP the personal |I| x w table, in its storage dtype);
- a work chunk: the elements `--chunk-elements` allows per chunk of users, but at least one
  user's (the longest history's training, or scoring every item), and the negatives drawn for
  the chunk's users (int64);
- on a Ray backend on this machine, one copy of the views per client shard.

It is a lower bound of the peak, not a measurement: a run that passes may still need more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fedvlr_sim.config import RunConfig
from fedvlr_sim.errors import FedVLRError

FLOAT = 4
INT64 = 8
GIB = 1024**3
VIEW_COPIES = 3          # the views, the operators' graph behind them, their gradient
PARAMETER_COPIES = 4     # value, gradient, two Adam moments


@dataclass(frozen=True)
class Need:
    """One part of a run's memory: what it is, its bytes, and the options that size it."""

    what: str
    bytes: int
    options: tuple[str, ...]


def run_needs(cfg: RunConfig, n_users: int, n_items: int, feature_dims: int, longest_history: int) -> list[Need]:
    """The parts of the memory a run of `cfg` holds at once (see the module docstring)."""
    from fedvlr_sim.engine.client import table_dtype
    from fedvlr_sim.engine.model import local_shapes

    model, client = cfg.model, cfg.client
    variant = model.variant_def
    width, views = variant.width(model.dim), variant.n_views
    shapes = local_shapes(model, width, n_items)
    table_bytes = table_dtype(client.table_dtype, n_users, n_items, width).itemsize
    per_user_state = sum(math.prod(shape) * (table_bytes if name == "table" else FLOAT) for name, shape in shapes.items())
    view_floats = views * n_items * width
    one_user = _one_user_elements(cfg, n_items, width, views, longest_history)
    chunk_elements = max(one_user, min(client.chunk_elements, n_users * one_user))
    chunk_users = min(n_users, max(1, client.chunk_elements // one_user))
    needs = [
        Need(f"server parameters ({n_items} items x d={model.dim}, projections of {feature_dims} feature dims)",
             PARAMETER_COPIES * FLOAT * (n_items + feature_dims) * model.dim, ("--dim",)),
        Need(f"server views ({views} x {n_items} items x {width})", VIEW_COPIES * FLOAT * view_floats, ("--dim",)),
        Need(f"local state of {n_users} users ({readable(per_user_state)} each)", n_users * per_user_state,
             ("--dim", "--router-hidden", "--table-dtype")),
        Need(f"a work chunk of {chunk_elements} elements", FLOAT * chunk_elements,
             ("--chunk-elements", "--neg-ratio", "--dim")),
        Need(f"the negatives of {chunk_users} users ({client.local_epochs} epochs x {longest_history} positions x "
             f"{client.neg_ratio})", INT64 * chunk_users * client.local_epochs * longest_history * client.neg_ratio,
             ("--local-epochs", "--neg-ratio")),
    ]
    if cfg.launch.backend == "ray" and not cfg.launch.address:
        shards = min(cfg.launch.shards or os.cpu_count() or 1, n_users)
        needs.append(Need(f"the views in {shards} client shards", shards * FLOAT * view_floats, ("--shards", "--dim")))
    return needs


def _one_user_elements(cfg: RunConfig, n_items: int, width: int, views: int, history: int) -> int:
    """Tensor elements one user with `history` train items adds to a training or scoring chunk
    (as the client population counts them when it forms chunks)."""
    backbone, client = cfg.model.backbone_def, cfg.client
    training = history * (1 + client.neg_ratio) * views * width * 4
    if backbone.has_item_table:
        training += n_items * width * (views + 4)
    if client.global_update == "local" or client.dp_clip > 0:
        training += 3 * n_items * width * views
    scoring = n_items * width * (views + 4) + history * width * views
    return max(training, scoring)


def check_memory(cfg: RunConfig, dataset) -> None:
    """Raise a one-line FedVLRError when the run of `cfg` on `dataset` would need more memory
    than this machine has available (runs on a cluster given by --address are not checked)."""
    if cfg.launch.address:
        return
    import psutil

    feature_dims = _feature_dims(dataset) if cfg.model.variant_def.uses_features else 0
    needs = run_needs(cfg, dataset.n_users, dataset.n_items, feature_dims, _longest_history(dataset))
    total = sum(need.bytes for need in needs)
    available = psutil.virtual_memory().available
    if total > available:
        largest = max(needs, key=lambda need: need.bytes)
        raise FedVLRError(f"the run needs about {total / GIB:.1f} GiB of memory, more than the {available / GIB:.1f} GiB "
                          f"available here; the largest part is {largest.what}: {readable(largest.bytes)}, sized by "
                          f"{', '.join(largest.options)}")


def readable(n_bytes: float) -> str:
    """A byte count in the largest binary unit that keeps it at least 1 (e.g. 71.9 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024


def _feature_dims(dataset) -> int:
    return sum(feats.shape[1] for feats in (dataset.vision, dataset.text) if feats is not None)


def _longest_history(dataset) -> int:
    from fedvlr_sim.datasets.dataset import TRAIN

    train_users = np.asarray(dataset.user)[np.asarray(dataset.split) == TRAIN]
    return int(np.bincount(train_users, minlength=1).max()) if len(train_users) else 0
