"""The fusion-input choices of SPEC.md section 10 (centred content features, views normalised to
a common scale, modality-only views for the router) and the training options beside them
(local L2 weight decay, early stopping counted after a minimum number of rounds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlr_sim.config import PAPER_VIEWS, PRESETS, RunConfig
from fedvlr_sim.engine.callbacks import BestRound, EarlyStopping
from fedvlr_sim.engine.fusion import Fusion
from fedvlr_sim.engine.simulation import local_federation
from helpers_engine import make_cfg, make_dataset, make_population, run_federation

N_ITEMS, FEAT, D = 12, 6, 8


def _fusion(**options):
    """+ours fusion with the paper's three raw views unless `options` choose otherwise."""
    cfg = RunConfig.create(variant="ours", dim=D, **(PAPER_VIEWS | options))
    g = torch.Generator().manual_seed(0)
    shift = torch.full((FEAT,), 3.0)   # a dominant common direction, as real CLIP rows have
    v, c = torch.randn(N_ITEMS, FEAT, generator=g) + shift, torch.randn(N_ITEMS, FEAT, generator=g) + shift
    return Fusion(cfg.model, N_ITEMS, v, c, torch.Generator().manual_seed(1))


def test_centred_features_have_a_zero_item_mean():
    fusion = _fusion(center_features=True)
    for m in ("vision", "text"):
        torch.testing.assert_close(getattr(fusion, m).mean(dim=0), torch.zeros(FEAT), atol=1e-6, rtol=0)
    assert getattr(_fusion(), "vision").mean().abs() > 1.0, "off by default: the paper's inputs"


def test_rms_normalised_views_have_unit_rms_per_item():
    views = _fusion(view_norm="rms")()
    torch.testing.assert_close(views.pow(2).mean(dim=2), torch.ones(3, N_ITEMS), atol=1e-4, rtol=0)


def _shared_share(view: torch.Tensor) -> float:
    """Norm of a view's mean item row relative to its RMS row norm: 1 when every item is the same."""
    view = view.detach()
    return float(view.mean(dim=0).norm() / view.pow(2).sum(dim=1).mean().sqrt())


def test_centred_views_lose_the_direction_every_item_shares_then_take_unit_rms_per_item():
    """A direction shared by every item adds the same to each item's score; left in, it is most of
    a unit-RMS view (99.8% of the MLP view's energy on KU) and the items differ by the rest."""
    rms, centred = _fusion(view_norm="rms")(), _fusion(view_norm="center")()
    for j in range(3):
        assert _shared_share(rms[j]) > 0.5 > 0.2 > _shared_share(centred[j])
    raw = _fusion()()
    expected = raw - raw.mean(dim=1, keepdim=True)
    expected = expected * torch.rsqrt(expected.pow(2).mean(dim=2, keepdim=True) + 1e-6)
    torch.testing.assert_close(centred, expected)


def test_auto_view_norm_centres_the_views_for_fedncf_only():
    """docs/defaults.md Q7: FedNCF's ReLU tower stalls on uncentred views; the others keep rms."""
    for backbone in ("fedavg", "fcf", "pfedrec", "fedrap"):
        assert RunConfig.create(backbone=backbone, variant="ours").model.variant_def.view_norm == "rms"
    assert RunConfig.create(backbone="fedncf", variant="mlp").model.variant_def.view_norm == "center"
    assert RunConfig.create(backbone="fedncf", variant="ours", view_norm="rms").model.variant_def.view_norm == "rms"


def test_modality_views_follow_the_operator_views():
    fusion = _fusion(modality_views=True)
    views = fusion()
    assert views.shape == (6, N_ITEMS, D) and fusion.n_views == 6
    linear, norm = fusion.project["vision"]
    x_v = torch.layer_norm(fusion.vision @ linear.weight.T + linear.bias, (D,), norm.weight, norm.bias)
    torch.testing.assert_close(views[3], x_v)
    torch.testing.assert_close(views[5], fusion.ids)


def test_by_default_the_router_mixes_six_unit_rms_views_and_the_paper_preset_three_raw_ones():
    """docs/defaults.md (Q4-Q6): normalised views with modality-only views beside them are the default."""
    default = RunConfig.create(variant="ours").model
    assert (default.variant_def.view_norm, default.modality_views, default.variant_def.n_views) == ("rms", True, 6)
    views = _fusion(view_norm="rms", modality_views=True)()   # (the 1e-6 guard shows on the small ID rows)
    torch.testing.assert_close(views.pow(2).mean(dim=2), torch.ones(6, N_ITEMS), atol=1e-3, rtol=0)
    paper = RunConfig.create(variant="ours", **PRESETS["paper"]).model
    assert (paper.view_norm, paper.variant_def.n_views) == ("none", 3)


def test_modality_views_are_for_the_router_only():
    assert RunConfig.create(variant="mlp", modality_views=True).model.variant_def.n_views == 1
    assert RunConfig.create(variant="ours", modality_views=True).model.variant_def.n_views == 6


def test_a_run_with_every_fusion_choice_trains_routers_over_six_views():
    dataset = make_dataset(n_users=10, n_items=25, seed=3)
    cfg = make_cfg(rounds=2, center_features=True, view_norm="rms", modality_views=True)
    fed = local_federation(cfg, dataset)
    summary = run_federation(cfg, fed)
    weights = np.asarray(fed.callback(BestRound).router_weights)
    assert weights.shape == (10, 6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert 0 <= summary["test"]["hr@50"] <= 1


def test_weight_decay_shrinks_local_parameters_by_one_minus_lr_times_decay_per_step():
    dataset = make_dataset(n_users=4, n_items=20, seed=5)
    plain, decayed = (make_cfg(variant="none", local_epochs=1, lr=0.5, weight_decay=wd) for wd in (0.0, 0.2))
    server, pop_plain = make_population(plain, dataset)
    _, pop_decay = make_population(decayed, dataset)
    start = pop_plain.params["user"].clone()
    glob = server.publish()
    pop_plain.train(1, np.arange(4), glob)
    pop_decay.train(1, np.arange(4), glob)
    # one local step each: decayed = (1 - lr wd) start - lr g = plain - lr wd start
    torch.testing.assert_close(pop_decay.params["user"], pop_plain.params["user"] - 0.5 * 0.2 * start,
                               atol=1e-6, rtol=1e-5)


class _Fed:
    def __init__(self, round_idx, best_round):
        self.round, self.stop_reason = round_idx, ""
        self.best = BestRound("ndcg@50")
        self.best.round, self.best.best = best_round, {"valid": {"ndcg@50": 0.1}}

    def callback(self, kind):
        return self.best

    def stop(self, reason):
        self.stop_reason = reason


@pytest.mark.parametrize(("round_idx", "best_round", "min_rounds", "stops"), [
    (11, 1, 0, True),      # patience 10 after round 1
    (11, 1, 20, False),    # still inside the minimum
    (30, 1, 20, True),     # 10 rounds after the minimum
    (29, 1, 20, False),
    (35, 30, 20, False),   # a later best resets the count
])
def test_patience_is_counted_only_after_the_minimum_rounds(round_idx, best_round, min_rounds, stops):
    fed = _Fed(round_idx, best_round)
    EarlyStopping(patience=10, min_rounds=min_rounds).on_round_end(fed, None)
    assert bool(fed.stop_reason) == stops


def test_the_report_names_all_six_views_of_a_router_with_modality_views(tmp_path):
    from fedvlr_sim.runner import execute, new_run

    dataset = make_dataset(n_users=10, n_items=25, seed=3)
    cfg = make_cfg(rounds=1, modality_views=True).replace(out=str(tmp_path / "run"))
    with new_run(cfg) as (cfg, run_dir):
        execute(cfg, dataset, run_dir)
    assert np.load(run_dir / "router_weights.npy").shape == (10, 6)
    assert (run_dir / "router_weights.png").stat().st_size > 0
