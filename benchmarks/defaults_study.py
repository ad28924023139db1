"""Defaults study (issue 7): measure the SPEC section 10 amendments over several seeds before
making any of them a default. Runs exactly these grids with the installed `fedvlr-sim run`
(one run at a time, `--backend local --checkpoint-every 0`), skips every run whose folder already
holds a summary.json, and prints (and with --table writes) Markdown tables of
mean +- 95 % t-interval over the seeds.

    Q1 server step    KU; backbones fcf, fedavg, fedncf; --variant none | ours; client --lr 0.1;
                      --server-optimizer sgd --server-lr 1.0  vs  --server-optimizer adam --server-lr 0.01
    Q2 min rounds     KU; fedncf + ours; --min-rounds 0 vs 20; the Q1 server step
    Q3 fusion inputs  KU and synthetic:ku; fcf + ours; baseline vs
                      --center-features --view-norm rms --modality-views; the Q1 server step
    Q4 view norm      KU: every backbone + ours; synthetic:ku: fcf + ours and fcf + mlp;
                      baseline vs --view-norm rms alone; the Q1 server step, --min-rounds 20
    Q5 each piece     KU and synthetic:ku; fcf + ours; baseline vs --center-features alone,
                      --modality-views alone, --view-norm rms with --modality-views; as Q4
    Q6 the pair       the cells of Q4; baseline vs --view-norm rms --modality-views; as Q4
    Q7 centred views  KU: every backbone + ours, fedncf + mlp; synthetic:ku: fedncf + ours and + mlp;
                      --view-norm rms vs --view-norm center (both --modality-views); fedncf at
                      --lr 1 (its lr on KU), the others at 0.1; otherwise as Q4
    Q8 server lr      KU: fedncf none | ours | mlp, fcf none | ours, fedavg none, pfedrec none;
                      ML: every backbone none; --server-lr 0.01 vs 0.03 vs 0.1 (Adam; ML's
                      fcf and fedavg 0.01 vs 0.03 only; pfedrec and fedrap 0.03 only), each cell
                      at its default views; fedncf and every ML cell at --lr 1, the others
                      at 0.1; otherwise as Q4 (ML must be prepared in --data-dir too)
    Q9 negatives      Beauty and KU: every backbone none, KU: every backbone ours; ML: every
                      backbone none; uniform negatives vs --neg-popularity 0.5 and 1 (ML: 1
                      only); client lr chosen on valid per seed among 0.1 and 1 (ML: lr 1);
                      server Adam 0.03; otherwise as Q8 (Beauty must be prepared too)
    Q10 head bias     Beauty and KU: fedavg, pfedrec, fedrap none (uniform negatives and
                      --neg-popularity 1), KU: the same + ours (uniform); ML: the same none
                      (uniform, lr 1); the head's bias b_u against --no-head-bias; client lr
                      chosen on valid per seed among 0.1 and 1; otherwise as Q9
    Q11 rounds        KU: every backbone none and ours at --rounds 100, each seed at the negatives
                      and client lr Q9 chose for it on valid (Q9 must have run); against Q9's
                      40-round choice

All runs: --rounds 40 --patience 10, seeds 0 1 2 unless told otherwise.

    python benchmarks/defaults_study.py --data-dir /tmp/study-data --runs-dir /tmp/study-runs \\
        --table docs/defaults_tables.md

`--server-step auto` (the default for Q2-Q7) takes the Q1 server step with the higher mean VALID
NDCG@50 over all Q1 cells and seeds (never test). Run folders are named by configuration, so a run
shared by two questions (e.g. Q2's --min-rounds 0 is a Q1 cell) is trained once.
Start it under `nice -n 10` on a shared machine; the children inherit the priority.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SERVER_STEPS = {"sgd": ("sgd", 1.0), "adam": ("adam", 0.01), "adam0.03": ("adam", 0.03), "adam0.1": ("adam", 0.1)}
SERVER_LABEL = {"sgd": "SGD 1.0", "adam": "Adam 0.01", "adam0.03": "Adam 0.03", "adam0.1": "Adam 0.1"}
# two-sided 95 % Student t quantiles by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# the fusion-input settings a run can take, by the name its folder carries: (center_features,
# view_norm, modality_views). Each names all three choices and the run passes all three, so a
# setting means the same runs whatever the package defaults are ("base" is the paper's three raw
# views, the default until Q6).
FUSION_SETTINGS = {"base": (False, "none", False), "fusion3": (True, "rms", True), "viewnorm": (False, "rms", False),
                   "center": (True, "none", False), "modviews": (False, "none", True),
                   "viewnorm-modviews": (False, "rms", True), "center-modviews": (False, "center", True)}
FUSION_LABEL = {"base": "baseline", "fusion3": "all three", "viewnorm": "--view-norm rms",
                "center": "--center-features", "modviews": "--modality-views",
                "viewnorm-modviews": "--view-norm rms --modality-views",
                "center-modviews": "--view-norm center --modality-views"}


@dataclass(frozen=True)
class Run:
    dataset: str
    backbone: str
    variant: str
    server: str          # key of SERVER_STEPS
    seed: int
    min_rounds: int = 0
    fusion: str = "base"  # a key of FUSION_SETTINGS
    lr: float = 0.1       # the client lr
    neg: float = 0.0      # --neg-popularity (0: uniform negatives, the default)
    head_bias: bool = True  # False: --no-head-bias
    rounds: int = 0       # most rounds (0: the study's --rounds)

    @property
    def name(self) -> str:
        ds = self.dataset.replace(":", "_")
        lr = "" if self.lr == 0.1 else f"-lr{self.lr:g}"
        neg = f"-neg{self.neg:g}" if self.neg else ""
        bias = "" if self.head_bias else "-nobias"
        rounds = f"-r{self.rounds}" if self.rounds else ""
        return (f"{ds}-{self.backbone}-{self.variant}-{self.server}-mr{self.min_rounds}"
                f"-{self.fusion}{lr}{neg}{bias}{rounds}-s{self.seed}")

    def args(self, data_dir: str, rounds: int, patience: int, out: Path) -> list[str]:
        opt, lr = SERVER_STEPS[self.server]
        rounds = self.rounds or rounds
        args = ["run", "--dataset", self.dataset, "--backbone", self.backbone, "--variant", self.variant,
                "--lr", str(self.lr), "--server-optimizer", opt, "--server-lr", str(lr), "--rounds", str(rounds),
                "--patience", str(patience), "--min-rounds", str(self.min_rounds), "--seed", str(self.seed),
                "--backend", "local", "--checkpoint-every", "0", "--out", str(out)]
        if not self.dataset.startswith("synthetic:"):
            args += ["--data-dir", data_dir]
        if self.neg:
            args += ["--neg-popularity", str(self.neg)]
        if not self.head_bias:
            args += ["--no-head-bias"]
        return args + fusion_flags(self.fusion)

    def expected_config(self, rounds: int, patience: int) -> dict:
        opt, lr = SERVER_STEPS[self.server]
        rounds = self.rounds or rounds
        center, view_norm, modality_views = FUSION_SETTINGS[self.fusion]
        return {"dataset": self.dataset, "backbone": self.backbone, "variant": self.variant, "lr": self.lr,
                "server_optimizer": opt, "server_lr": lr, "rounds": rounds, "patience": patience,
                "min_rounds": self.min_rounds, "seed": self.seed, "center_features": center,
                "view_norm": view_norm, "modality_views": modality_views} | (
                    {"neg_popularity": self.neg} if self.neg else {}) | (
                    {} if self.head_bias else {"head_bias": False})


def fusion_flags(setting: str) -> list[str]:
    """The `fedvlr-sim run` options of a fusion-input setting (centring is off unless named)."""
    center, view_norm, modality_views = FUSION_SETTINGS[setting]
    return ((["--center-features"] if center else []) + ["--view-norm", view_norm]
            + ["--modality-views" if modality_views else "--no-modality-views"])


def q1_runs(seeds, backbones):
    return [Run("KU", b, v, s, seed) for b in backbones for v in ("none", "ours") for s in ("sgd", "adam")
            for seed in seeds]


def q2_runs(runner, seeds, server):
    return [Run("KU", "fedncf", "ours", server, seed, min_rounds=m) for m in (0, 20) for seed in seeds]


def q3_runs(runner, seeds, server):
    return [Run(ds, "fcf", "ours", server, seed, fusion=f) for ds in ("KU", "synthetic:ku") for f in ("base", "fusion3")
            for seed in seeds]


BACKBONES = ("fcf", "fedavg", "fedncf", "pfedrec", "fedrap")
Q4_CELLS = [("KU", b, "ours") for b in BACKBONES] + \
           [("synthetic:ku", "fcf", "ours"), ("synthetic:ku", "fcf", "mlp")]


def q4_runs(runner, seeds, server, cells=Q4_CELLS, settings=("viewnorm",)):
    return [Run(ds, b, v, server, seed, min_rounds=20, fusion=f) for ds, b, v in cells
            for f in ("base", *settings) for seed in seeds]


Q5_SETTINGS = ("center", "modviews", "viewnorm-modviews")


def q5_runs(runner, seeds, server):
    return q4_runs(runner, seeds, server, [("KU", "fcf", "ours"), ("synthetic:ku", "fcf", "ours")], Q5_SETTINGS)


def q6_runs(runner, seeds, server):
    return q4_runs(runner, seeds, server, settings=("viewnorm-modviews",))


# (dataset, backbone, variant, client lr): FedNCF at the lr KU's table 2 chose for it
Q7_CELLS = [("KU", "fedncf", "mlp", 1.0), ("KU", "fedncf", "ours", 1.0), ("synthetic:ku", "fedncf", "mlp", 1.0),
            ("synthetic:ku", "fedncf", "ours", 1.0)] + [("KU", b, "ours", 0.1) for b in ("fcf", "fedavg", "pfedrec", "fedrap")]
Q7_BASELINE = "viewnorm-modviews"


def default_views(backbone: str) -> str:
    """The fusion-input setting `--view-norm auto` gives a backbone since Q7."""
    return "center-modviews" if backbone == "fedncf" else Q7_BASELINE


def q7_runs(runner, seeds, server):
    return [Run(ds, b, v, server, seed, min_rounds=20, fusion=f, lr=lr) for ds, b, v, lr in Q7_CELLS
            for f in (Q7_BASELINE, "center-modviews") for seed in seeds]


Q8_SERVERS = ("adam", "adam0.03", "adam0.1")
# (dataset, backbone, variant, client lr, server steps); each at the views `--view-norm auto` gives
# it. ML's fcf and fedavg runs take minutes, and KU had already put 0.1 below 0.03 on every cell;
# ML's pfedrec and fedrap (FedRAP at its default lambda = mu = 1e-3) ran at the chosen 0.03 only.
Q8_CELLS = ([("KU", "fedncf", v, 1.0, Q8_SERVERS) for v in ("none", "ours", "mlp")]
            + [("KU", "fcf", v, 0.1, Q8_SERVERS) for v in ("none", "ours")]
            + [("KU", b, "none", 0.1, Q8_SERVERS) for b in ("fedavg", "pfedrec")]
            + [("ML", "fedncf", "none", 1.0, Q8_SERVERS)]
            + [("ML", b, "none", 1.0, Q8_SERVERS[:2]) for b in ("fcf", "fedavg")]
            + [("ML", b, "none", 1.0, Q8_SERVERS[1:2]) for b in ("pfedrec", "fedrap")])


def q8_runs(runner, seeds, server):
    """The server lr grid (Q8 varies the server step itself, so the Q1 choice does not apply)."""
    return [Run(ds, b, v, s, seed, min_rounds=20, fusion=default_views(b), lr=lr)
            for ds, b, v, lr, servers in Q8_CELLS for s in servers for seed in seeds]


Q9_NEGS = (0.0, 0.5, 1.0)
Q9_LRS = (0.1, 1.0)
# (dataset, backbone, variant, negative-sampling exponents): the client lr is chosen on valid per
# seed among Q9_LRS; ML (minutes a run, popular targets) is run at lr 1, uniform against beta 1
Q9_CELLS = ([(ds, b, "none", Q9_NEGS) for ds in ("Beauty", "KU") for b in BACKBONES]
            + [("KU", b, "ours", Q9_NEGS) for b in BACKBONES]
            + [("ML", b, "none", (0.0, 1.0)) for b in BACKBONES])


def q9_runs(runner, seeds, server):
    """Negatives drawn by popularity (--neg-popularity), at the Q8 server step Adam 0.03."""
    return [Run(ds, b, v, "adam0.03", seed, min_rounds=20, fusion=default_views(b), lr=lr, neg=neg)
            for ds, b, v, negs in Q9_CELLS for neg in negs for lr in ((1.0,) if ds == "ML" else Q9_LRS)
            for seed in seeds]


HEAD_BACKBONES = ("fedavg", "pfedrec", "fedrap")
# (dataset, variant, negative-sampling exponents, client lrs) of Q10, for each head backbone
Q10_CELLS = ([(ds, "none", (0.0, 1.0), Q9_LRS) for ds in ("Beauty", "KU")] + [("KU", "ours", (0.0,), Q9_LRS)]
             + [("ML", "none", (0.0,), (1.0,))])


def q10_runs(runner, seeds, server):
    """The score head's bias b_u against none (--no-head-bias), at Q9's settings; the runs with
    the bias are Q9's."""
    return [Run(ds, b, v, "adam0.03", seed, min_rounds=20, fusion=default_views(b), lr=lr, neg=neg, head_bias=bias)
            for ds, v, negs, lrs in Q10_CELLS for b in HEAD_BACKBONES for neg in negs for lr in lrs
            for bias in (True, False) for seed in seeds]


Q11_ROUNDS = 100


def q11_runs(runner, seeds, server):
    """KU's Q9 cells at Q11_ROUNDS rounds, each seed at the negatives and client lr its 40-round
    grid chose on valid (so Q9 must have run); the 40-round choices are Q9's runs."""
    grid = [r for r in q9_runs(runner, seeds, server) if r.dataset == "KU"]
    runs = []
    for ds, b, v in dict.fromkeys((r.dataset, r.backbone, r.variant) for r in grid):
        for chosen in best_on_valid(runner, [r for r in grid if (r.dataset, r.backbone, r.variant) == (ds, b, v)]):
            cfg = chosen["config"]
            runs.append(Run(ds, b, v, "adam0.03", cfg["seed"], min_rounds=20, fusion=default_views(b), lr=cfg["lr"],
                            neg=cfg.get("neg_popularity", 0.0), rounds=Q11_ROUNDS))
    return runs


# ---------------------------------------------------------------------------------------- running
@dataclass
class Runner:
    exe: str
    data_dir: str
    runs_dir: Path
    rounds: int
    patience: int
    dry_run: bool = False
    jobs: int = 1
    notes: list = field(default_factory=list)

    def folder(self, run: Run) -> Path:
        return self.runs_dir / run.name

    def ensure(self, runs: list[Run]) -> None:
        """Train every run without a summary.json, `jobs` at a time (each run one thread)."""
        todo = [r for r in runs if not (self.folder(r) / "summary.json").exists()]
        print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to train", flush=True)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            list(pool.map(self._train, range(1, len(todo) + 1), todo, [len(todo)] * len(todo)))

    def _train(self, i: int, run: Run, total: int) -> None:
        out = self.folder(run)
        cmd = [self.exe, *run.args(self.data_dir, self.rounds, self.patience, out)]
        print(f"[{i}/{total}] {run.name}", flush=True)
        if self.dry_run:
            print("   ", " ".join(cmd))
            return
        if out.exists():  # an interrupted run of ours: train it again from scratch
            shutil.rmtree(out)
        log = self.runs_dir / "logs" / f"{run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with log.open("w") as fh:
            env = os.environ | ({"OMP_NUM_THREADS": "1"} if self.jobs > 1 else {})
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        took = time.monotonic() - t0
        if (out / "summary.json").exists():
            msg = f"    {run.name} done in {took:.0f} s"
            if rc != 0:
                self.notes.append(f"{run.name}: exit {rc} after summary.json was written (see {log}); results used")
                msg += f" (exit {rc} after summary.json: {log})"
            print(msg, flush=True)
        else:
            self.notes.append(f"{run.name}: FAILED, exit {rc}, no summary.json (see {log})")
            print(f"    {run.name} FAILED (exit {rc}), see {log}", flush=True)

    def load(self, run: Run) -> dict | None:
        path = self.folder(run) / "summary.json"
        if not path.exists():
            return None
        summary = json.loads(path.read_text())
        got = summary.get("config", {})
        for key, want in run.expected_config(self.rounds, self.patience).items():
            if got.get(key) != want:
                raise SystemExit(f"error: {path}: {key} is {got.get(key)!r}, this study expects {want!r} "
                                 "(remove the folder or use another --runs-dir)")
        return summary


# ------------------------------------------------------------------------------------- statistics
def mean_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    m, h = mean_ci([v * scale for v in values])
    if math.isnan(h):
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {h:.{digits}f}" + ("" if len(values) == 3 else f" (n={len(values)})")


def cell(summaries: list[dict]) -> dict:
    """Per-seed values of one configuration."""
    pick = lambda f: [f(s) for s in summaries]  # noqa: E731
    return {
        "n": len(summaries),
        "test_hr": pick(lambda s: s["test"]["hr@50"]),
        "test_ndcg": pick(lambda s: s["test"]["ndcg@50"]),
        "valid_ndcg": pick(lambda s: s["valid"]["ndcg@50"]),
        "best": pick(lambda s: s["best_round"]),
        "ran": pick(lambda s: s["rounds_run"]),
        "below_pop": sum(any("below the popularity" in w for w in s.get("warnings", [])) for s in summaries),
        "summaries": summaries,
    }


def rounds_text(c: dict) -> str:
    return ", ".join(f"{b}/{r}" for b, r in zip(c["best"], c["ran"]))


def paired(a: list[dict], b: list[dict], key) -> str:
    """b - a per seed (same seeds, same order), mean +- t-interval, in points."""
    diffs = [key(y) - key(x) for x, y in zip(a, b)]
    if not diffs:
        return "n/a"
    m, h = mean_ci([d * 100 for d in diffs])
    if math.isnan(h):
        return f"{m:+.2f} (n=1)"
    sign = " *" if abs(m) > h else ""
    return f"{m:+.2f} ± {h:.2f}{sign}"


def _paired_raw(a: list[dict], b: list[dict], key: str) -> str:
    """b - a per seed of modality_spearman[key], mean +- t-interval (no scaling)."""
    diffs = [(y.get("modality_spearman") or {}).get(key, float("nan"))
             - (x.get("modality_spearman") or {}).get(key, float("nan")) for x, y in zip(a, b)]
    m, h = mean_ci(diffs)
    return f"{m:+.3f} ± {h:.3f}" + (" *" if abs(m) > h else "")


def references(summaries: list[dict]) -> str:
    """The reference rankings depend on the data and the seed only (cold_first breaks ties at random,
    synthetic worlds are drawn from the seed): one value per seed."""
    summaries = list({s["config"]["seed"]: s for s in summaries}.values())
    parts = []
    for name in ("popularity", "random", "cold_first"):
        hr = [s["baselines"][name]["hr@50"] for s in summaries]
        nd = [s["baselines"][name]["ndcg@50"] for s in summaries]
        same = max(hr) - min(hr) < 1e-12 and max(nd) - min(nd) < 1e-12
        if same:
            parts.append(f"{name} {hr[0] * 100:.2f} / {nd[0] * 100:.2f}")
        else:
            parts.append(f"{name} {fmt(hr)} / {fmt(nd)}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ tables
def loaded(runner: Runner, runs: list[Run]) -> list[dict]:
    return [s for s in (runner.load(r) for r in runs) if s is not None]


def choose_server(runner: Runner, seeds, backbones) -> tuple[str, str]:
    vals = {}
    for server in ("sgd", "adam"):
        v = [s["valid"]["ndcg@50"] for s in loaded(runner, [r for r in q1_runs(seeds, backbones) if r.server == server])]
        vals[server] = (sum(v) / len(v) if v else float("nan"), len(v))
    if any(n == 0 for _, n in vals.values()):
        raise SystemExit("error: --server-step auto needs the Q1 runs; run Q1 first or give --server-step")
    best = max(vals, key=lambda k: vals[k][0])
    why = (f"chosen on mean VALID NDCG@50 over all Q1 cells and seeds: SGD 1.0 {vals['sgd'][0] * 100:.2f} "
           f"(n={vals['sgd'][1]}), Adam 0.01 {vals['adam'][0] * 100:.2f} (n={vals['adam'][1]})")
    return best, why


HEAD = ("| cell | setting | test HR@50 | test NDCG@50 | valid NDCG@50 | best round / rounds run (per seed) "
        "| below popularity on valid |\n|---|---|---|---|---|---|---|")


def row(label: str, setting: str, c: dict) -> str:
    return (f"| {label} | {setting} | {fmt(c['test_hr'])} | {fmt(c['test_ndcg'])} | {fmt(c['valid_ndcg'])} "
            f"| {rounds_text(c)} | {c['below_pop']}/{c['n']} |")


def q1_table(runner: Runner, seeds, backbones) -> str:
    out = ["### Q1: server step (KU, client lr 0.1, 40 rounds, patience 10)", "", HEAD]
    diffs = ["", "Paired difference Adam 0.01 - SGD 1.0 per seed (points; * = interval excludes 0):", "",
             "| cell | Δ test HR@50 | Δ test NDCG@50 | Δ valid NDCG@50 |", "|---|---|---|---|"]
    allsum = []
    for b in backbones:
        for v in ("none", "ours"):
            per = {}
            for server in ("sgd", "adam"):
                sums = loaded(runner, [r for r in q1_runs(seeds, [b]) if r.variant == v and r.server == server])
                per[server] = sums
                allsum += sums
                if sums:
                    out.append(row(f"{b} + {v}", SERVER_LABEL[server], cell(sums)))
            if per["sgd"] and len(per["sgd"]) == len(per["adam"]):
                a, z = per["sgd"], per["adam"]
                diffs.append(f"| {b} + {v} | {paired(a, z, lambda s: s['test']['hr@50'])} | "
                             f"{paired(a, z, lambda s: s['test']['ndcg@50'])} | "
                             f"{paired(a, z, lambda s: s['valid']['ndcg@50'])} |")
    if allsum:
        out += ["", f"References (test HR@50 / NDCG@50, KU): {references(allsum)}."]
    return "\n".join(out + diffs)


def q2_table(runner: Runner, seeds, server, why) -> str:
    out = [f"### Q2: minimum rounds before patience counts (KU, fedncf + ours, {SERVER_LABEL[server]}, "
           "40 rounds, patience 10)", "", f"Server step {why}.", "", HEAD]
    per = {}
    for m in (0, 20):
        sums = loaded(runner, [r for r in q2_runs(runner, seeds, server) if r.min_rounds == m])
        per[m] = sums
        if sums:
            out.append(row("fedncf + ours", f"--min-rounds {m}", cell(sums)))
    if per[0] and len(per[0]) == len(per[20]):
        a, z = per[0], per[20]
        out += ["", "Paired difference --min-rounds 20 - 0 per seed (points; * = interval excludes 0): "
                f"test HR@50 {paired(a, z, lambda s: s['test']['hr@50'])}, "
                f"test NDCG@50 {paired(a, z, lambda s: s['test']['ndcg@50'])}, "
                f"valid NDCG@50 {paired(a, z, lambda s: s['valid']['ndcg@50'])}."]
    if per[0] or per[20]:
        out += ["", f"References (test HR@50 / NDCG@50, KU): {references(per[0] + per[20])}."]
    return "\n".join(out)


def q3_table(runner: Runner, seeds, server, why) -> str:
    flags = " ".join(fusion_flags("fusion3"))
    return fusion_table(runner, q3_runs(runner, seeds, server), ("fusion3",),
                        f"### Q3: fusion inputs (fcf + ours, {SERVER_LABEL[server]}, 40 rounds, patience 10)",
                        f"Server step {why}. 'all three' = `{flags}`.")


def q4_table(runner: Runner, seeds, server, why) -> str:
    return fusion_table(runner, q4_runs(runner, seeds, server), ("viewnorm",),
                        f"### Q4: `--view-norm rms` alone ({SERVER_LABEL[server]}, client lr 0.1, 40 rounds, "
                        "patience 10 counted after round 20)", f"Server step {why}.")


def q5_table(runner: Runner, seeds, server, why) -> str:
    return fusion_table(runner, q5_runs(runner, seeds, server), Q5_SETTINGS,
                        f"### Q5: each fusion-input piece (fcf + ours, {SERVER_LABEL[server]}, client lr 0.1, 40 "
                        "rounds, patience 10 counted after round 20)", f"Server step {why}.")


def q6_table(runner: Runner, seeds, server, why) -> str:
    return fusion_table(runner, q6_runs(runner, seeds, server), ("viewnorm-modviews",),
                        f"### Q6: `--view-norm rms --modality-views` on every cell of Q4 ({SERVER_LABEL[server]}, "
                        "client lr 0.1, 40 rounds, patience 10 counted after round 20)", f"Server step {why}.")


def q7_table(runner: Runner, seeds, server, why) -> str:
    return fusion_table(runner, q7_runs(runner, seeds, server), ("center-modviews",),
                        f"### Q7: views centred on their item mean before the RMS ({SERVER_LABEL[server]}, "
                        "client lr 1 for fedncf and 0.1 for the others, 40 rounds, patience 10 counted after round 20)",
                        f"Server step {why}. The baseline is Q6's default, `--view-norm rms --modality-views`.",
                        baseline=Q7_BASELINE)


def q8_table(runner: Runner, seeds, server, why) -> str:
    return fusion_table(runner, q8_runs(runner, seeds, server), Q8_SERVERS[1:],
                        "### Q8: server Adam lr (client lr 1 for fedncf and on ML, 0.1 for the others, each cell "
                        "at its default views, 40 rounds, patience 10 counted after round 20)",
                        "The baseline is the default until Q8, Adam 0.01.", baseline="adam", vary="server",
                        labels=SERVER_LABEL)


def best_on_valid(runner: Runner, runs: list[Run]) -> list[dict]:
    """For each seed, the finished run of `runs` (which differ in hyper-parameters) with the
    highest VALID NDCG@50, in seed order."""
    by_seed = {}
    for run, summary in ((r, runner.load(r)) for r in runs):
        if summary is not None and (run.seed not in by_seed
                                    or summary["valid"]["ndcg@50"] > by_seed[run.seed]["valid"]["ndcg@50"]):
            by_seed[run.seed] = summary
    return [by_seed[seed] for seed in sorted(by_seed)]


def fusion_table(runner: Runner, runs: list[Run], settings: tuple[str, ...], title: str, note: str,
                 baseline: str = "base", vary: str = "fusion", labels: dict = FUSION_LABEL, select=loaded) -> str:
    """`baseline` against each other setting of the Run field `vary` (the fusion inputs unless
    told), cell by cell (dataset, backbone, variant), with paired per-seed differences and, on
    planted worlds, modality_spearman. `select(runner, runs)` gives a setting's summaries, one per
    seed (every finished run unless told)."""
    out = [title, "", note, "", HEAD]
    spear_head = ["", "modality_spearman on synthetic:ku (Spearman across users of measured reliance share vs "
                  "planted weight):", "", "| cell | setting | vision | text | id | mean |", "|---|---|---|---|---|---|"]
    spear = []
    diffs = ["", "Paired difference setting - baseline per seed (points; * = interval excludes 0):", "",
             "| cell | setting | Δ test HR@50 | Δ test NDCG@50 | Δ valid NDCG@50 |", "|---|---|---|---|---|"]
    refs = {}
    cells = list(dict.fromkeys((r.dataset, r.backbone, r.variant) for r in runs))
    for ds, b, v in cells:
        name = f"{ds} {b} + {v}"
        per = {f: select(runner, [r for r in runs
                                  if (r.dataset, r.backbone, r.variant, getattr(r, vary)) == (ds, b, v, f)])
               for f in (baseline, *settings)}
        for f, sums in per.items():
            if not sums:
                continue
            out.append(row(name, labels[f], cell(sums)))
            refs.setdefault(ds, []).extend(sums)
            if ds.startswith("synthetic:"):
                sp = [s.get("modality_spearman") or {} for s in sums]
                spear.append(f"| {name} | {labels[f]} | " + " | ".join(
                    fmt([x[k] for x in sp if k in x], scale=1.0, digits=3) for k in ("vision", "text", "id", "mean"))
                    + " |")
        for setting in settings:
            a, z, label = per[baseline], per[setting], labels[setting]
            if not a or len(a) != len(z):
                continue
            if ds.startswith("synthetic:"):
                spear.append(f"| {name} | Δ {label} - {labels[baseline]} (paired) | "
                             + " | ".join(_paired_raw(a, z, k) for k in ("vision", "text", "id", "mean")) + " |")
            diffs.append(f"| {name} | {label} | {paired(a, z, lambda s: s['test']['hr@50'])} | "
                         f"{paired(a, z, lambda s: s['test']['ndcg@50'])} | "
                         f"{paired(a, z, lambda s: s['valid']['ndcg@50'])} |")
    if refs:
        out += ["", "References (test HR@50 / NDCG@50): "
                + ". ".join(f"{ds}: {references(sums)}" for ds, sums in refs.items()) + "."]
    return "\n".join(out + diffs + (spear_head + spear if spear else []))


def q9_table(runner: Runner, seeds, server, why) -> str:
    labels = {neg: "uniform" if neg == 0 else f"--neg-popularity {neg:g}" for neg in Q9_NEGS}
    runs = q9_runs(runner, seeds, server)
    joint = ["", "The exponent chosen on valid too (per seed, the run of highest VALID NDCG@50 among every "
             "exponent and lr of the cell), as `sweep` and `reproduce` now tune it:", "",
             "| cell | test HR@50 | test NDCG@50 | valid NDCG@50 | chosen exponent / lr (per seed) |",
             "|---|---|---|---|---|"]
    for ds, b, v, _ in Q9_CELLS:
        chosen = best_on_valid(runner, [r for r in runs if (r.dataset, r.backbone, r.variant) == (ds, b, v)])
        if chosen:
            c = cell(chosen)
            picks = "; ".join(f"{s['config'].get('neg_popularity', 0.0):g} / {s['config']['lr']:g}" for s in chosen)
            joint.append(f"| {ds} {b} + {v} | {fmt(c['test_hr'])} | {fmt(c['test_ndcg'])} | {fmt(c['valid_ndcg'])} "
                         f"| {picks} |")
    return fusion_table(runner, runs, Q9_NEGS[1:],
                        "### Q9: negatives drawn by item popularity (Adam 0.03, 40 rounds, patience 10 counted "
                        "after round 20; client lr chosen on valid per seed among 0.1 and 1, ML at lr 1)",
                        "The baseline is SPEC section 5's uniform negatives. With --neg-popularity beta > 0 a "
                        "negative is drawn with probability proportional to its item's train count^beta, so "
                        "items no user has in train are never negatives.", baseline=0.0, vary="neg",
                        labels=labels, select=best_on_valid) + "\n" + "\n".join(joint)


def q10_table(runner: Runner, seeds, server, why) -> str:
    labels = {True: "head bias b_u", False: "--no-head-bias"}
    runs = q10_runs(runner, seeds, server)
    sections = []
    for neg in (0.0, 1.0):
        at_neg = [r for r in runs if r.neg == neg]
        negatives = "uniform negatives" if neg == 0 else f"--neg-popularity {neg:g}"
        sections.append(fusion_table(
            runner, at_neg, (False,),
            f"### Q10: the score head's bias, {negatives} (Adam 0.03, 40 rounds, patience 10 counted after round "
            "20; client lr chosen on valid per seed among 0.1 and 1, ML at lr 1)",
            "FedAvg, PFedRec and FedRAP score theta_u . e + b_u (a PyTorch Linear, as the authors' code) or "
            "theta_u . e (SPEC's formula, --no-head-bias).", baseline=True, vary="head_bias", labels=labels,
            select=best_on_valid))
        cold = ["", f"Test HR@50 of the users whose test item no user has in train ({negatives}; mean over the "
                "seeds of the run chosen on valid):", "", "| cell | head bias b_u | --no-head-bias |", "|---|---|---|"]
        for ds, b, v in dict.fromkeys((r.dataset, r.backbone, r.variant) for r in at_neg):
            chosen = {bias: best_on_valid(runner, [r for r in at_neg if (r.dataset, r.backbone, r.variant,
                                                                          r.head_bias) == (ds, b, v, bias)])
                      for bias in (True, False)}
            if all(chosen.values()) and ds != "ML":
                cold.append(f"| {ds} {b} + {v} | " + " | ".join(
                    fmt([s["test_cold"]["hr@50"] for s in chosen[bias]]) for bias in (True, False)) + " |")
        sections.append("\n".join(cold))
    return "\n\n".join(sections)


def q11_table(runner: Runner, seeds, server, why) -> str:
    grid = [r for r in q9_runs(runner, seeds, server) if r.dataset == "KU"]
    longer = q11_runs(runner, seeds, server)
    labels = {0: "40 rounds (Q9's choice)", Q11_ROUNDS: f"{Q11_ROUNDS} rounds"}
    table = fusion_table(
        runner, grid + longer, (Q11_ROUNDS,),
        f"### Q11: the rounds budget, 40 against {Q11_ROUNDS} (KU, Adam 0.03, patience 10 counted after round 20; "
        "each seed at the negatives and client lr its 40-round grid chose on valid)",
        "The 40-round rows are Q9's runs chosen on valid; the longer runs repeat each chosen point with "
        f"--rounds {Q11_ROUNDS}, so the only difference is the budget.", baseline=0, vary="rounds", labels=labels,
        select=best_on_valid)
    gap = ["", "+ours - plain per seed at each budget (points; * = interval excludes 0):", "",
           "| backbone | budget | Δ test HR@50 | Δ test NDCG@50 | Δ valid NDCG@50 |", "|---|---|---|---|---|"]
    for b in BACKBONES:
        for rounds, runs in ((0, grid), (Q11_ROUNDS, longer)):
            plain, ours = (best_on_valid(runner, [r for r in runs if (r.backbone, r.variant) == (b, v)])
                           for v in ("none", "ours"))
            if plain and len(plain) == len(ours):
                gap.append(f"| {b} | {labels[rounds]} | {paired(plain, ours, lambda s: s['test']['hr@50'])} | "
                           f"{paired(plain, ours, lambda s: s['test']['ndcg@50'])} | "
                           f"{paired(plain, ours, lambda s: s['valid']['ndcg@50'])} |")
    return table + "\n" + "\n".join(gap)


# the questions after Q1, which take its server step: their runs and their table, in order
LATER_QUESTIONS = {"q2": (q2_runs, q2_table), "q3": (q3_runs, q3_table), "q4": (q4_runs, q4_table),
                   "q5": (q5_runs, q5_table), "q6": (q6_runs, q6_table), "q7": (q7_runs, q7_table),
                   "q8": (q8_runs, q8_table), "q9": (q9_runs, q9_table), "q10": (q10_runs, q10_table),
                   "q11": (q11_runs, q11_table)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fedvlr_sim"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"commit {commit}{' + uncommitted changes in fedvlr_sim/' if dirty else ''}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", nargs="+", default=["q1", "q2", "q3"], choices=["q1", *LATER_QUESTIONS])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backbones", nargs="+", default=["fcf", "fedavg", "fedncf"], help="Q1 backbones")
    p.add_argument("--server-step", default="auto", choices=["auto", "sgd", "adam"],
                   help="server step for Q2-Q7 (auto: the Q1 winner on valid NDCG@50)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--data-dir", default="data", help="prepared datasets (KU must be prepared there)")
    p.add_argument("--runs-dir", default="runs/defaults-study", type=Path)
    p.add_argument("--table", type=Path, help="also write the Markdown tables to this file")
    p.add_argument("--report-only", action="store_true", help="train nothing; tabulate the finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the missing runs")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (each on one thread when above 1)")
    args = p.parse_args(argv)

    exe = Path(sys.executable).with_name("fedvlr-sim")
    exe = str(exe) if exe.exists() else shutil.which("fedvlr-sim")
    if not exe:
        raise SystemExit("error: fedvlr-sim not found beside this Python or on PATH")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(exe, args.data_dir, args.runs_dir, args.rounds, args.patience, dry_run=args.dry_run,
                    jobs=args.jobs)
    train = not args.report_only
    qs = set(args.questions)

    sections = []
    if "q1" in qs:
        if train:
            runner.ensure(q1_runs(args.seeds, args.backbones))
        sections.append(q1_table(runner, args.seeds, args.backbones))
    if qs & set(LATER_QUESTIONS):
        if args.server_step == "auto":
            if args.dry_run and not loaded(runner, q1_runs(args.seeds, args.backbones)):
                server, why = "adam", "(dry run: Q1 not trained, adam shown)"
            else:
                server, why = choose_server(runner, args.seeds, args.backbones)
        else:
            server, why = args.server_step, "given by --server-step"
        print(f"server step for Q2-Q7: {SERVER_LABEL[server]} ({why})", flush=True)
        for name, (runs, table) in LATER_QUESTIONS.items():
            if name in qs:
                if train:
                    runner.ensure(runs(runner, args.seeds, server))
                sections.append(table(runner, args.seeds, server, why))
    if args.dry_run:
        return 0
    header = [f"Seeds {' '.join(map(str, args.seeds))}; values are mean ± 95 % t-interval over the seeds "
              f"(t = {T975.get(len(args.seeds) - 1, 1.96)}), percent. Machine: {machine()}.",
              f"Runs in `{args.runs_dir}`."]
    if runner.notes:
        header += ["", "Notes:"] + [f"- {n}" for n in runner.notes]
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
