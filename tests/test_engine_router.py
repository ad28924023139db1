"""The rank-one router update (engine/router.py) is plain SGD on the router's first layer: it
gives what the dense per-step update gives, with several local steps and weight decay."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_engine import assert_close_dicts, make_cfg, make_dataset, make_population

HUGE_CLIP = 1e12   # clipping that never bites: it only switches the clients to the dense path


@pytest.mark.parametrize("backbone", ["fcf", "fedrap", "pfedrec"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_rank_one_router_steps_equal_dense_router_steps(backbone, weight_decay):
    dataset = make_dataset(n_users=9, n_items=28, min_train=4, max_train=12, seed=21)
    # batch 8 with 2 negatives: 4 positives a step, so users take up to 3 steps an epoch
    options = dict(backbone=backbone, variant="ours", local_epochs=3, batch_size=8, weight_decay=weight_decay)
    rank_one, dense = make_cfg(**options), make_cfg(**options, dp_clip=HUGE_CLIP)
    server, pop_rank_one = make_population(rank_one, dataset)
    _, pop_dense = make_population(dense, dataset)
    glob = server.publish()
    users = np.arange(dataset.n_users)
    up_rank_one, up_dense = pop_rank_one.train(2, users, glob), pop_dense.train(2, users, glob)
    assert_close_dicts(pop_rank_one.state_dict(), pop_dense.state_dict(), atol=2e-5, rtol=2e-4)
    assert_close_dicts(up_rank_one.grads, up_dense.grads, atol=2e-5, rtol=2e-4)
    assert up_rank_one.loss_sum == pytest.approx(up_dense.loss_sum, rel=1e-5)
