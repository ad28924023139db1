"""The server step (SPEC.md section 5 step 5): the alpha-weighted mean of the uploaded view
gradients, pulled back through the fusion operators, is the gradient of the weighted mean of
the clients' losses with respect to the operator parameters and D."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedvlr_sim.engine.messages import Upload
from helpers_engine import alpha_of, make_cfg, make_dataset, make_population, ref_loss


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=8, n_items=20, min_train=2, max_train=6, seed=11)


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("backbone,variant", [("fcf", "ours"), ("fedncf", "gate"), ("fedavg", "vbpr"),
                                              ("fedrap", "mlp")])
def test_server_step_equals_sgd_on_autograd_of_summed_client_losses(backbone, variant, dataset):
    """One local step per client (so each upload is the gradient at the round's start); the
    server step must equal SGD(lr) on  sum_u alpha_u L_u(g(V, C, D; gamma)) / sum_u alpha_u,
    differentiated with plain autograd through the server's own fusion module."""
    server_lr = 0.7
    cfg = make_cfg(backbone=backbone, variant=variant, local_epochs=1, batch_size=64, server_lr=server_lr)
    server, pop = make_population(cfg, dataset)
    reference = copy.deepcopy(server)
    start_local = pop.state_dict()
    before = _params(server)

    round_idx = 2
    glob = server.publish()
    users = np.arange(dataset.n_users)
    upload = pop.train(round_idx, users, glob)
    server.apply(upload)

    # the same objective, built directly through the fusion operators
    views = reference.fusion()
    towers = {name.replace("_", "."): p for name, p in reference.tower.items()}
    objective, weight = 0.0, 0.0
    for row, u in enumerate(pop.data.users):
        items = torch.from_numpy(pop.data.train_items[pop.data.train_ptr[row]:pop.data.train_ptr[row + 1]].copy())
        neg = pop.negatives(round_idx, np.array([row]), items[None], torch.ones(1, len(items)))[0, 0]     # epoch 0
        local = {k: v[row].float() for k, v in start_local.items() if k != "seen"}
        if backbone == "pfedrec":
            local["table"] = torch.zeros_like(local["table"])
        alpha = alpha_of(backbone, len(items))
        objective = objective + alpha * ref_loss(cfg, round_idx, local, {"views": views} | towers, items, items, neg)
        weight += alpha
    objective = objective / weight
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective, [dict(reference.named_parameters())[n] for n in names])

    after = _params(server)
    assert set(names) == set(after), "every server parameter takes part in the objective"
    moved = 0
    for name, grad in zip(names, grads):
        torch.testing.assert_close(after[name], before[name] - server_lr * grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
        moved += int(not torch.equal(after[name], before[name]))
    assert moved == len(names), "some server parameter did not move"


def test_pull_back_is_vector_jacobian_product_of_mean_view_gradient(dataset):
    """For any uploaded view gradient G with total weight W: delta(theta) = -lr d<F(theta), G/W>/d theta,
    and that includes the ID table D (fusion.ids) and every operator's parameters."""
    cfg = make_cfg(backbone="fcf", variant="ours", server_lr=0.3)
    server, _ = make_population(cfg, dataset)
    reference = copy.deepcopy(server)
    glob = server.publish()
    g = torch.randn(glob["views"].shape, generator=torch.Generator().manual_seed(5))
    server.apply(Upload({"views": g.clone()}, weight=4.0, loss_sum=0.0, n_users=4))

    inner = (reference.fusion() * g).sum() / 4.0
    params = dict(reference.named_parameters())
    grads = torch.autograd.grad(inner, list(params.values()))
    new = dict(server.named_parameters())
    assert "fusion.ids" in params
    assert any(n.startswith("fusion.gate") for n in params) and any(n.startswith("fusion.mlp") for n in params)
    for (name, p), grad in zip(params.items(), grads):
        torch.testing.assert_close(new[name].detach(), p.detach() - 0.3 * grad, atol=1e-6, rtol=1e-5)


def test_server_aggregation_is_weighted_mean_of_uploads(dataset):
    """g = sum_u alpha_u g_u / sum_u alpha_u: doubling every upload and every weight changes nothing."""
    cfg = make_cfg(backbone="fedavg", variant="none", server_lr=1.0)
    results = []
    for factor in (1.0, 2.0):
        server, _ = make_population(cfg, dataset)
        glob = {k: v.clone() for k, v in server.publish().items()}
        g = torch.randn(glob["views"].shape, generator=torch.Generator().manual_seed(1))
        server.apply(Upload({"views": g * factor}, weight=3.0 * factor, loss_sum=0.0, n_users=3))
        results.append(server.fusion.ids.detach().clone())
        torch.testing.assert_close(results[-1], glob["views"][0] - g[0] / 3.0)
    torch.testing.assert_close(results[0], results[1])


def test_apply_without_publish_in_the_round_is_refused(dataset):
    cfg = make_cfg()
    server, _ = make_population(cfg, dataset)
    glob = server.publish()
    server.apply(Upload({k: torch.zeros_like(v) for k, v in glob.items()}, 1.0, 0.0, 1))
    with pytest.raises(RuntimeError):
        server.apply(Upload({k: torch.zeros_like(v) for k, v in glob.items()}, 1.0, 0.0, 1))


@pytest.mark.parametrize("backbone,variant", [("fcf", "none"), ("fedncf", "ours")])
def test_published_globals_are_a_snapshot_unchanged_by_the_server_step(backbone, variant, dataset):
    cfg = make_cfg(backbone=backbone, variant=variant)
    server, _ = make_population(cfg, dataset)
    glob = server.publish()
    snapshot = {k: v.clone() for k, v in glob.items()}
    g = {k: torch.ones_like(v) for k, v in glob.items()}
    server.apply(Upload(g, weight=1.0, loss_sum=0.0, n_users=1))
    assert not torch.equal(server.publish()["views"], snapshot["views"]), "the step moved the views"
    for name in glob:
        assert torch.equal(glob[name], snapshot[name]), f"published {name} changed after apply()"
