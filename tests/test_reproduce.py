"""`fedvlr-sim reproduce`: an experiment's cells run (finished runs kept on a second call),
its parquet rows and markdown intervals; table 3 measured against the declared shapes."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import fedvlr_sim.reproduce.jobs as jobs
from fedvlr_sim.cli import app
from fedvlr_sim.config import RunConfig
from fedvlr_sim.reproduce.catalogue import EXPERIMENTS
from fedvlr_sim.reproduce.experiment import Choices
from fedvlr_sim.reproduce.grid import point_name
from fedvlr_sim.reproduce.stats import mean_interval, wilcoxon

TINY = ("--set", "dim=8", "--set", "local_epochs=1", "--set", "checkpoint_every=0")
ABLATION_ROWS = ["full", "without vision", "without text", "without id", "random vision", "random text", "random id"]


def reproduce_cli(*args):
    return CliRunner().invoke(app, ["reproduce", *args])


@pytest.fixture
def counted_runs(monkeypatch):
    """Every run the executor trains, by folder."""
    started = []
    real = jobs.execute

    def counting(cfg, dataset, run_dir, *args, **kwargs):
        started.append(run_dir)
        return real(cfg, dataset, run_dir, *args, **kwargs)

    monkeypatch.setattr(jobs, "execute", counting)
    return started


def test_table5_writes_rows_and_intervals_and_resumes(tmp_path, counted_runs):
    out = tmp_path / "out"
    args = ("table5", "--dataset", "synthetic:tiny", "--seeds", "2", "--rounds", "2", "--out", str(out),
            "--data-dir", str(tmp_path), *TINY)
    result = reproduce_cli(*args)
    assert result.exit_code == 0, result.output
    assert len(counted_runs) == 7 * 2

    rows = pl.read_parquet(out / "table5.parquet")
    assert rows.height == 14
    assert sorted(rows["seed"].unique().to_list()) == [0, 1]
    assert rows["row"].unique(maintain_order=True).to_list() == ABLATION_ROWS
    assert set(rows["ablation"]) == {"keep", "vision=drop", "text=drop", "id=drop", "vision=noise", "text=noise",
                                     "id=noise"}
    for row in rows.iter_rows(named=True):
        assert (out.joinpath(row["run"]) / "summary.json").is_file()
        assert 0 <= row["test_ndcg@50"] <= row["test_hr@50"] <= 1 and row["lr"] == 0.1

    text = (out / "table5.md").read_text()
    assert "Student-t" in text
    for label in ABLATION_ROWS:
        line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        values = rows.filter(pl.col("row") == label)["test_hr@50"].to_list()
        mean, half = mean_interval(values)
        assert f"{100 * mean:.2f} ± {100 * half:.2f}" in line
    # the cold prior is built on each run's own model: a table of its own per cell, never a
    # dataset-wide reference row taken from whichever run came last
    assert "reference: cold_prior" not in text
    cold = [json.loads(b)["cold_prior"]["hr@50"] for b in rows.filter(pl.col("row") == "full")["baselines"]
            if "cold_prior" in json.loads(b)]
    assert len(cold) == 2
    section = text[text.index("Reference `cold_prior` on each cell's own model"):]
    line = next(line for line in section.splitlines() if line.startswith("| full |"))
    assert "{:.2f}".format(100 * mean_interval(cold)[0]) in line

    # a second call keeps the finished runs; a run without summary (and no checkpoint) restarts
    (out.joinpath(rows["run"][3]) / "summary.json").unlink()
    counted_runs.clear()
    result = reproduce_cli(*args)
    assert result.exit_code == 0, result.output
    assert [str(p) for p in counted_runs] == [rows["run"][3]]
    assert pl.read_parquet(out / "table5.parquet").height == 14

    # another configuration is refused in one line rather than mixed in
    result = reproduce_cli(*args[:-len(TINY)], "--set", "dim=16", "--set", "local_epochs=1", "--set", "checkpoint_every=0")
    assert result.exit_code == 2 and "dim=8" in result.output


def test_a_plain_run_is_kept_whatever_fusion_input_choice_it_was_made_under(tmp_path, counted_runs):
    """--view-norm does not apply to a plain run, so changing it (or its default) keeps the
    plain runs of a folder; a fusion run made under the other choice is refused in one line."""
    from fedvlr_sim.errors import FedVLRError

    tiny = dict(dataset="synthetic:tiny", data_dir=str(tmp_path), backend="local", dim=8, rounds=1, local_epochs=1,
                checkpoint_every=0)
    for variant in ("none", "ours"):
        jobs.run_job(jobs.Job(RunConfig.create(**tiny, variant=variant, view_norm="none"), tmp_path / variant))
    counted_runs.clear()
    jobs.run_job(jobs.Job(RunConfig.create(**tiny, variant="none", view_norm="rms"), tmp_path / "none"))
    assert counted_runs == []
    with pytest.raises(FedVLRError, match="view_norm='none', not 'rms'"):
        jobs.run_job(jobs.Job(RunConfig.create(**tiny, variant="ours", view_norm="rms"), tmp_path / "ours"))


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = RunConfig.create(dataset="synthetic:tiny", data_dir=str(tmp_path), backend="local", variant="none", dim=8,
                           rounds=2, local_epochs=1, checkpoint_every=1)
    job = jobs.Job(cfg, tmp_path / "run")
    first = jobs.run_job(job)
    (job.run_dir / "summary.json").unlink()
    resumed_from = []
    real = jobs.execute
    monkeypatch.setattr(jobs, "execute", lambda *a, resume=None: resumed_from.append(resume) or real(*a, resume=resume))
    again = jobs.run_job(job)
    assert resumed_from and resumed_from[0] is not None
    assert again["test"] == first["test"]


def test_table3_counts_match_the_declared_shapes(tmp_path):
    from fedvlr_sim.engine import model

    out = tmp_path / "out"
    result = reproduce_cli("table3", "--dataset", "synthetic:tiny", "--out", str(out), "--data-dir", str(tmp_path),
                           "--set", "dim=8")
    assert result.exit_code == 0, result.output
    assert "| fedrap |" in result.output   # printed too
    rows = pl.read_parquet(out / "table3.parquet")
    assert rows.height == len(EXPERIMENTS["table3"].cells(Choices()))
    for row in rows.iter_rows(named=True):
        cfg = RunConfig.create(backbone=row["backbone"], variant=row["variant"], dim=8).model
        width = cfg.variant_def.width(8)
        local = model.local_shapes(cfg, width, row["n_items"])
        assert row["client_params"] == sum(math.prod(s) for s in local.values())
        views = cfg.variant_def.n_views * row["n_items"] * width
        globals_ = views + sum(math.prod(s) for s in cfg.backbone_def.global_shapes(width).values())
        assert row["down_bytes"] == row["up_bytes"] == 4 * globals_


def test_a_dataset_without_features_cannot_run_a_fusion_experiment(tmp_path):
    from fedvlr_sim.datasets import prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{100 + i},4.0,{1_600_000_000 + 1000 * u + i}"
                                                   for u in range(1, 9) for i in range(8)]
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n")
    prepare_dataset("ML", raw, tmp_path / "data")
    out = tmp_path / "out"
    result = reproduce_cli("table5", "--dataset", "ML", "--out", str(out), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2
    assert "no cell can run" in result.output and "features" in result.output
    assert not (out / "table5.md").exists()


def test_interval_and_paired_test():
    mean, half = mean_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_interval([0.5])[1])
    assert wilcoxon([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)   # 1 of 8 sign patterns each side
    rng = np.random.default_rng(0)
    a = rng.normal(size=80)
    assert wilcoxon(a + 1.0, a) < 1e-6 and wilcoxon(a, a[::-1]) > 0.05


def test_the_paired_test_is_over_users_from_each_runs_test_ranks(tmp_path):
    from fedvlr_sim.reproduce.tables import _paired_p, user_metric

    rng = np.random.default_rng(1)
    better, worse = [], []
    for seed in (0, 1):
        ranks = rng.integers(0, 200, size=120)
        for runs, shift in ((better, 0), (worse, 40)):
            run_dir = tmp_path / f"shift{shift}-seed{seed}"
            run_dir.mkdir()
            np.save(run_dir / "test_ranks.npy", (ranks + shift).astype(np.int32))
            runs.append({"seed": seed, "run": str(run_dir)})
    hits = user_metric(tmp_path / "shift0-seed0", "hr@50")
    assert hits.shape == (120,) and set(np.unique(hits)) <= {0.0, 1.0}
    text = _paired_p(better, worse, "ndcg@50")
    p, n = float(text.split(" ")[0]), text.split("n=")[1].rstrip(")")
    assert p < 1e-3 and n == "120", "120 users, each better in the first cell or tied"


def _fake_outcome(job):
    """lr 1 diverges; otherwise valid ndcg@50 peaks at lr 0.01 and, for FedRAP, lambda 0.01, mu 0.1."""
    flat = job.cfg.flat()
    if flat["lr"] == 1.0:
        return {"failed": "round 1 diverged"}
    score = -abs(math.log10(flat["lr"]) + 2)
    if flat["backbone"] == "fedrap":
        score -= abs(math.log10(flat["fedrap_lambda"]) + 2) + abs(math.log10(flat["fedrap_mu"]) + 1)
    return {"valid": {"ndcg@50": 1 + score}}


def test_table2_tunes_on_seed_zero_in_stages_then_reruns_the_chosen_point(tmp_path):
    """The plan's phases, without training: seed 0 of every cell runs the lr grid (FedRAP at its
    default lambda = mu = 1e-3); FedRAP's seed 0 then runs lambda x mu at its best lr (the default
    point not again); every seed 0 then runs the two other negative-sampling exponents at its best
    point, and every other seed reruns the point its seed 0 chose, once."""
    from fedvlr_sim.reproduce import base_config
    from fedvlr_sim.reproduce.plan import plan

    base = base_config([], {"data_dir": str(tmp_path), "rounds": 2})
    the_plan = plan(EXPERIMENTS["table2"], ["synthetic:tiny"], 3, base, Choices(), tmp_path / "out")
    assert the_plan.most_runs == 16 * (4 + 2) + 3 * 15 + 16 * 2 == 173
    outcomes, phases = {}, []
    while new := the_plan.next_jobs(outcomes):
        phases.append(new)
        outcomes |= {job.run_dir: _fake_outcome(job) for job in new}
    assert [len(p) for p in phases] == [16 * 4, 3 * 15 + 13 * 2, 3 * 2 + 13 * 2, 3 * 2]
    assert all(job.cfg.seed == 0 and job.cfg.model.fedrap_lambda == job.cfg.model.fedrap_mu == 1e-3
               for job in phases[0])
    fedrap_stage2 = [job for job in phases[1] if job.cfg.model.backbone == "fedrap"]
    assert len(fedrap_stage2) == 45 and all(job.cfg.client.neg_popularity == 0 for job in fedrap_stage2)
    assert {job.cfg.flat()["lr"] for job in fedrap_stage2} == {0.01}, "stage 2 at stage 1's best lr"
    stage3 = [job for phase in phases[1:3] for job in phase if job.cfg.seed == 0 and job not in fedrap_stage2]
    assert len(stage3) == 16 * 2 and {job.cfg.client.neg_popularity for job in stage3} == {0.5, 1.0}
    assert all(job.run_dir.name.endswith(("-neg0.5", "-neg1")) for job in stage3)
    others = [job for phase in phases[1:] for job in phase if job.cfg.seed > 0]
    assert len(others) == 16 * 2 and len({job.run_dir for job in others}) == 32
    for job in others:
        flat = job.cfg.flat()
        assert flat["lr"] == 0.01
        if flat["backbone"] == "fedrap":
            assert (flat["fedrap_lambda"], flat["fedrap_mu"]) == (0.01, 0.1)
            assert job.run_dir.name == "lr0.01-lambda0.01-mu0.1"
    assert all(r.complete for r in the_plan.replicates)
    assert the_plan.next_jobs(outcomes) == []


def test_tuning_runs_for_real_and_a_rerun_after_an_interruption_redoes_nothing_finished(tmp_path, monkeypatch):
    """FCF and FedRAP tuned on synthetic:tiny over 3 seeds: 4 + 2 and 4 + 15 + 2 runs on seed 0,
    one per other seed at seed 0's chosen point; interrupted at FedRAP's stage 2, a report-only
    call writes the finished cells, a second call trains only what had not finished, and a third
    nothing."""
    from fedvlr_sim.reproduce import base_config, reproduce
    from fedvlr_sim.reproduce.experiment import Cell, Experiment

    cells = [Cell(b, "plain", {"backbone": b, "variant": "none"}, tuned=True) for b in ("fcf", "fedrap")]
    monkeypatch.setitem(EXPERIMENTS, "tuning", Experiment("tuning", "tuning", lambda choices: cells))
    base = base_config(["dim=8", "local_epochs=1", "checkpoint_every=0"], {"data_dir": str(tmp_path), "rounds": 2})
    out = tmp_path / "out"
    started, real = [], jobs.execute

    def interrupted(cfg, dataset, run_dir, *args, **kwargs):
        if len(started) == 12:
            raise KeyboardInterrupt
        started.append(run_dir)
        return real(cfg, dataset, run_dir, *args, **kwargs)

    monkeypatch.setattr(jobs, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce("tuning", ["synthetic:tiny"], 3, out, base, report=lambda line: None)
    first = list(started)
    assert len(first) == 12
    assert all("fcf-plain" in str(p) for p in first[:6]), "a cell's seeds finish before the next cell starts"

    # --report-only writes what finished (FCF's three seeds), trains nothing and says what is missing
    monkeypatch.setattr(jobs, "execute", lambda *a, **k: started.append(a[2]))
    reproduce("tuning", ["synthetic:tiny"], 3, out, base, report=lambda line: None, train=False)
    assert len(started) == 12
    assert pl.read_parquet(out / "tuning.parquet")["backbone"].to_list() == ["fcf"] * 3
    partial = (out / "tuning.md").read_text()
    assert "**Partial**: 3 of 6" in partial and "fedrap / plain seeds 0, 1, 2: missing: not finished yet" in partial

    started.clear()
    monkeypatch.setattr(jobs, "execute", lambda *a, **k: started.append(a[2]) or real(*a, **k))
    reproduce("tuning", ["synthetic:tiny"], 3, out, base, report=lambda line: None)
    assert len(first) + len(started) == 6 + 21 + 2 * 2
    assert not set(map(str, started)) & set(map(str, first)), "nothing finished is trained again"

    rows = pl.read_parquet(out / "tuning.parquet")
    assert rows.height == 6
    root = out / "tuning" / "synthetic-tiny"
    for backbone in ("fcf", "fedrap"):
        mine = rows.filter(pl.col("backbone") == backbone).sort("seed")
        chosen = json.loads(mine["selected"][0])
        own = {"lr"} if backbone == "fcf" else {"lr", "fedrap_lambda", "fedrap_mu"}
        assert set(chosen) - {"neg_popularity"} == own
        assert mine["selected"].to_list() == [mine["selected"][0]] * 3, "seeds 1, 2 rerun seed 0's point"
        for seed in (1, 2):
            assert [p.name for p in (root / f"{backbone}-plain" / f"seed{seed}").iterdir()] == [point_name(chosen)]
    seed0 = root / "fedrap-plain" / "seed0"
    runs = {p.name: json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else None
            for p in seed0.iterdir()}
    assert len(runs) == 21
    stage1 = {n: s for n, s in runs.items() if n.endswith("-lambda0.001-mu0.001")}
    assert len(stage1) == 4, "stage 1: the lr grid at the default lambda = mu = 1e-3"
    best_lr = max((s for s in stage1.values() if s), key=lambda s: s["valid"]["ndcg@50"])["config"]["lr"]
    stage3 = [n for n in runs if "-neg" in n]
    stage2 = [n for n in runs if n not in stage1 and n not in stage3]
    assert len(stage2) == 15 and all(n.startswith(f"lr{best_lr:g}-") for n in stage2), "stage 2 at stage 1's best lr"
    assert sorted(n.rsplit("-", 1)[1] for n in stage3) == ["neg0.5", "neg1"], "stage 3: the other exponents"
    text = (out / "tuning.md").read_text()
    assert "with seed 0 only" in text and "seeds 1..2 rerun the chosen point" in text and "Chosen on seed 0" in text

    started.clear()
    reproduce("tuning", ["synthetic:tiny"], 3, out, base, report=lambda line: None)
    assert started == []


def test_a_result_names_only_the_choices_its_cells_depend_on():
    """The "Generated by" command of a table names --backbone and the DP options only where
    they change the cells, so the command reproduces the table and nothing misleads."""
    choices = Choices()
    assert EXPERIMENTS["table5"].reads(choices, backbone="-")
    assert not EXPERIMENTS["table2"].reads(choices, backbone="-")
    assert not EXPERIMENTS["fig8"].reads(choices, backbone="-")       # always FedRAP
    assert EXPERIMENTS["table4"].reads(choices, dp_clip=-1.0)
    assert not EXPERIMENTS["table5"].reads(choices, dp_clip=-1.0)
