"""Personal item tables stepped at the batch's rows (engine/table.py) are plain SGD on the whole
table: PFedRec and FedRAP give what the dense per-step update gives, with tables that start away
from zero, weight decay, FedRAP's regulariser at full strength and several rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.backbones import MixtureL1
from helpers_engine import assert_close_dicts, make_cfg, make_dataset, make_population

HUGE_CLIP = 1e12   # clipping that never bites: it only switches the clients to the dense path


def _trained_pair(options: dict, rounds: int = 3):
    """Sparse-table and dense populations trained alike for `rounds` rounds from the same
    non-zero tables; returns (sparse, dense, uploads of each round as pairs)."""
    dataset = make_dataset(n_users=9, n_items=28, min_train=4, max_train=12, seed=21)
    sparse_cfg, dense_cfg = make_cfg(**options), make_cfg(**options, dp_clip=HUGE_CLIP)
    server, sparse = make_population(sparse_cfg, dataset)
    _, dense = make_population(dense_cfg, dataset)
    assert sparse.sparse_tables and not dense.sparse_tables
    start = torch.randn(sparse.params["table"].shape, generator=torch.Generator().manual_seed(0)) * 0.3
    for pop in (sparse, dense):
        pop.params["table"] = start.clone()
    glob, uploads = server.publish(), []
    users = np.arange(dataset.n_users)
    for round_idx in range(1, rounds + 1):
        uploads.append((sparse.train(round_idx, users, glob), dense.train(round_idx, users, glob)))
    return sparse, dense, uploads


@pytest.mark.parametrize("backbone,variant,extra", [
    ("fedrap", "ours", {}),
    ("fedrap", "ours", {"weight_decay": 0.05}),
    ("fedrap", "none", {"weight_decay": 0.05}),
    ("fedrap", "ours", {"modality_views": True}),
    ("pfedrec", "ours", {"weight_decay": 0.05}),
], ids=["fedrap+ours", "fedrap+ours decay", "fedrap+none decay", "fedrap+ours six views", "pfedrec+ours decay"])
def test_sparse_table_steps_equal_dense_table_steps(backbone, variant, extra):
    # batch 8 with 2 negatives: 4 positives a step, so users take up to 3 steps an epoch
    options = dict(backbone=backbone, variant=variant, local_epochs=3, batch_size=8, lr=0.5,
                   fedrap_lambda=2.0, fedrap_mu=0.5) | extra
    sparse, dense, uploads = _trained_pair(options)
    assert_close_dicts(sparse.state_dict(), dense.state_dict(), atol=5e-5, rtol=5e-4)
    for up_sparse, up_dense in uploads:
        assert_close_dicts(up_sparse.grads, up_dense.grads, atol=5e-5, rtol=5e-4)
        assert up_sparse.loss_sum == pytest.approx(up_dense.loss_sum, rel=1e-5)


def test_fedrap_regulariser_changes_the_sparse_round():
    """The equivalence above is not vacuous: FedRAP's regulariser moves the tables and uploads."""
    options = dict(backbone="fedrap", variant="ours", local_epochs=3, batch_size=8, lr=0.5)
    strong, _, strong_uploads = _trained_pair(options | {"fedrap_lambda": 2.0, "fedrap_mu": 0.5}, rounds=2)
    off, _, off_uploads = _trained_pair(options | {"fedrap_lambda": 0.0, "fedrap_mu": 0.0}, rounds=2)
    assert not torch.allclose(strong.params["table"], off.params["table"], atol=1e-4)
    assert not torch.allclose(strong_uploads[-1][0].grads["views"], off_uploads[-1][0].grads["views"], atol=1e-5)


@pytest.mark.parametrize("n_users", [7, 300])   # one block of users, and 256 + a partial block
def test_l1_of_mixtures_matches_the_dense_formula(n_users):
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(3, 500, generator=generator)
    views[:, :100] = views[:, :100].abs()          # entries positive in every view
    views[:, 100:150] = -views[:, 100:150].abs()   # negative in every view
    views[:, 150:160] = 0.0                        # zero in every view
    views[1, 160:170] = 0.0                        # mixed with a zero
    weights = torch.softmax(torch.randn(n_users, 3, generator=generator), dim=1).requires_grad_()
    coef = torch.rand(n_users, generator=generator)
    l1 = MixtureL1(views, block=64)
    value, grad_w = l1(weights.detach(), coef)
    l1(weights.detach(), 2 * coef)                 # the views' gradient adds up over calls
    mixtures = weights @ views
    want_value = mixtures.abs().sum(1)
    (want_grad_w,) = torch.autograd.grad(want_value.sum(), weights)
    want_grad_views = (3 * coef[:, None] * weights.detach()).T @ torch.sign(mixtures.detach())
    torch.testing.assert_close(value, want_value.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad_w, want_grad_w, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(l1.view_grad(), want_grad_views, atol=1e-5, rtol=1e-5)
