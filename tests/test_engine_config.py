"""Run configuration: impossible settings are refused up front with a one-line FedVLRError that
names the offending option."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fedvlr_sim.config import ClientConfig, LaunchConfig, LoopConfig, ModelConfig, RunConfig, ServerConfig
from fedvlr_sim.engine.backbones import BACKBONES
from fedvlr_sim.engine.variants import VARIANTS
from fedvlr_sim.errors import FedVLRError

IMPOSSIBLE = {
    "sampling nobody": (dict(sample_ratio=0.0), "--sample-ratio"),
    "sampling more than everyone": (dict(sample_ratio=1.5), "--sample-ratio"),
    "noise without clipping": (dict(dp_noise=1.0), "--dp-noise"),
    "negative clipping norm": (dict(dp_clip=-1.0), "--dp-clip"),
    "unknown backbone": (dict(backbone="fedxyz"), "--backbone"),
    "unknown variant": (dict(variant="attention"), "--variant"),
    "drop with variant none": (dict(variant="none", ablation={"vision": "drop"}), "--drop"),
    "noise with variant none": (dict(variant="none", ablation={"text": "noise"}), "--noise"),
    "dropping every modality": (dict(ablation={"vision": "drop", "text": "drop", "id": "drop"}), "--drop"),
    "unknown modality": (dict(ablation={"audio": "drop"}), "audio"),
    "fedncf tower needs d divisible by 4": (dict(backbone="fedncf", dim=10), "--dim"),
    "zero local epochs": (dict(local_epochs=0), "--local-epochs"),
    "zero negatives": (dict(neg_ratio=0), "--neg-ratio"),
    "negative popularity exponent": (dict(neg_popularity=-0.5), "--neg-popularity"),
    "infinite popularity exponent": (dict(neg_popularity=float("inf")), "--neg-popularity"),
    "zero batch": (dict(batch_size=0), "--batch-size"),
    "non-positive lr": (dict(lr=0.0), "--lr"),
    "non-positive server lr": (dict(server_lr=-1.0), "--server-lr"),
    "unknown server optimizer": (dict(server_optimizer="rmsprop"), "--server-optimizer"),
    "unknown global update": (dict(global_update="average"), "--global-update"),
    "unknown selection metric": (dict(select_metric="hr@5"), "--select-metric"),
    "negative FedRAP lambda": (dict(fedrap_lambda=-0.1), "--fedrap-lambda"),
    "unknown table dtype": (dict(table_dtype="float16"), "--table-dtype"),
    "infinite lr": (dict(lr=float("inf")), "--lr"),
    "infinite server lr": (dict(server_lr=float("inf")), "--server-lr"),
    "infinite clipping norm": (dict(dp_clip=float("inf")), "--dp-clip"),
    "nan noise": (dict(dp_clip=1.0, dp_noise=float("nan")), "--dp-noise"),
    "negative seed": (dict(seed=-1), "--seed"),
    "seed beyond 64 bits": (dict(seed=2**64), "--seed"),
    "fractional rounds": (dict(rounds=2.5), "--rounds"),
    "unknown option": (dict(learning_rate=0.1), "learning_rate"),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE), ids=list(IMPOSSIBLE))
def test_impossible_config_raises_error_naming_the_option(case):
    overrides, option = IMPOSSIBLE[case]
    with pytest.raises(FedVLRError) as err:
        RunConfig.create(**overrides)
    message = str(err.value)
    assert option in message
    assert "\n" not in message


def test_default_config_is_valid_and_follows_the_paper():
    cfg = RunConfig()
    assert cfg.model.dim == 64
    assert (cfg.client.local_epochs, cfg.client.neg_ratio, cfg.client.batch_size) == (5, 4, 2048)
    assert cfg.loop.sample_ratio == 1.0 and cfg.client.global_update == "accumulate"
    assert cfg.flat()["ablation"] == {"vision": "keep", "text": "keep", "id": "keep"}


def test_each_role_holds_only_its_own_options_and_is_frozen():
    cfg = RunConfig.create(lr=0.3, server_lr=0.02, rounds=7, backbone="fedrap", dataset="KU")
    assert isinstance(cfg.model, ModelConfig) and cfg.model.backbone == "fedrap"
    assert isinstance(cfg.client, ClientConfig) and cfg.client.lr == 0.3
    assert isinstance(cfg.server, ServerConfig) and cfg.server.server_lr == 0.02
    assert isinstance(cfg.loop, LoopConfig) and cfg.loop.rounds == 7
    assert isinstance(cfg.launch, LaunchConfig) and cfg.launch.dataset == "KU"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.client.lr = 1.0
    assert cfg.replace(lr=0.5).client.lr == 0.5 and cfg.client.lr == 0.3


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_backbone_runs_with_every_variant(backbone, variant):
    cfg = RunConfig.create(backbone=backbone, variant=variant)
    assert cfg.model.variant_def.uses_router == (variant == "ours")
    assert cfg.model.variant_def.uses_features == (variant != "none")
    assert cfg.model.backbone_def.name == backbone


def test_partial_ablation_is_completed_with_keep():
    cfg = RunConfig.create(variant="ours", ablation={"text": "noise"})
    assert cfg.model.ablation == ("keep", "noise", "keep")
    assert cfg.flat()["ablation"] == {"vision": "keep", "text": "noise", "id": "keep"}


def test_unknown_option_in_config_file_is_named(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"backbone": "fcf", "learning_rate": 0.1}))
    with pytest.raises(FedVLRError, match="learning_rate"):
        RunConfig.from_file(path)


def test_config_round_trips_through_its_own_dict(tmp_path):
    cfg = RunConfig.create(backbone="fedrap", variant="gate", ablation={"id": "drop"}, dp_clip=0.5)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.flat()))
    assert RunConfig.from_file(path) == cfg


def test_an_integer_too_large_for_a_float_option_is_refused_as_non_finite():
    with pytest.raises(FedVLRError, match="--lr must be finite"):
        RunConfig.create(lr=10**400)


def test_options_may_be_named_flat_dotted_or_in_role_sections():
    expected = RunConfig.create(lr=0.05, dim=16, rounds=3)
    assert RunConfig.from_dict({"client.lr": 0.05, "model": {"dim": 16}, "rounds": 3}) == expected


def test_an_error_of_a_combination_names_the_layer_that_made_it():
    from fedvlr_sim.config import resolve

    with pytest.raises(FedVLRError, match=r"^noise\.json: --dp-noise"):
        resolve([("noise.json", {"dp_noise": 1.0}), ("--set lr=0.5", {"lr": 0.5})])
    assert resolve([("noise.json", {"dp_noise": 1.0}), ("--set dp_clip=1", {"dp_clip": 1.0})]).client.dp_clip == 1.0


def fake_dataset(n_users: int, n_items: int, history: int):
    """What the memory estimate reads of a dataset: sizes, splits, features."""
    from types import SimpleNamespace

    import numpy as np

    user = np.repeat(np.arange(n_users), history)
    return SimpleNamespace(n_users=n_users, n_items=n_items, user=user, split=np.zeros_like(user),
                           vision=np.zeros((n_items, 512), np.float32), text=np.zeros((n_items, 512), np.float32))


def test_the_memory_estimate_counts_every_user_s_personal_item_table():
    from fedvlr_sim.memory import run_needs

    cfg = RunConfig.create(backbone="fedrap", variant="ours", dim=64, table_dtype="float32")
    local = next(need for need in run_needs(cfg, 1000, 500, 1024, 20) if need.what.startswith("local state"))
    assert local.bytes >= 1000 * 500 * 64 * 4


def test_a_run_larger_than_the_available_memory_is_refused_before_allocating(monkeypatch):
    import psutil

    from fedvlr_sim.memory import check_memory

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 2 * 1024**3}))
    dataset = fake_dataset(300, 300, 20)
    check_memory(RunConfig.create(backend="local", dim=64), dataset)
    with pytest.raises(FedVLRError, match=r"needs about \d+\.\d GiB .* than the 2\.0 GiB available.*--dim"):
        check_memory(RunConfig.create(backend="local", dim=1_000_000), dataset)
