"""The vectorised client update (`ClientPopulation.train`) is the per-user method of SPEC.md
sections 2-5 run for many users at once: it must agree with a plain per-user loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers_engine import (LOCAL_NAME_PARTS, assert_close_dicts, clone_state, make_cfg,
                            make_dataset, make_population, reference_round)

TOL = 1e-5

CASES = {
    "fcf+ours": dict(backbone="fcf", variant="ours"),
    "fedavg+none": dict(backbone="fedavg", variant="none"),
    "fedncf+mlp": dict(backbone="fedncf", variant="mlp"),
    "pfedrec+ours": dict(backbone="pfedrec", variant="ours"),
    "fedrap+ours": dict(backbone="fedrap", variant="ours"),
    "fcf+vbpr": dict(backbone="fcf", variant="vbpr"),
    "fedavg+gate": dict(backbone="fedavg", variant="gate"),
    "fedrap+sum": dict(backbone="fedrap", variant="sum"),
    "fedavg+ours, no head bias": dict(backbone="fedavg", variant="ours", head_bias=False),
    "pfedrec+none, no head bias": dict(backbone="pfedrec", variant="none", head_bias=False),
    "fedrap+ours, no head bias": dict(backbone="fedrap", variant="ours", head_bias=False),
    "fcf+ours, several minibatches per epoch": dict(backbone="fcf", variant="ours", batch_size=4),
    "fedrap+ours, several minibatches per epoch": dict(backbone="fedrap", variant="ours", batch_size=5),
    "fedncf+none, several minibatches per epoch": dict(backbone="fedncf", variant="none", batch_size=3,
                                                        neg_ratio=1),
}


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=9, n_items=24, min_train=2, max_train=9, seed=3)


def _compare_with_reference(cfg, dataset, round_idx=3, users=None):
    server, pop = make_population(cfg, dataset)
    glob = server.publish()
    users = np.arange(dataset.n_users) if users is None else np.asarray(users)
    before = clone_state(pop.state_dict())
    expected = reference_round(cfg, pop, round_idx, users, glob)
    upload = pop.train(round_idx, users, glob)
    # the test is not vacuous: the round changed the local state and produced gradients
    changed = [k for k in before if k != "seen" and not torch.equal(before[k], pop.state_dict()[k])]
    assert changed, "local training left every local parameter untouched"
    assert float(upload.grads["views"].abs().sum()) > 0
    assert_close_dicts(upload.grads, expected["grads"], atol=TOL, rtol=TOL)
    assert upload.weight == pytest.approx(expected["weight"], rel=1e-6)
    assert upload.n_users == len(users)
    assert upload.loss_sum == pytest.approx(expected["loss_sum"], rel=1e-5, abs=1e-6)
    assert_close_dicts(pop.state_dict(), expected["state"], atol=TOL, rtol=TOL)
    return pop, upload, expected


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_vectorised_update_matches_plain_per_user_loop(case, dataset):
    cfg = make_cfg(**CASES[case])
    _compare_with_reference(cfg, dataset)


def test_small_batch_size_splits_each_epoch_into_several_minibatches(dataset):
    cfg = make_cfg(batch_size=4)
    per_batch = cfg.client.batch_size // cfg.client.neg_ratio
    counts = np.bincount(dataset.user[dataset.split == 0], minlength=dataset.n_users)
    assert (counts > 2 * per_batch).any(), "the small-batch cases need users with 3+ minibatches"
    _compare_with_reference(cfg, dataset)


def test_sampled_subset_trains_only_sampled_users_and_leaves_others_untouched(dataset):
    cfg = make_cfg(backbone="fedrap", variant="ours")
    sampled = [1, 4, 5, 8]
    pop, _, _ = _compare_with_reference(cfg, dataset, users=sampled)
    _, fresh = make_population(cfg, dataset)
    others = np.setdiff1d(np.arange(dataset.n_users), sampled)
    for name, value in pop.state_dict().items():
        assert torch.equal(value[others], fresh.state_dict()[name][others]), name


def test_global_update_local_uploads_start_minus_end_over_lr_of_clients_own_copy(dataset):
    cfg = make_cfg(backbone="fcf", variant="ours", global_update="local", batch_size=4)
    server, pop = make_population(cfg, dataset)
    glob = server.publish()
    users = np.arange(dataset.n_users)
    expected = reference_round(cfg, pop, 2, users, glob)
    upload = pop.train(2, users, glob)
    # the check of SPEC.md section 5 step 3, written out: (start - end) / eta_l per client
    want = {k: torch.zeros_like(v) for k, v in glob.items()}
    for u in users:
        end = expected["end_globals"][int(u)]
        assert not torch.equal(end["views"], glob["views"]), "the client's copy of the globals never moved"
        for k in want:
            want[k] += (glob[k] - end[k]) / cfg.client.lr          # alpha_u = 1 for FCF
    assert_close_dicts(upload.grads, want, atol=1e-4, rtol=1e-4)
    assert_close_dicts(pop.state_dict(), expected["state"], atol=TOL, rtol=TOL)


def test_global_update_local_differs_from_accumulating_at_fixed_globals(dataset):
    uploads = {}
    for mode in ("accumulate", "local"):
        cfg = make_cfg(backbone="fcf", variant="ours", global_update=mode, batch_size=4)
        server, pop = make_population(cfg, dataset)
        uploads[mode] = pop.train(1, np.arange(dataset.n_users), server.publish()).grads["views"]
    assert not torch.allclose(uploads["accumulate"], uploads["local"], atol=1e-6)


@pytest.mark.parametrize("backbone,variant", [("fcf", "ours"), ("fedncf", "none"), ("fedrap", "mlp"),
                                              ("pfedrec", "ours"), ("fedavg", "vbpr")])
def test_upload_contains_exactly_the_published_global_tensors(backbone, variant, dataset):
    cfg = make_cfg(backbone=backbone, variant=variant, local_epochs=1)
    server, pop = make_population(cfg, dataset)
    glob = server.publish()
    upload = pop.train(1, np.arange(dataset.n_users), glob)
    assert set(upload.grads) == set(glob)
    for name, value in upload.grads.items():
        assert value.shape == glob[name].shape, name
        assert not any(part in name.split(".")[0] for part in LOCAL_NAME_PARTS), name
    assert not set(upload.grads) & set(pop.state_dict())


def test_fedrap_regulariser_uses_curriculum_weights_and_pushes_personal_table_away(dataset):
    """One step of one user: an item that is neither a positive nor a negative moves only by the
    regulariser  -lambda_t ||P - e||^2/(I d) + mu_t ||e||_1/(I d),  lambda_t = lambda tanh(t/10)."""
    lam, mu, lr = 0.4, 0.3, 0.5
    for round_idx in (1, 4):
        cfg = make_cfg(backbone="fedrap", variant="none", local_epochs=2, fedrap_lambda=lam,
                       fedrap_mu=mu, lr=lr)
        user = 2
        server, pop = make_population(cfg, dataset, users=[user])
        glob = server.publish()
        e = glob["views"][0]
        size = e.numel()
        hist, mask = pop.data.padded_history(np.array([0]))
        touched = set(hist[0].tolist()) | set(pop.negatives(round_idx, np.array([0]), hist, mask)[0].reshape(-1).tolist())
        free = [i for i in range(dataset.n_items) if i not in touched]
        assert free, "need an item the data loss never touches"
        upload = pop.train(round_idx, [user], glob)
        lam_t, mu_t = lam * math.tanh(round_idx / 10), mu * math.tanh(round_idx / 10)
        # step 1 (P = 0): dR/dP = -2 lam_t (P - e)/size = 2 lam_t e / size
        p1 = -lr * 2 * lam_t * e / size
        # step 2 (P = p1): dR/dP = -2 lam_t (p1 - e) / size
        p2 = p1 - lr * (-2 * lam_t * (p1 - e) / size)
        torch.testing.assert_close(pop.state_dict()["table"][0, free], p2[free], atol=1e-7, rtol=1e-5)
        # the personal table moves AWAY from e (the minus sign of the lambda term)
        assert ((p2[free] - e[free]).norm() > e[free].norm())
        # upload for untouched items: dR/de = 2 lam_t (P - e)/size + mu_t sign(e)/size, summed over steps
        grad = (2 * lam_t * (0 - e) + mu_t * torch.sign(e)) / size + (2 * lam_t * (p1 - e) + mu_t * torch.sign(e)) / size
        torch.testing.assert_close(upload.grads["views"][0, free], grad[free], atol=1e-8, rtol=1e-5)


def test_fedrap_curriculum_weight_is_not_zero_after_round_one(dataset):
    """Round t > 1 keeps a non-zero regulariser (the public release zeroes it)."""
    tables = {}
    for lam in (0.0, 0.5):
        cfg = make_cfg(backbone="fedrap", variant="none", fedrap_lambda=lam, fedrap_mu=0.0)
        server, pop = make_population(cfg, dataset)
        pop.train(7, np.arange(dataset.n_users), server.publish())
        tables[lam] = pop.state_dict()["table"].clone()
    assert not torch.allclose(tables[0.0], tables[0.5])
