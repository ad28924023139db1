"""Optional differential privacy of uploads (SPEC.md section 5 step 4): each client's upload is
clipped to L2 norm S, then Gaussian noise N(0, (sigma S)^2) is added per coordinate, before the
upload leaves the client (so before the server's alpha-weighting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_engine import assert_close_dicts, make_cfg, make_dataset, make_population, reference_round

ROUND = 2


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(n_users=6, n_items=20, min_train=3, max_train=7, seed=13)


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for _, v in sorted(grads.items())])


def _upload(dataset, users, pop_users=None, **overrides):
    cfg = make_cfg(backbone="fedavg", variant="ours", **overrides)
    server, pop = make_population(cfg, dataset, users=pop_users)
    return cfg, pop, pop.train(ROUND, np.asarray(users), server.publish())


def test_single_client_upload_is_clipped_to_norm_s_times_alpha(dataset):
    user = 3
    _, _, raw = _upload(dataset, [user], pop_users=[user])
    alpha = raw.weight
    assert alpha == float(np.sum((dataset.user == user) & (dataset.split == 0))), "FedAvg alpha_u = n_u"
    raw_norm = float(_flat(raw.grads).norm()) / alpha
    clip = raw_norm / 4
    _, _, clipped = _upload(dataset, [user], pop_users=[user], dp_clip=clip)
    norm = float(_flat(clipped.grads).norm())
    assert norm <= clip * alpha * (1 + 1e-5)
    assert norm == pytest.approx(clip * alpha, rel=1e-5)
    # clipping rescales, it does not change the direction
    torch.testing.assert_close(_flat(clipped.grads) / norm, _flat(raw.grads) / (raw_norm * alpha), atol=1e-6, rtol=1e-4)


def test_upload_below_the_clipping_norm_is_unchanged(dataset):
    user = 1
    _, _, raw = _upload(dataset, [user], pop_users=[user])
    raw_norm = float(_flat(raw.grads).norm()) / raw.weight
    _, _, loose = _upload(dataset, [user], pop_users=[user], dp_clip=raw_norm * 10)
    assert_close_dicts(loose.grads, raw.grads, atol=1e-6, rtol=1e-5)


def test_each_client_is_clipped_separately_before_alpha_weighting(dataset):
    users = np.arange(dataset.n_users)
    per_user_norms = []
    for u in users:
        _, _, alone = _upload(dataset, [u], pop_users=[u])
        per_user_norms.append(float(_flat(alone.grads).norm()) / alone.weight)
    clip = float(np.median(per_user_norms))     # clips some users, not others
    cfg, pop, upload = _upload(dataset, users, dp_clip=clip)
    server, fresh = make_population(cfg, dataset)
    expected = reference_round(cfg, fresh, ROUND, users, server.publish())
    assert_close_dicts(upload.grads, expected["grads"], atol=1e-5, rtol=1e-5)
    for u, g in expected["per_user"].items():
        assert float(_flat(g).norm()) <= clip * (1 + 1e-5)


def test_noise_changes_the_upload_with_per_coordinate_std_sigma_s(dataset):
    user, clip, sigma = 2, 1e-3, 0.8
    _, _, clipped = _upload(dataset, [user], pop_users=[user], dp_clip=clip)
    _, _, noisy = _upload(dataset, [user], pop_users=[user], dp_clip=clip, dp_noise=sigma)
    noise = (_flat(noisy.grads) - _flat(clipped.grads)) / noisy.weight      # undo alpha_u
    assert noise.numel() > 400
    assert float(noise.abs().min()) > 0, "every coordinate gets noise"
    assert float(noise.mean()).__abs__() < 0.15 * sigma * clip
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.12)


def test_noise_is_deterministic_for_a_seed_and_differs_between_seeds(dataset):
    users = [0, 4]
    runs = [_upload(dataset, users, dp_clip=0.01, dp_noise=1.0, seed=s)[2] for s in (5, 5, 6)]
    for k in runs[0].grads:
        assert torch.equal(runs[0].grads[k], runs[1].grads[k]), k
    assert not torch.allclose(runs[0].grads["views"], runs[2].grads["views"])


def test_noise_of_a_user_does_not_depend_on_who_else_is_trained(dataset):
    """Keyed by (seed, round, user): user 4's private upload is the same alone or with others."""
    clip, sigma = 0.01, 1.0
    _, _, both = _upload(dataset, [0, 4], dp_clip=clip, dp_noise=sigma)
    _, _, first = _upload(dataset, [0], dp_clip=clip, dp_noise=sigma)
    _, _, second = _upload(dataset, [4], dp_clip=clip, dp_noise=sigma)
    assert_close_dicts(both.grads, {k: first.grads[k] + second.grads[k] for k in both.grads}, atol=1e-6, rtol=1e-5)

