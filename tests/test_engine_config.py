"""Run configuration: impossible settings are refused up front with a one-line FedVLRError that
names the offending option."""

from __future__ import annotations

import json

import pytest

from fedvlr_sim.config import BACKBONES, VARIANTS, RunConfig
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
    "zero batch": (dict(batch_size=0), "--batch-size"),
    "non-positive lr": (dict(lr=0.0), "--lr"),
    "non-positive server lr": (dict(server_lr=-1.0), "--server-lr"),
    "unknown server optimizer": (dict(server_optimizer="rmsprop"), "--server-optimizer"),
    "unknown global update": (dict(global_update="average"), "--global-update"),
    "unknown selection metric": (dict(select_metric="hr@5"), "--select-metric"),
    "negative FedRAP lambda": (dict(fedrap_lambda=-0.1), "--fedrap-lambda"),
    "unknown table dtype": (dict(table_dtype="float16"), "--table-dtype"),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE), ids=list(IMPOSSIBLE))
def test_impossible_config_raises_error_naming_the_option(case):
    overrides, option = IMPOSSIBLE[case]
    with pytest.raises(FedVLRError) as err:
        RunConfig(**overrides).validate()
    message = str(err.value)
    assert option in message
    assert "\n" not in message


def test_default_config_is_valid_and_follows_the_paper():
    cfg = RunConfig().validate()
    assert (cfg.dim, cfg.local_epochs, cfg.neg_ratio, cfg.batch_size) == (64, 5, 4, 2048)
    assert cfg.sample_ratio == 1.0 and cfg.global_update == "accumulate"
    assert cfg.ablation == {"vision": "keep", "text": "keep", "id": "keep"}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_backbone_runs_with_every_variant(backbone, variant):
    cfg = RunConfig(backbone=backbone, variant=variant).validate()
    assert cfg.uses_router == (variant == "ours")
    assert cfg.uses_features == (variant != "none")


def test_partial_ablation_is_completed_with_keep():
    cfg = RunConfig(variant="ours", ablation={"text": "noise"}).validate()
    assert cfg.ablation == {"vision": "keep", "text": "noise", "id": "keep"}


def test_unknown_option_in_config_file_is_named(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"backbone": "fcf", "learning_rate": 0.1}))
    with pytest.raises(FedVLRError, match="learning_rate"):
        RunConfig.from_file(path)


def test_config_round_trips_through_its_own_dict(tmp_path):
    cfg = RunConfig(backbone="fedrap", variant="gate", ablation={"id": "drop"}, dp_clip=0.5).validate()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.from_file(path).validate() == cfg
