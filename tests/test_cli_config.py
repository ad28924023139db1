"""How a run is configured: config files in JSON, TOML or YAML, `--set key=value`,
`--print-config`, a run's own config.json passed back to run the experiment again in a new
folder, and the Python API `fedvlr_sim.run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedvlr_sim
from fedvlr_sim.cli import app
from fedvlr_sim.config import RunConfig

FEDVLR_SIM = Path(sys.executable).with_name("fedvlr-sim")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
TINY = ("--backend", "local", "--dataset", "synthetic:tiny", "--variant", "none", "--rounds", "2",
        "--local-epochs", "1", "--dim", "8", "--checkpoint-every", "1")
METRIC_PARTS = ("valid", "test", "best_round", "rounds_run")

# the same options in each format: a flat name, a dotted `role.name`, a role section
CONFIG_FILES = {
    "json": '{"rounds": 3, "client.lr": 0.05, "model": {"dim": 16}, "dataset": "synthetic:ku"}',
    "toml": 'rounds = 3\nclient.lr = 0.05\ndataset = "synthetic:ku"\n\n[model]\ndim = 16\n',
    "yaml": 'rounds: 3\nclient.lr: 5e-2\nmodel:\n  dim: 16\ndataset: synthetic:ku\n',
    "yml": 'rounds: 3\nclient.lr: 0.05\nmodel: {dim: 16}\ndataset: "synthetic:ku"\n',
}
FROM_THE_FILES = {"rounds": 3, "lr": 0.05, "dim": 16, "dataset": "synthetic:ku"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def printed_config(*args) -> dict:
    """The configuration `run ... --print-config` resolves."""
    result = cli("run", *args, "--print-config")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def metrics_of(summary: dict) -> dict:
    return {part: summary[part] for part in METRIC_PARTS}


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Work in an empty temporary folder (default run folders land in its runs/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run with a checkpoint."""
    out = tmp_path_factory.mktemp("config") / "first"
    result = cli("run", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- config files
@pytest.mark.parametrize("suffix", list(CONFIG_FILES))
def test_a_config_file_in_each_format_gives_the_same_options(suffix, tmp_path):
    path = tmp_path / f"options.{suffix}"
    path.write_text(CONFIG_FILES[suffix])
    resolved = printed_config("--config", path)
    assert {name: resolved[name] for name in FROM_THE_FILES} == FROM_THE_FILES


@pytest.mark.parametrize("suffix, broken, kind", [("json", "{", "JSON"), ("toml", "rounds = \n", "TOML"),
                                                  ("yaml", "rounds: [1\n", "YAML")])
def test_a_malformed_config_file_is_one_line_naming_it(suffix, broken, kind, tmp_path):
    path = tmp_path / f"broken.{suffix}"
    path.write_text(broken)
    result = cli("run", "--config", path, "--print-config")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}: not valid {kind}")


# --------------------------------------------------------------------------- --set
@pytest.mark.parametrize("key", ["lr", "client.lr"])
def test_set_takes_flat_and_dotted_names(key):
    assert printed_config("--set", f"{key}=0.05")["lr"] == 0.05


def test_set_values_are_json_when_they_parse_and_text_otherwise():
    resolved = printed_config("--set", "rounds=3", "--set", "dataset=synthetic:ku", "--set", "address=",
                              "--set", 'ablation={"vision": "drop"}', "--set", 'out="7"')
    assert (resolved["rounds"], resolved["dataset"], resolved["address"], resolved["out"]) == (3, "synthetic:ku", "", "7")
    assert resolved["ablation"] == {"vision": "drop", "text": "keep", "id": "keep"}


def test_options_override_set_which_overrides_the_config_file(tmp_path):
    path = tmp_path / "options.toml"
    path.write_text("lr = 0.01\nrounds = 3\ndim = 16\n")
    resolved = printed_config("--config", path, "--set", "lr=0.02", "--set", "rounds=4", "--lr", "0.03")
    assert (resolved["dim"], resolved["rounds"], resolved["lr"]) == (16, 4, 0.03)


def test_a_later_layer_can_complete_an_earlier_one(tmp_path):
    """Noise needs clipping: a file that sets noise is valid with clipping from --set."""
    path = tmp_path / "noise.json"
    path.write_text('{"dp_noise": 1.0}')
    assert printed_config("--config", path, "--set", "dp_clip=0.5")["dp_noise"] == 1.0


@pytest.mark.parametrize("setting, named", [("client.rate=1", "client.rate"), ("model.lr=1", "'lr' belongs to client"),
                                            ("rounds=many", "'rounds'"), ("lr", "key=value"),
                                            ("dp_noise=1", "--dp-noise")])
def test_a_bad_set_is_one_line_naming_it(setting, named):
    result = cli("run", "--set", setting, "--print-config")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: --set {setting}")
    assert named in result.stderr


# --------------------------------------------------------------------------- --print-config
def test_print_config_prints_the_resolved_configuration_and_creates_nothing(in_tmp):
    resolved = printed_config("--backbone", "fedrap", "--dim", "16", "--out", "somewhere")
    assert RunConfig.from_dict(resolved) == RunConfig.create(backbone="fedrap", dim=16, out="somewhere")
    assert list(in_tmp.iterdir()) == []


def test_print_config_with_resume_shows_the_configuration_the_run_continues_with(finished):
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    resolved = printed_config("--resume", finished, "--rounds", "5")
    assert resolved == json.loads((finished / "config.json").read_text()) | {"rounds": 5}
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before


# --------------------------------------------------------------------------- config.json passed back
def test_a_run_records_its_configuration_without_its_folder(finished):
    saved = json.loads((finished / "config.json").read_text())
    assert saved["out"] == "" and saved == summary_of(finished)["config"]


def test_a_run_s_config_json_runs_the_experiment_again_in_a_new_folder(finished, in_tmp):
    result = cli("run", "--config", finished / "config.json")
    assert result.exit_code == 0, result.output
    (again,) = (in_tmp / "runs").iterdir()
    assert metrics_of(summary_of(again)) == metrics_of(summary_of(finished))
    assert json.loads((again / "config.json").read_text()) == json.loads((finished / "config.json").read_text())


def test_the_installed_cli_runs_a_config_json_again_into_the_folder_given(finished, tmp_path):
    process = subprocess.run([str(FEDVLR_SIM), "run", "--config", str(finished / "config.json"), "--out", "again"],
                             cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stderr
    assert metrics_of(summary_of(tmp_path / "again")) == metrics_of(summary_of(finished))


def test_an_old_config_json_that_names_its_folder_still_resumes(tmp_path):
    run_dir, elsewhere = tmp_path / "old", tmp_path / "elsewhere"
    assert cli("run", *TINY, "--out", run_dir).exit_code == 0
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(saved | {"out": str(elsewhere)}))

    result = cli("run", "--resume", run_dir, "--rounds", "3")
    assert result.exit_code == 0, result.output
    assert summary_of(run_dir)["rounds_run"] == 3 and not elsewhere.exists()


# --------------------------------------------------------------------------- the Python API
def test_the_installed_cli_reads_yaml_and_set_and_prints_the_configuration(tmp_path):
    (tmp_path / "options.yaml").write_text(CONFIG_FILES["yaml"])
    process = subprocess.run([str(FEDVLR_SIM), "run", "--config", "options.yaml", "--set", "client.lr=0.02",
                              "--set", "seed=7", "--print-config"], cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    resolved = json.loads(process.stdout)
    assert (resolved["lr"], resolved["seed"], resolved["dim"], resolved["rounds"]) == (0.02, 7, 16, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["options.yaml"]


@pytest.mark.parametrize("form", ["RunConfig", "dict", "TOML file"])
def test_run_takes_a_config_in_any_form_and_returns_the_summary(form, finished, in_tmp):
    options = {k: v for k, v in json.loads((finished / "config.json").read_text()).items() if k != "ablation"}
    if form == "RunConfig":
        config = RunConfig.create(**options)
    elif form == "dict":
        config = options
    else:
        config = in_tmp / "options.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    summary = fedvlr_sim.run(config)
    assert isinstance(summary, fedvlr_sim.RunSummary)
    assert metrics_of(summary.to_dict()) == metrics_of(summary_of(finished))
    (run_dir,) = (in_tmp / "runs").iterdir()
    assert metrics_of(summary_of(run_dir)) == metrics_of(summary.to_dict())


def test_importing_the_package_imports_neither_torch_nor_ray():
    check = "import sys, fedvlr_sim; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    process = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=ENV)
    assert process.stdout.strip() == "[]", process.stderr


def test_the_paper_preset_restores_the_papers_settings_under_everything_given():
    from fedvlr_sim.config import PRESETS

    paper = printed_config("--preset", "paper")
    assert {k: paper[k] for k in PRESETS["paper"]} == PRESETS["paper"]
    assert printed_config("--preset", "paper", "--server-lr", "0.5")["server_lr"] == 0.5
    assert printed_config("--preset", "paper", "--set", "min_rounds=7")["min_rounds"] == 7


def test_an_unknown_preset_is_one_line_naming_it():
    result = cli("run", "--preset", "papr", "--print-config")
    assert result.exit_code == 2 and "--preset" in result.stderr and "paper" in result.stderr
