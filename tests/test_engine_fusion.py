"""The fusion operators of SPEC.md section 2 and the modality ablations of section 4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedvlr_sim.config import PAPER_VIEWS, RunConfig
from fedvlr_sim.engine.fusion import Fusion

N_ITEMS, FEAT, D = 10, 6, 8


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(N_ITEMS, FEAT, generator=g)
    c = torch.randn(N_ITEMS, FEAT, generator=g)
    return v / v.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)


def _fusion(variant="ours", ablation=None, seed=0, vision=None, text=None):
    """The operators as SPEC section 2 states them: the paper's three raw views (no RMS
    normalisation, no modality-only views; tests/test_engine_fusion_inputs.py covers those)."""
    cfg = RunConfig.create(variant=variant, dim=D, ablation=ablation or {}, **PAPER_VIEWS)
    v, c = _features()
    return Fusion(cfg.model, N_ITEMS, v if vision is None else vision, c if text is None else text,
                  torch.Generator().manual_seed(seed))


def _inputs(f: Fusion) -> dict[str, torch.Tensor]:
    """x_v = LN(P_v V), x_c = LN(P_c C), x_d = D, by hand (zeros for a dropped modality)."""
    out = {"id": f.ids}
    for m in ("vision", "text"):
        if m in f.project:
            linear, norm = f.project[m]
            out[m] = torch.layer_norm(getattr(f, m) @ linear.weight.T + linear.bias, (D,), norm.weight, norm.bias)
        else:
            out[m] = torch.zeros(N_ITEMS, D)
    return out


def test_ours_broadcasts_sum_mlp_gate_views_of_items_by_width():
    f = _fusion()
    assert f().shape == (3, N_ITEMS, D)
    assert f.operators == ("sum", "mlp", "gate")


def test_projections_are_linear_to_d_then_layernorm_with_unit_gain():
    f = _fusion()
    for m in ("vision", "text"):
        linear, norm = f.project[m]
        assert (linear.in_features, linear.out_features) == (FEAT, D)
        assert isinstance(norm, nn.LayerNorm) and torch.equal(norm.weight, torch.ones(D))


def test_sum_view_is_x_v_plus_x_c_plus_x_d():
    f = _fusion()
    x = _inputs(f)
    torch.testing.assert_close(f()[0], x["vision"] + x["text"] + x["id"])


def test_mlp_view_is_three_layer_relu_mlp_3d_2d_2d_d_of_concatenated_inputs():
    f = _fusion()
    layers = [m for m in f.mlp if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in layers] == [(3 * D, 2 * D), (2 * D, 2 * D), (2 * D, D)]
    x = _inputs(f)
    h = torch.cat([x["vision"], x["text"], x["id"]], dim=1)
    for i, layer in enumerate(layers):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = torch.relu(h)
    torch.testing.assert_close(f()[1], h)


def test_gate_view_multiplies_each_input_by_its_sigmoid_gate():
    f = _fusion()
    with torch.no_grad():     # constant gates: W = 0, b = (b_v, b_c, b_d)
        f.gate.weight.zero_()
        f.gate.bias.copy_(torch.cat([torch.full((D,), 2.0), torch.full((D,), -1.0), torch.full((D,), 0.5)]))
    x = _inputs(f)
    s = torch.sigmoid
    expected = s(torch.tensor(2.0)) * x["vision"] + s(torch.tensor(-1.0)) * x["text"] + s(torch.tensor(0.5)) * x["id"]
    torch.testing.assert_close(f()[2], expected)


def test_gate_view_follows_spec_formula_with_learned_gates():
    f = _fusion()
    x = _inputs(f)
    stacked = torch.cat([x["vision"], x["text"], x["id"]], dim=1)
    a = torch.sigmoid(stacked @ f.gate.weight.T + f.gate.bias)
    expected = a[:, :D] * x["vision"] + a[:, D:2 * D] * x["text"] + a[:, 2 * D:] * x["id"]
    torch.testing.assert_close(f()[2], expected)


def test_changing_gate_parameters_changes_gate_view_only():
    f = _fusion()
    before = f().detach()
    with torch.no_grad():
        f.gate.bias.add_(1.0)
    after = f().detach()
    assert not torch.allclose(after[2], before[2]), "the gate values do not reach the features"
    torch.testing.assert_close(after[:2], before[:2])


def _by_hand(f: Fusion, op: str) -> torch.Tensor:
    x = _inputs(f)
    stacked = torch.cat([x["vision"], x["text"], x["id"]], dim=1)
    if op == "sum":
        return x["vision"] + x["text"] + x["id"]
    if op == "mlp":
        return f.mlp(stacked)
    a = torch.sigmoid(f.gate(stacked))
    return a[:, :D] * x["vision"] + a[:, D:2 * D] * x["text"] + a[:, 2 * D:] * x["id"]


@pytest.mark.parametrize("variant", ["sum", "mlp", "gate"])
def test_single_operator_variants_broadcast_that_operator_alone(variant):
    single = _fusion(variant)
    assert single.operators == (variant,)
    assert single().shape == (1, N_ITEMS, D)
    torch.testing.assert_close(single()[0], _by_hand(single, variant))
    for other in {"mlp", "gate"} - {variant}:
        assert not hasattr(single, other), f"{variant} alone should not build the {other} operator"


def test_none_variant_broadcasts_the_id_table_and_has_no_operators():
    f = _fusion("none")
    assert torch.equal(f()[0], f.ids)
    assert [n for n, _ in f.named_parameters()] == ["ids"]


def test_vbpr_view_is_id_table_beside_learned_content_projection():
    f = _fusion("vbpr")
    assert f.width == 2 * D
    content = torch.cat([f.vision, f.text], dim=1)
    assert f.visual_map.bias is None and f.visual_map.weight.shape == (D, 2 * FEAT)
    torch.testing.assert_close(f()[0], torch.cat([f.ids, content @ f.visual_map.weight.T], dim=1))


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_dropped_feature_modality_enters_operators_as_zeros(modality):
    f = _fusion(ablation={modality: "drop"})
    assert modality not in f.project, "the dropped modality's projection is removed"
    assert torch.count_nonzero(getattr(f, modality)) == 0
    x = _inputs(f)
    assert torch.count_nonzero(x[modality]) == 0
    views = f()
    torch.testing.assert_close(views[0], x["vision"] + x["text"] + x["id"])
    # the views do not depend on the dropped features at all
    v, c = _features(seed=9)
    other = _fusion(ablation={modality: "drop"}, vision=v, text=_features()[1]) if modality == "vision" \
        else _fusion(ablation={modality: "drop"}, vision=_features()[0], text=c)
    torch.testing.assert_close(other(), views)


def test_dropped_id_enters_operators_as_zeros_and_is_not_learned():
    f = _fusion(ablation={"id": "drop"})
    assert torch.count_nonzero(f.ids) == 0
    assert "ids" not in dict(f.named_parameters())
    x = _inputs(f)
    torch.testing.assert_close(f()[0], x["vision"] + x["text"])


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_noised_feature_modality_keeps_per_row_norms_but_not_values(modality):
    v, c = _features()
    raw = v if modality == "vision" else c
    raw = raw * torch.linspace(0.5, 2.0, N_ITEMS)[:, None]     # rows of different norms
    f = _fusion(ablation={modality: "noise"}, **{modality: raw})
    noised = getattr(f, modality)
    torch.testing.assert_close(noised.norm(dim=1), raw.norm(dim=1))
    assert not torch.allclose(noised, raw)
    assert modality in f.project, "a noised modality keeps its projection"


def test_noised_id_keeps_per_row_norms_of_the_initial_table():
    seed = 4
    f = _fusion(ablation={"id": "noise"}, seed=seed)
    initial = torch.randn(N_ITEMS, D, generator=torch.Generator().manual_seed(seed)) * 0.1
    torch.testing.assert_close(f.ids.norm(dim=1), initial.norm(dim=1))
    assert not torch.allclose(f.ids, initial)
    assert "ids" not in dict(f.named_parameters())


def test_replace_by_mean_replaces_one_modality_input_by_its_mean_row():
    f = _fusion("sum")
    x = _inputs(f)
    altered = f(replace_by_mean="id")[0]
    torch.testing.assert_close(altered, x["vision"] + x["text"] + f.ids.mean(dim=0, keepdim=True))
