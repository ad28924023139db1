"""The README's try-it-locally commands work exactly as written: `ray start --head` (from the
environment fedvlr-sim is installed in) and `ray job submit --working-dir . -- fedvlr-sim run ...
--address auto` run a federation as a Ray job whose run folder gets its summary.json, and the
head's metrics endpoint exports every `ray_fedvlr_*` series the Grafana dashboard queries.

The head is a private one: loopback ports of its own, its own --temp-dir, and stopped by ending
its own processes (never `ray stop`, which would stop every Ray instance on the machine, the test
session's included). Where the dashboard's job server cannot start, the tests are skipped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers_observability import queried_metrics

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HEAD_START_S = 60
JOB_S = 120


def readme_commands() -> list[list[str]]:
    """The commands of the first bash block of the README's "On a Ray cluster" section."""
    section = (REPO / "README.md").read_text().split("## On a Ray cluster", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def with_options(argv: list[str], values: dict[str, str]) -> list[str]:
    """`argv` with each option in `values` set to its value: replaced where present, else added."""
    argv = list(argv)
    for option, value in values.items():
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_text(url: str) -> str | None:
    """The body at `url`, or None when nothing answers there (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@dataclass
class Head:
    """A private Ray head started with `ray start --head --block` in its own session."""

    process: subprocess.Popen
    temp_dir: Path
    dashboard_port: int
    metrics_port: int
    env: dict

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def log_tail(self) -> str:
        return (self.temp_dir / "head.log").read_text(errors="replace")[-2000:]

    def jobs_api_up(self, timeout_s: float) -> bool:
        """Wait until the dashboard's job API answers; False if the head died or it timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if get_text(f"{self.job_address}/api/jobs/") is not None:
                return True
            time.sleep(1)
        return False

    def own_processes(self) -> list[psutil.Process]:
        """This head's processes: the `ray start` process, its descendants and whatever names
        its temp dir."""
        procs = []
        with contextlib.suppress(psutil.NoSuchProcess):
            started = psutil.Process(self.process.pid)
            procs = [started, *started.children(recursive=True)]
        return procs + [p for p in psutil.process_iter(["cmdline"])
                        if str(self.temp_dir) in " ".join(p.info["cmdline"] or []) and p not in procs]

    def stop(self) -> None:
        """End this head's processes only (SIGTERM, then SIGKILL: gcs_server and raylet ignore
        SIGTERM), and remove its temp dir."""
        procs = self.own_processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self.process.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def head_env() -> dict:
    """This environment as if the venv were activated, without any pointer to another cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return env | {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                  "HF_HUB_OFFLINE": "1"}


def start_head(start_command: list[str]) -> Head:
    """The README's `ray start --head` on free loopback ports with a private temp dir, blocking
    in a process of its own (a short temp-dir path: Ray's socket paths must fit 107 bytes)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="fvr-", dir="/tmp"))
    dashboard_port, metrics_port = free_port(), free_port()
    argv = with_options(start_command, {
        "--node-ip-address": "127.0.0.1", "--port": str(free_port()), "--dashboard-port": str(dashboard_port),
        "--include-dashboard": "true", "--temp-dir": str(temp_dir), "--metrics-export-port": str(metrics_port),
        "--ray-client-server-port": str(free_port()), "--dashboard-agent-listen-port": str(free_port()),
    }) + ["--block"]
    env = head_env()
    with open(temp_dir / "head.log", "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Head(process, temp_dir, dashboard_port, metrics_port, env)


@pytest.fixture(scope="module")
def ray_head():
    start, _ = readme_commands()
    assert start[:3] == ["ray", "start", "--head"], start
    missing = [name for name in ("ray", "fedvlr-sim") if not (VENV_BIN / name).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed beside {sys.executable} (pip install -e . there)")
    head = start_head(start)
    try:
        if not head.jobs_api_up(HEAD_START_S):
            pytest.skip(f"the Ray head's dashboard/job server did not start here: {head.log_tail()}")
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def submitted_run(ray_head, tmp_path_factory):
    """The README's `ray job submit ...` against the private head, run from the repository root;
    yields (completed process, run folder)."""
    _, submit = readme_commands()
    split = submit.index("--")
    assert submit[:3] == ["ray", "job", "submit"] and submit[split + 1] == "fedvlr-sim", submit
    run_dir = tmp_path_factory.mktemp("job") / "run"
    argv = (with_options(submit[:split], {"--address": ray_head.job_address}) + ["--"]
            + with_options(submit[split + 1:], {"--out": str(run_dir)}))
    done = subprocess.run(argv, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=JOB_S)
    return done, run_dir


def test_the_readme_job_command_runs_a_federation_on_the_head(submitted_run):
    done, run_dir = submitted_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_run"] == 2
    assert summary["shards"] == 2   # one per CPU of the head (--num-cpus 2)


def test_the_head_exports_every_series_the_grafana_dashboard_queries(ray_head, submitted_run):
    wanted, exported = queried_metrics(), set()
    deadline = time.monotonic() + 30   # workers report to the node's metrics agent every few seconds
    while not wanted <= exported and time.monotonic() < deadline:
        scraped = get_text(f"http://127.0.0.1:{ray_head.metrics_port}/metrics") or ""
        exported = set(re.findall(r"^(ray_fedvlr_\w+)", scraped, re.M))
        time.sleep(1)
    assert wanted <= exported, f"queried but not exported: {sorted(wanted - exported)}"
