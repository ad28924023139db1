"""Personal item tables (PFedRec, FedRAP) are stored compactly when all users' tables are large,
and the decision depends on the whole federation, never on how users are split into shards."""

import numpy as np
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.client import ClientPopulation, table_dtype
from fedvlr_sim.engine.userdata import UserData


def two_users() -> UserData:
    return UserData.from_interactions(2, np.array([0, 0, 0, 1, 1, 1]), np.array([1, 2, 3, 4, 5, 6]),
                                      np.array([0, 1, 2, 0, 1, 2]))


def test_auto_storage_switches_to_bf16_above_two_gib_of_float32():
    assert table_dtype("auto", n_users=1000, n_items=100, width=64) == torch.float32
    assert table_dtype("auto", n_users=15_908, n_items=2_528, width=64) == torch.bfloat16


def test_explicit_storage_is_respected():
    assert table_dtype("bfloat16", n_users=2, n_items=10, width=8) == torch.bfloat16
    assert table_dtype("float32", n_users=15_908, n_items=2_528, width=64) == torch.float32


def test_a_small_shard_of_a_large_federation_stores_tables_like_the_federation():
    cfg = RunConfig.create(backbone="fedrap", variant="none", dim=8)
    small_alone = ClientPopulation(cfg.model, cfg.client, cfg.seed, two_users(), n_items=100)
    shard_of_many = ClientPopulation(cfg.model, cfg.client, cfg.seed, two_users(), n_items=100, total_users=10**6)
    assert small_alone.params["table"].dtype == torch.float32
    assert shard_of_many.params["table"].dtype == torch.bfloat16
    assert shard_of_many.params["table"].shape == (2, 100, 8)
