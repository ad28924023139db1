"""Bad input on the command line: every case ends with exit code 2 and ONE line on stderr that
starts with `error:` and names the option or file at fault; no traceback, nothing trained and
no results folder written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedvlr_sim.cli import app

FEDVLR_SIM = Path(sys.executable).with_name("fedvlr-sim")
QUICK = ["--backend", "local", "--rounds", "1", "--local-epochs", "1", "--dim", "16"]


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *mentions: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"
    return lines[0]


def write_movielens(folder: Path, users: int = 8, items: int = 8) -> Path:
    """A tiny MovieLens-format raw folder (ratings.csv): every user rated every movie, so the
    5-core filter keeps all of it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(users):
        for i in range(items):
            rows.append(f"{u + 1},{100 + i},4.0,{1_600_000_000 + 1000 * u + 10 * i}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def dirs(tmp_path):
    """An empty data folder (nothing prepared) and a run folder that must never appear."""
    return {"data": tmp_path / "data", "out": tmp_path / "out", "tmp": tmp_path}


RUN_CASES = {
    "unknown dataset": (["--dataset", "NoSuchSet"], ["dataset", "NoSuchSet", "synthetic:tiny"]),
    "known dataset, not prepared": (["--dataset", "Movie"],
                                    ["Movie", "fedvlr-sim prepare --dataset Movie", "synthetic:movie"]),
    "unknown synthetic preset": (["--dataset", "synthetic:galaxy"], ["synthetic", "galaxy", "tiny"]),
    "unknown backbone": (["--dataset", "synthetic:tiny", "--backbone", "resnet"], ["--backbone", "resnet", "fcf"]),
    "unknown variant": (["--dataset", "synthetic:tiny", "--variant", "late"], ["--variant", "late"]),
    "sample ratio 0": (["--dataset", "synthetic:tiny", "--sample-ratio", "0"], ["--sample-ratio", "(0, 1]"]),
    "noise without clipping": (["--dataset", "synthetic:tiny", "--dp-noise", "1"], ["--dp-noise", "--dp-clip"]),
    "drop without fusion": (["--dataset", "synthetic:tiny", "--drop", "vision", "--variant", "none"],
                            ["--drop", "--variant"]),
    "drop of an unknown modality": (["--dataset", "synthetic:tiny", "--drop", "audio"], ["--drop", "audio"]),
    "dropping every modality": (["--dataset", "synthetic:tiny", "--drop", "vision", "--drop", "text",
                                 "--drop", "id"], ["--drop"]),
}
if not torch.cuda.is_available():
    RUN_CASES["client shards on a GPU this machine lacks"] = (["--dataset", "synthetic:tiny", "--shard-device", "cuda"],
                                                              ["--shard-device cuda", "CUDA"])


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_options_are_one_line_errors(case, dirs):
    args, mentions = RUN_CASES[case]
    result = invoke(["run", *args, *QUICK, "--data-dir", dirs["data"], "--out", dirs["out"]])
    assert_one_line_error(result, *mentions)
    assert not dirs["out"].exists()


def test_a_missing_config_file_is_named(dirs):
    missing = dirs["tmp"] / "missing.json"
    result = invoke(["run", "--config", missing, *QUICK, "--out", dirs["out"]])
    assert_one_line_error(result, str(missing), "not found")
    assert not dirs["out"].exists()


def test_a_malformed_config_file_is_named(dirs):
    malformed = dirs["tmp"] / "broken.json"
    malformed.write_text('{"rounds": 2,\n "dim": }\n')
    result = invoke(["run", "--config", malformed, *QUICK, "--out", dirs["out"]])
    assert_one_line_error(result, str(malformed), "JSON", "line 2")
    assert not dirs["out"].exists()


def test_an_unknown_option_in_a_config_file_is_named(dirs):
    config = dirs["tmp"] / "typo.json"
    config.write_text('{"rounds": 2, "local_epoch": 1}')
    result = invoke(["run", "--config", config, *QUICK, "--out", dirs["out"]])
    assert_one_line_error(result, str(config), "local_epoch")


def test_a_config_path_that_is_a_folder_is_named(dirs):
    result = invoke(["run", "--config", dirs["tmp"], *QUICK, "--out", dirs["out"]])
    assert_one_line_error(result, str(dirs["tmp"]))


def test_a_config_value_of_the_wrong_type_is_named(dirs):
    config = dirs["tmp"] / "types.json"
    config.write_text('{"rounds": "two"}')
    result = invoke(["run", "--config", config, "--backend", "local", "--out", dirs["out"]])
    assert_one_line_error(result, "rounds")


def test_prepare_with_a_missing_raw_path(dirs):
    missing = dirs["tmp"] / "ml-latest-small"
    result = invoke(["prepare", "--dataset", "ML", "--raw", missing, "--data-dir", dirs["data"]])
    assert_one_line_error(result, "--raw", str(missing))
    assert not (dirs["data"] / "ML").exists()


def test_prepare_with_a_raw_folder_missing_its_ratings_file(dirs):
    raw = dirs["tmp"] / "raw"
    raw.mkdir()
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Heat (1995),Action\n")
    result = invoke(["prepare", "--dataset", "ML", "--raw", raw, "--data-dir", dirs["data"]])
    assert_one_line_error(result, "--raw", "ratings.csv")
    assert not (dirs["data"] / "ML").exists()


@pytest.fixture(scope="module")
def prepared_without_features(tmp_path_factory):
    """A dataset prepared from raw MovieLens files: interactions only, no CLIP features yet."""
    root = tmp_path_factory.mktemp("ml")
    data = root / "data"
    result = invoke(["prepare", "--dataset", "ML", "--raw", write_movielens(root / "raw"), "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert (data / "ML" / "meta.json").is_file() and not (data / "ML" / "features" / "vision.npy").exists()
    return data


def test_a_fusion_variant_on_a_dataset_without_features_names_the_features_command(
        prepared_without_features, tmp_path):
    result = invoke(["run", "--dataset", "ML", "--data-dir", prepared_without_features, "--variant", "ours",
                     *QUICK, "--out", tmp_path / "out"])
    assert_one_line_error(result, "--variant ours", "fedvlr-sim features --dataset ML")


def test_an_id_only_run_on_the_same_dataset_needs_no_features(prepared_without_features, tmp_path):
    result = invoke(["run", "--dataset", "ML", "--data-dir", prepared_without_features, "--variant", "none",
                     *QUICK, "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "summary.json").is_file()


def test_a_run_rejected_for_missing_features_leaves_no_results_folder(prepared_without_features, tmp_path):
    result = invoke(["run", "--dataset", "ML", "--data-dir", prepared_without_features, "--variant", "ours",
                     *QUICK, "--out", tmp_path / "out"])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_the_installed_command_exits_2_with_one_line_on_stderr(tmp_path):
    """The console script itself (not the in-process runner): exit status and real stderr."""
    proc = subprocess.run([str(FEDVLR_SIM), "run", "--dataset", "NoSuchSet", "--data-dir", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "NoSuchSet" in proc.stderr


def test_an_unreachable_cluster_address_is_named_at_once(dirs):
    """Port 1 on loopback refuses connections: the run ends in one line instead of Ray's retries."""
    result = invoke(["run", "--dataset", "synthetic:tiny", "--rounds", "1", "--address", "127.0.0.1:1",
                     "--out", dirs["out"]])
    assert_one_line_error(result, "--address", "127.0.0.1:1")


def test_a_malformed_cluster_address_is_named(dirs):
    result = invoke(["run", "--dataset", "synthetic:tiny", "--rounds", "1", "--address", "headnode",
                     "--out", dirs["out"]])
    assert_one_line_error(result, "--address", "host:port")
