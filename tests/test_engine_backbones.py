"""Backbones and variants are classes with one home each: the engine asks them, never their
names, so a new backbone is one class plus its registration."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import fedvlr_sim
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine import backbones
from fedvlr_sim.engine.backbones import BACKBONES, Backbone, register
from fedvlr_sim.engine.variants import VARIANTS
from helpers_engine import make_cfg, make_dataset, make_population, run_federation

PACKAGE = Path(fedvlr_sim.__file__).parent
DEFINITIONS = {PACKAGE / "engine" / "backbones.py", PACKAGE / "engine" / "variants.py"}


class BiasedDot(Backbone):
    """A toy sixth backbone: a private user vector and a private item-independent bias."""

    name = "biased-dot"

    def local_shapes(self, width, n_items):
        return {"user": (width,), "bias": ()}

    def logits(self, local, glob, e):
        return e @ local["user"] + local["bias"]


@pytest.fixture
def toy_backbone():
    register(BiasedDot)
    yield BiasedDot
    del BACKBONES[BiasedDot.name]


def test_a_sixth_backbone_is_one_class_and_its_registration(toy_backbone):
    dataset = make_dataset(n_users=12, n_items=30, seed=4)
    cfg = make_cfg(backbone="biased-dot", variant="ours", rounds=3, lr=0.5)
    from fedvlr_sim.engine.simulation import local_federation

    fed = local_federation(cfg, dataset)
    before = {k: v.clone() for k, v in fed.pool.shards[0].params.items()}
    summary = run_federation(cfg, fed)
    after = fed.pool.shards[0].params
    assert set(after) >= {"user", "bias", "router.w1"}, "the variant adds its router to the backbone's state"
    assert not torch.equal(before["bias"], after["bias"]), "the toy's own parameter is trained"
    assert summary["backbone"] == "biased-dot" and summary["rounds_run"] == 3
    assert 0 <= summary["test"]["hr@50"] <= 1


def test_the_command_line_offers_a_registered_backbone(toy_backbone):
    assert RunConfig.create(backbone="biased-dot").model.backbone_def.name == "biased-dot"


def _name_tests(path: Path, names: set[str]) -> list[str]:
    """Comparisons in a module's code against a backbone or variant name literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            literals = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            for literal in literals:
                if isinstance(literal, ast.Constant) and literal.value in names:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} compares with {literal.value!r}")
    return found


def test_no_module_outside_the_definitions_tests_a_backbone_or_variant_name():
    names = set(BACKBONES) | set(VARIANTS)
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) if path not in DEFINITIONS
                 for hit in _name_tests(path, names)]
    assert offenders == []


def test_every_backbone_declares_its_aggregation_weight_and_state():
    counts = torch.tensor([3, 7])
    for name, kind in BACKBONES.items():
        backbone = kind(RunConfig.create(backbone=name).model)
        alpha = backbone.aggregation_weight(counts)
        expected = counts.float() if name in ("fedavg", "fedncf") else torch.ones(2)
        assert torch.equal(alpha, expected), name
        shapes = backbone.local_shapes(8, 20)
        assert ("table" in shapes) == backbone.has_item_table, name
        assert all(np.prod(s) > 0 or s == () for s in shapes.values()), name


def test_backbone_module_names_no_engine_internals():
    """The definitions depend on torch only, so the config and engine can import them."""
    imported = {node.module for node in ast.walk(ast.parse(Path(backbones.__file__).read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(m.startswith("fedvlr_sim.engine") for m in imported)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("variant", ["none", "ours"])
def test_evaluation_scores_equal_each_users_mixed_items_scored_one_by_one(backbone, variant):
    """A linear head (FCF, FedAvg) scores each view for the whole chunk with one product and
    mixes the scores; every backbone must give what its per-user logits give, after training."""
    dataset = make_dataset(n_users=9, n_items=25, seed=4)
    cfg = make_cfg(backbone=backbone, variant=variant)
    server, population = make_population(cfg, dataset)
    users = np.arange(9)
    population.train(1, users, server.publish())
    glob = server.publish()
    assert population.linear_scoring == (backbone in ("fcf", "fedavg"))
    torch.testing.assert_close(population.scores(users, glob), population.scores(users, glob, per_user=True),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["fedavg", "pfedrec", "fedrap"])
def test_no_head_bias_scores_theta_dot_e_and_keeps_no_bias_state(backbone):
    """--no-head-bias: a head backbone scores theta_u . e (SPEC's formula) and stores no b_u;
    the linear-head evaluation agrees with the per-user path without one."""
    dataset = make_dataset(n_users=9, n_items=25, seed=4)
    cfg = make_cfg(backbone=backbone, variant="none", head_bias=False)
    assert "head.b" not in cfg.model.backbone_def.local_shapes(8, 25)
    server, population = make_population(cfg, dataset)
    assert "head.b" not in population.state_dict()
    users = np.arange(9)
    population.train(1, users, server.publish())
    glob = server.publish()
    local = {"head.w": torch.tensor([1.0, -2.0])}
    e = torch.tensor([[3.0, 1.0], [0.0, 0.5]])
    assert torch.equal(cfg.model.backbone_def.logits(local, glob, e), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(population.scores(users, glob), population.scores(users, glob, per_user=True),
                               atol=1e-5, rtol=1e-5)
