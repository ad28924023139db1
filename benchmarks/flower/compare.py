"""fedvlr-sim against Flower on the same per-user math and data, timed in one run.

Run with fedvlr-sim's Python (run.sh builds Flower's environment first and calls this):

    python benchmarks/flower/compare.py --flower-python benchmarks/flower/.venv/bin/python

1. export_data.py writes the first N users of synthetic:movie and fedvlr-sim's round-1 views
   (and, for --check K users, fedvlr-sim's own client update with its inputs);
2. flower_clients.py, in Flower's environment, checks its copy of the math against fedvlr-sim's
   update for those users;
3. at each N in turn, `fedvlr-sim bench` times FCF+ours rounds on Ray shards (full
   participation), then flower_clients.py times the same rounds as a Flower simulation (one
   ClientApp per user);
4. writes results.json and flower_vs_fedvlr.png (client updates per second, log scale) here, and
   prints the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASET = "synthetic:movie"


def log(text: str) -> None:
    print(f"[compare {datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    log(" ".join(str(c) for c in command))
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


def fedvlr_command() -> list[str]:
    script = Path(sys.executable).parent / "fedvlr-sim"
    return [str(script)] if script.exists() else [shutil.which("fedvlr-sim") or "fedvlr-sim"]


def time_fedvlr(sizes: list[int], rounds: int, work: Path, shards: int) -> dict[int, dict]:
    """`fedvlr-sim bench` at every size in one call; its JSON rows by users."""
    command = [*fedvlr_command(), "bench", "--dataset", DATASET, "--backbone", "fcf", "--variant", "ours",
               "--view-norm", "none", "--no-modality-views",   # the paper's three views, as export_data.py
               "--rounds", rounds, "--json", "--data-dir", work, "--plot", work / "fedvlr_scaling.png",
               "--shards", shards]
    for n in sizes:
        command += ["--users", n]
    out = run(command, stdout=subprocess.PIPE, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["users"]: row | {"system": "fedvlr-sim"} for row in rows}


def time_flower(flower_python: str, data: Path, rounds: int, cpus_per_client: float, out: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(HERE)}
    env.pop("RAY_ADDRESS", None)   # Flower starts its own Ray
    run([flower_python, HERE / "flower_clients.py", "--data", data, "--rounds", rounds,
         "--cpus-per-client", cpus_per_client, "--out", out], env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def default_server_lr() -> float:
    """The server lr both sides use: fedvlr-sim's default, which export_data.py hands to Flower."""
    from fedvlr_sim.config import RunConfig

    return RunConfig().server.server_lr


def fedvlr_versions() -> dict:
    from importlib.metadata import version

    import ray
    import torch

    return {"fedvlr-sim": version("fedvlr-sim"), "ray": ray.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def source_state() -> dict:
    """The commit fedvlr-sim's side ran from, and whether its package had uncommitted edits."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_files_in_fedvlr_sim": len(git("status", "--porcelain", "--", str(HERE.parent.parent / "fedvlr_sim")).splitlines())}


def draw(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = [row["users"] for row in results["fedvlr_sim"]]
    fed = [row["updates_per_second"] for row in results["fedvlr_sim"]]
    flo = [row["updates_per_second"] for row in results["flower"]]
    x = np.arange(len(sizes))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bars_fed = ax.bar(x - 0.2, fed, 0.4, label=f"fedvlr-sim {results['versions']['fedvlr_sim']['fedvlr-sim']} "
                      f"(Ray shards, users vectorised)", color="tab:blue")
    bars_flo = ax.bar(x + 0.2, flo, 0.4, label=f"Flower {results['versions']['flower']['flwr']} "
                      f"(run_simulation, one ClientApp per user)", color="tab:orange")
    for bars in (bars_fed, bars_flo):
        ax.bar_label(bars, labels=[f"{b.get_height():,.0f}" for b in bars], fontsize=8, padding=2)
    for i, (a, b) in enumerate(zip(fed, flo)):
        ax.annotate(f"{a / b:,.0f}x", (x[i], max(a, b) * 3), ha="center", fontsize=10, fontweight="bold")
    ax.set_yscale("log")
    ax.set_ylim(min(flo) / 3, max(fed) * 12)
    ax.set_xticks(x, [f"{n:,} users" for n in sizes])
    ax.set_ylabel("client updates per second (log scale)")
    loads = [row["load_average_1min_before"] for row in results["fedvlr_sim"] + results["flower"]
             if "load_average_1min_before" in row]
    noise = f", shared: load average {min(loads):.0f}-{max(loads):.0f}" if loads else ""
    ax.set_title(f"FCF+ours on synthetic:movie, A = 5, full participation\n"
                 f"{results['machine']['cpus']} CPU cores{noise}, both timed in one run ({results['date']})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flower-python", required=True, help="Python of Flower's environment (run.sh builds it)")
    parser.add_argument("--replot", action="store_true", help="only redraw the figure from OUT/results.json")
    parser.add_argument("--users", type=int, action="append", help="first N users (repeatable; default 1000, 5000)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds on each side, after one warm-up round")
    parser.add_argument("--check", type=int, default=8, help="users whose Flower update is checked against fedvlr-sim's")
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per Flower ClientApp")
    parser.add_argument("--shards", type=int, default=0, help="fedvlr-sim client shards (0 = one per CPU)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and the figure go")
    args = parser.parse_args()
    if args.replot:
        print(draw(json.loads((args.out / "results.json").read_text()), args.out / "flower_vs_fedvlr.png"))
        return
    sizes = sorted(set(args.users or [1000, 5000]))
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    load_before, source = os.getloadavg(), source_state()
    started = datetime.datetime.now()

    export = [sys.executable, HERE / "export_data.py", work, "--check", args.check]
    for n in sizes:
        export += ["--users", n]
    run(export, stdout=subprocess.DEVNULL)

    log("checking Flower's client update against fedvlr-sim's")
    run([args.flower_python, HERE / "flower_clients.py", "--check", work / "check.npz", "--out", work / "check.json"],
        stdout=subprocess.DEVNULL)
    check = json.loads((work / "check.json").read_text())

    # the two sides alternate size by size, so each pair is timed close together on a shared machine
    fedvlr, flower = {}, {}
    for n in sizes:
        log(f"timing fedvlr-sim at {n} users")
        load = os.getloadavg()[0]
        fedvlr[n] = time_fedvlr([n], args.rounds, work, args.shards)[n] | {"load_average_1min_before": load}
        log(f"timing Flower at {n} users")
        load = os.getloadavg()[0]
        flower[n] = time_flower(args.flower_python, work / f"movie_{n}.npz", args.rounds, args.cpus_per_client,
                                work / f"flower_{n}.json") | {"load_average_1min_before": load}

    finished = datetime.datetime.now()
    results = {
        "date": f"{started:%Y-%m-%d}",
        "started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "platform": platform.platform()},
        "workload": {"dataset": DATASET, "backbone": "fcf", "variant": "ours", "local_epochs": 5, "neg_ratio": 4,
                     "batch_size": 2048, "dim": 64, "views": 3, "server": f"Adam {default_server_lr()}",
                     "participation": 1.0,
                     "rounds_timed": args.rounds, "warmup_rounds": 1},
        "versions": {"fedvlr_sim": fedvlr_versions(), "flower": flower[sizes[0]]["versions"]},
        "fedvlr_sim_source": source,
        "math_check": check,
        "fedvlr_sim": [fedvlr[n] for n in sizes],
        "flower": [flower[n] for n in sizes],
        "ratio": [{"users": n, "updates_per_second_ratio": fedvlr[n]["updates_per_second"] / flower[n]["updates_per_second"]}
                  for n in sizes],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    figure = draw(results, args.out / "flower_vs_fedvlr.png")
    print(f"math check ({check['users']} users): largest differences from fedvlr-sim's update "
          + ", ".join(f"{k} {v:.1e}" for k, v in check["max_abs_diff"].items()))
    for n in sizes:
        a, b = fedvlr[n], flower[n]
        print(f"{n:>6} users: fedvlr-sim {a['updates_per_second']:,.0f} updates/s ({a['seconds_per_round']:.3f} s/round), "
              f"Flower {b['updates_per_second']:,.1f} updates/s ({b['seconds_per_round']:.2f} s/round): "
              f"{a['updates_per_second'] / b['updates_per_second']:,.0f}x")
    print(f"wrote {args.out / 'results.json'} and {figure}")


if __name__ == "__main__":
    main()
