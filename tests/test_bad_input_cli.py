"""Bad input to the installed `fedvlr-sim` command: every command, and every route a
configuration takes (command-line options, `--set`, a `--config` file in each format, `--resume`
of a damaged run folder).

Each case runs the console script in a subprocess, in a folder of its own holding only the
broken input it needs, with no stdin. Each must end with exit code 2 and exactly ONE line on
stderr that starts with `error:` and names the file or option at fault, with no traceback
anywhere, and leave that folder exactly as it was (no run folder, no partial file; a damaged run
folder unchanged).

The cases run a few at a time (each subprocess spends seconds importing torch); the
parametrised test then checks each one's outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

FEDVLR_SIM = Path(sys.executable).with_name("fedvlr-sim")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
ENV.pop("FEDVLR_DATA_DIR", None)
QUICK = ("--backend", "local", "--rounds", "1", "--local-epochs", "1", "--dim", "8")
AT_ONCE = 3
Setup = Callable[[Path, dict], None]


@dataclass(frozen=True)
class Case:
    """A command line, what its error line must name, and how its folder is prepared."""

    args: tuple[str, ...]
    mentions: tuple[str, ...]
    setup: Setup = lambda folder, templates: None


@dataclass(frozen=True)
class Outcome:
    """A case's finished process and its folder before and after (see `snapshot`)."""

    process: subprocess.CompletedProcess
    before: dict[str, str]
    after: dict[str, str]


def files(**contents: str | bytes) -> Setup:
    """Write these files (names with `__` for `.`, e.g. broken__json) into the case's folder."""
    def setup(folder: Path, templates: dict) -> None:
        for name, content in contents.items():
            path = folder / name.replace("__", ".")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def folders(*names: str) -> Setup:
    """Make these (empty) folders in the case's folder."""
    def setup(folder: Path, templates: dict) -> None:
        for name in names:
            (folder / name).mkdir()
    return setup


def run_folder(damage: Callable[[Path], None] = lambda run: None, template: str = "finished") -> Setup:
    """A copy of a template run folder at `run/`, then `damage(run folder)`."""
    def setup(folder: Path, templates: dict) -> None:
        shutil.copytree(templates[template], folder / "run")
        damage(folder / "run")
    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def prepared_ml(folder: Path, templates: dict) -> None:
    """A data folder with ML prepared (`data/ML`) and raw MovieLens files to prepare (`raw/`)."""
    shutil.copytree(templates["data"], folder / "data")
    write_movielens(folder / "raw", users=8)


def with_dim(run: Path, dim: int) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"dim": dim}))


AFILE = files(afile="not a folder\n")

CASES = {
    # ---------------------------------------------------------------- run: command-line options
    "run: unknown option": Case(("run", "--learning-rate", "0.1"), ("--learning-rate",)),
    "run: a word for a number": Case(("run", "--rounds", "two"), ("--rounds",)),
    "run: negative seed": Case(("run", "--seed", "-1", *QUICK), ("--seed", "-1")),
    "run: seed beyond 64 bits": Case(("run", "--seed", str(2**64 + 1), *QUICK), ("--seed",)),
    "run: non-finite learning rate": Case(("run", "--lr", "nan", *QUICK), ("--lr",)),
    "run: --out names a file": Case(("run", *QUICK, "--out", "afile"), ("--out", "afile"), AFILE),
    "run: --out under a file": Case(("run", *QUICK, "--out", "afile/run"), ("--out afile/run", "cannot create"), AFILE),
    "run: --data-dir names a file": Case(("run", *QUICK, "--data-dir", "afile"), ("--data-dir", "afile"), AFILE),
    "run: an embedding too large for this machine": Case(("run", "--backend", "local", "--dim", "100000000"),
                                                          ("--dim", "GiB", "available")),
    "run: unknown dataset": Case(("run", *QUICK, "--dataset", "NoSuchSet"), ("NoSuchSet",)),
    "run: --resume with --config": Case(("run", "--resume", "run", "--config", "c.json"), ("--resume", "--config")),
    # ---------------------------------------------------------------- run: --set
    "run: --set without a value": Case(("run", "--set", "lr"), ("--set lr",)),
    "run: --set of an unknown key": Case(("run", "--set", "client.rate=1"), ("client.rate",)),
    "run: --set of a key in the wrong role": Case(("run", "--set", "model.lr=1"), ("model.lr", "client")),
    "run: --set of the wrong type": Case(("run", "--set", "rounds=many"), ("--set rounds=many", "rounds")),
    "run: --set of a non-finite number": Case(("run", "--set", "client.lr=NaN"), ("--set client.lr=NaN", "--lr")),
    # ---------------------------------------------------------------- run --config FILE
    "config: malformed JSON": Case(("run", "--config", "broken.json"), ("broken.json", "JSON", "line 2"),
                                   files(broken__json='{"rounds": 2,\n "dim": }\n')),
    "config: a value of the wrong type": Case(("run", "--config", "types.json"), ("types.json", "rounds"),
                                              files(types__json='{"rounds": "two"}')),
    "config: an unknown key": Case(("run", "--config", "typo.json"), ("typo.json", "local_epoch"),
                                   files(typo__json='{"rounds": 2, "local_epoch": 1}')),
    "config: a non-finite number": Case(("run", "--config", "inf.json"), ("inf.json", "--lr"),
                                        files(inf__json='{"lr": Infinity}')),
    "config: NaN for an integer": Case(("run", "--config", "nan.json"), ("nan.json", "rounds"),
                                       files(nan__json='{"rounds": NaN}')),
    "config: an impossible combination": Case(("run", "--config", "noise.json"), ("noise.json", "--dp-noise"),
                                              files(noise__json='{"dp_noise": 1.0}')),
    "config: a directory": Case(("run", "--config", "options.json"), ("options.json",), folders("options.json")),
    "config: not UTF-8": Case(("run", "--config", "latin1.json"), ("latin1.json", "UTF-8"),
                              files(latin1__json=b'{"dataset": "caf\xe9"}')),
    "config: missing file": Case(("run", "--config", "missing.json"), ("missing.json", "not found")),
    "config: unknown file type": Case(("run", "--config", "options.ini"), ("options.ini", ".toml"),
                                      files(options__ini="rounds = 1\n")),
    "config: malformed TOML": Case(("run", "--config", "broken.toml"), ("broken.toml", "TOML"),
                                   files(broken__toml="rounds = \n")),
    "config: TOML option in the wrong section": Case(("run", "--config", "roles.toml"), ("roles.toml", "model.lr"),
                                                     files(roles__toml="[model]\nlr = 0.1\n")),
    "config: malformed YAML": Case(("run", "--config", "broken.yaml"), ("broken.yaml", "YAML", "line"),
                                   files(broken__yaml="rounds: [1\n")),
    "config: YAML that is not a mapping": Case(("run", "--config", "list.yml"), ("list.yml", "mapping"),
                                               files(list__yml="- rounds\n- 1\n")),
    "config: YAML asking for a Python object": Case(
        ("run", "--config", "object.yaml"), ("object.yaml", "YAML"),
        files(object__yaml="rounds: !!python/object/apply:os.system ['touch planted']\n")),
    # ---------------------------------------------------------------- run --resume of a damaged run folder
    "resume: a file, not a folder": Case(("run", "--resume", "afile"), ("--resume", "afile"), AFILE),
    "resume: no config.json": Case(("run", "--resume", "run"), ("--resume", "config.json"),
                                   run_folder(lambda run: (run / "config.json").unlink())),
    "resume: config.json garbage": Case(("run", "--resume", "run"), ("config.json",),
                                        run_folder(lambda run: (run / "config.json").write_bytes(b"\x00garbage{"))),
    "resume: checkpoint damaged": Case(("run", "--resume", "run"), ("server.safetensors",),
                                       run_folder(lambda run: truncate(run / "checkpoint" / "server.safetensors"))),
    "resume: checkpoint missing": Case(("run", "--resume", "run"), ("--resume", "checkpoint"),
                                       run_folder(lambda run: shutil.rmtree(run / "checkpoint"))),
    "resume: config.json of another model than the checkpoint": Case(
        ("run", "--resume", "run"), ("run/checkpoint",), run_folder(lambda run: with_dim(run, 16))),
    "resume: data changed since the checkpoint": Case(("run", "--resume", "run"), ("--resume", "'ML'"),
                                                      run_folder(template="data changed")),
    "resume: an option that would change the run": Case(("run", "--resume", "run", "--lr", "0.5"),
                                                         ("--lr", "--resume"), run_folder()),
    "resume: --rounds below the rounds already run": Case(("run", "--resume", "run", "--rounds", "1"),
                                                          ("--rounds 1", "2 rounds"), run_folder(template="two rounds")),
    # ---------------------------------------------------------------- the other commands
    "sweep: --out names a file": Case(("sweep", *QUICK, "--out", "afile"), ("--out", "afile"), AFILE),
    "sweep: malformed config": Case(("sweep", "--out", "grid", "--config", "broken.json"), ("broken.json",),
                                    files(broken__json="{")),
    "sweep: --set of an unknown key": Case(("sweep", "--out", "grid", "--set", "speed=1"), ("--set speed=1",)),
    "sweep: --out under a file": Case(("sweep", *QUICK, "--out", "afile/grid"), ("--out afile/grid", "cannot create"),
                                      AFILE),
    "sweep: --out holds a single run": Case(("sweep", *QUICK, "--out", "run"), ("--out run", "config.json"),
                                            run_folder()),
    "sweep: --resume with nothing to continue": Case(("sweep", *QUICK, "--resume", "--out", "grid"),
                                                     ("--resume", "grid")),
    "bench: no timed rounds": Case(("bench", "--rounds", "0"), ("--rounds",)),
    "bench: unknown dataset": Case(("bench", "--dataset", "NoSuchSet"), ("NoSuchSet",)),
    "bench: more users than the dataset": Case(("bench", "--dataset", "synthetic:tiny", "--users", "100000"),
                                               ("--users 100000", "300 users")),
    "bench: --plot in a folder that does not exist": Case(
        ("bench", "--dataset", "synthetic:tiny", "--users", "50", "--users", "100", "--plot", "nowhere/scaling.png"),
        ("--plot", "nowhere")),
    "report: a folder that is not a run": Case(("report", "notes"), ("metrics.parquet",),
                                               files(notes__readme__txt="hello")),
    "report: a missing folder": Case(("report", "nowhere"), ("nowhere",)),
    "report: damaged metrics.parquet": Case(("report", "run"), ("metrics.parquet", "parquet"),
                                            run_folder(lambda run: truncate(run / "metrics.parquet"))),
    "prepare: missing raw data": Case(("prepare", "--dataset", "ML", "--raw", "nowhere"), ("--raw", "nowhere")),
    "prepare: a dataset prepared already": Case(("prepare", "--dataset", "ML", "--raw", "raw", "--data-dir", "data"),
                                                ("data/ML", "--replace"), prepared_ml),
    "prepare: --data-dir names a file": Case(("prepare", "--dataset", "ML", "--raw", "raw", "--data-dir", "afile"),
                                             ("--data-dir", "afile"), AFILE),
    "features: a dataset that is not prepared": Case(("features", "--dataset", "ML"), ("ML", "meta.json")),
    "features: no images per batch": Case(("features", "--dataset", "ML", "--batch-size", "0"), ("--batch-size",)),
    "datasets: --data-dir names a file": Case(("datasets", "--data-dir", "afile"), ("--data-dir", "afile"), AFILE),
    "reproduce: --out names a file": Case(("reproduce", "table5", "--dataset", "synthetic:tiny", "--out", "afile"),
                                          ("--out", "afile"), AFILE),
    "reproduce: --out under a file": Case(("reproduce", "table5", "--dataset", "synthetic:tiny", "--out", "afile/x"),
                                          ("--out afile/x", "cannot create"), AFILE),
    "reproduce: a negative --dp-clip for an experiment without DP": Case(
        ("reproduce", "table5", "--dataset", "synthetic:tiny", "--dp-clip", "-1"), ("--dp-clip",)),
    "reproduce: no rounds": Case(("reproduce", "table5", "--dataset", "synthetic:tiny", "--rounds", "0"), ("--rounds",)),
    "--version with a value": Case(("--version=yes",), ("--version",)),
    "an unknown command": Case(("frobnicate",), ("frobnicate",)),
    "no command": Case((), ("command",)),
}


def fedvlr_sim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script, no stdin, its output captured."""
    return subprocess.run([str(FEDVLR_SIM), *args], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder`: a file's sha256, "dir" for a folder. A run's `.lock` counts
    by name only (it records the pid of the last process that held it)."""
    listing = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_dir():
            listing[name] = "dir"
        else:
            listing[name] = "lock" if path.name == ".lock" else hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def write_movielens(folder: Path, users: int, items: int = 8) -> Path:
    """A MovieLens raw folder where every user rated every movie (5-core keeps it all)."""
    folder.mkdir(parents=True)
    rows = ["userId,movieId,rating,timestamp"]
    rows += [f"{u + 1},{100 + i},4.0,{1_600_000_000 + 1000 * u + 10 * i}" for u in range(users) for i in range(items)]
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Run folders to damage: finished runs of one and two rounds with a checkpoint, a run on a
    prepared dataset that was prepared again, from other raw data, after the run, and that
    data folder."""
    import fedvlr_sim
    from fedvlr_sim.datasets import prepare_dataset

    root = tmp_path_factory.mktemp("templates")
    tiny = dict(backend="local", rounds=1, local_epochs=1, dim=8, variant="none", checkpoint_every=1)
    fedvlr_sim.run(tiny | dict(dataset="synthetic:tiny", out=str(root / "finished")))
    data = root / "data"
    prepare_dataset("ML", write_movielens(root / "raw-before", users=8), data)
    fedvlr_sim.run(tiny | dict(dataset="ML", data_dir=str(data), out=str(root / "data-changed")))
    prepare_dataset("ML", write_movielens(root / "raw-after", users=9), data, replace=True)
    fedvlr_sim.run(tiny | dict(dataset="synthetic:tiny", rounds=2, out=str(root / "two-rounds")))
    return {"finished": root / "finished", "data changed": root / "data-changed", "two rounds": root / "two-rounds",
            "data": data}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, templates) -> dict[str, Outcome]:
    """Every case run in a fresh folder of its own, AT_ONCE at a time."""
    root = tmp_path_factory.mktemp("bad-input")

    def attempt(name: str) -> Outcome:
        folder = root / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        folder.mkdir()
        CASES[name].setup(folder, templates)
        before = snapshot(folder)
        return Outcome(fedvlr_sim(*CASES[name].args, cwd=folder), before, snapshot(folder))

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return dict(zip(CASES, pool.map(attempt, CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_line_naming_the_culprit_and_leaves_nothing(name, outcomes):
    outcome = outcomes[name]
    process = outcome.process
    shown = f"exit {process.returncode}\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    assert process.returncode == 2, shown
    assert "Traceback" not in process.stdout + process.stderr, shown
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for mention in CASES[name].mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"
    assert outcome.after == outcome.before, "the command changed its folder"
