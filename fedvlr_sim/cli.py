"""The `fedvlr-sim` command line: run | sweep | prepare | features | datasets | bench | report.

The CLI only parses, configures and calls; user-facing problems (FedVLRError) end in a one-line
message on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from fedvlr_sim.config import MODALITIES, RunConfig
from fedvlr_sim.errors import FedVLRError

app = typer.Typer(add_completion=False, help="Federated vision-language recommendation simulator (FedVLR).")
DATA_DIR = os.environ.get("FEDVLR_DATA_DIR", "data")


def user_errors(command):
    """Turn FedVLRError into a one-line message and exit code 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FedVLRError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def build_config(config_file: Optional[Path], overrides: dict) -> RunConfig:
    """Dataclass defaults < config file < command-line options that were given."""
    cfg = RunConfig.from_file(config_file) if config_file else RunConfig()
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg.validate()


def ablation_of(drop: list[str], noise: list[str]) -> dict[str, str] | None:
    if not drop and not noise:
        return None
    for option, names in (("--drop", drop), ("--noise", noise)):
        for name in names:
            if name not in MODALITIES:
                raise FedVLRError(f"{option}: unknown modality {name!r} (expected one of {', '.join(MODALITIES)})")
    both = set(drop) & set(noise)
    if both:
        raise FedVLRError(f"--drop and --noise both name {sorted(both)[0]!r}: choose one")
    return {m: "drop" if m in drop else "noise" if m in noise else "keep" for m in MODALITIES}


@app.command()
@user_errors
def run(
    dataset: Optional[str] = typer.Option(None, help="Prepared dataset name (KU, ML, Beauty, Movie, ...) or synthetic:<tiny|ku|movie>."),
    data_dir: Optional[str] = typer.Option(None, help=f"Folder of prepared datasets [default: $FEDVLR_DATA_DIR or {DATA_DIR}]."),
    backbone: Optional[str] = typer.Option(None, help="fedavg | fcf | fedncf | pfedrec | fedrap [default: fcf]."),
    variant: Optional[str] = typer.Option(None, help="none | ours | mlp | vbpr | sum | gate [default: ours]."),
    dim: Optional[int] = typer.Option(None, help="Embedding size d [64]."),
    lr: Optional[float] = typer.Option(None, help="Client learning rate eta_l [0.1]."),
    server_lr: Optional[float] = typer.Option(None, help="Server learning rate eta_s [1.0]."),
    server_optimizer: Optional[str] = typer.Option(None, help="sgd | adam [sgd]."),
    local_epochs: Optional[int] = typer.Option(None, help="Local epochs A [5]."),
    neg_ratio: Optional[int] = typer.Option(None, help="Negatives per positive [4]."),
    batch_size: Optional[int] = typer.Option(None, help="Most (positive, negative) pairs per local minibatch [2048]."),
    rounds: Optional[int] = typer.Option(None, help="Most rounds [40]."),
    patience: Optional[int] = typer.Option(None, help="Early stopping: rounds without a better valid metric [10]."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on valid every N rounds [1]."),
    sample_ratio: Optional[float] = typer.Option(None, help="Client sampling ratio rho in (0, 1] [1.0]."),
    seed: Optional[int] = typer.Option(None, help="Random seed [0]."),
    global_update: Optional[str] = typer.Option(None, help="accumulate (upload accumulated gradients) | local (step a local copy, upload its change / lr)."),
    dp_clip: Optional[float] = typer.Option(None, help="Clip each client's upload to this L2 norm (0 = off)."),
    dp_noise: Optional[float] = typer.Option(None, help="Gaussian noise multiplier sigma (noise std = sigma * clip)."),
    fedrap_lambda: Optional[float] = typer.Option(None, help="FedRAP lambda [1e-3]."),
    fedrap_mu: Optional[float] = typer.Option(None, help="FedRAP mu [1e-3]."),
    drop: list[str] = typer.Option([], help="Modality ablation: drop vision, text or id (repeatable)."),
    noise: list[str] = typer.Option([], help="Modality ablation: replace vision, text or id by matched-norm noise."),
    select_metric: Optional[str] = typer.Option(None, help="Valid metric for early stopping and selection [ndcg@50]."),
    table_dtype: Optional[str] = typer.Option(None, help="Personal item tables (PFedRec, FedRAP): auto | float32 | bfloat16."),
    chunk_elements: Optional[int] = typer.Option(None, help="Memory budget per user chunk, in tensor elements."),
    backend: Optional[str] = typer.Option(None, help="ray | local [ray]."),
    shards: Optional[int] = typer.Option(None, help="Client shards (0 = one per CPU of the Ray cluster)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join ('auto' inside `ray job submit`); empty starts a private local one."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N rounds (0 = never) [5]."),
    out: Optional[str] = typer.Option(None, help="Run folder [runs/<dataset>-<backbone>-<variant>-<time>]."),
    config: Optional[Path] = typer.Option(None, help="JSON file of run options (CLI options override it)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder."),
) -> None:
    """Train and evaluate one federated model; write a results folder."""
    from fedvlr_sim.datasets import load_dataset
    from fedvlr_sim.engine.simulation import features_of, table_storage
    from fedvlr_sim.progress import round_progress
    from fedvlr_sim.runner import execute, prepare_run_dir, resume_config

    given = {k: v for k, v in locals().items() if k in RunConfig.__dataclass_fields__ and v is not None}
    ablation = ablation_of(drop, noise)
    if ablation:
        given["ablation"] = ablation
    if resume:
        if config:
            raise FedVLRError("--config cannot be combined with --resume (the run keeps its own config.json)")
        cfg, folder, done = resume_config(resume, extend=given)
        run_dir = Path(resume)
    else:
        given["data_dir"] = data_dir or (None if config else DATA_DIR)
        cfg, folder, done = build_config(config, given), None, 0
    dataset_obj = load_dataset(cfg.dataset, Path(cfg.data_dir), seed=cfg.seed)
    features_of(dataset_obj, cfg)   # fail before any results folder exists
    storage = table_storage(cfg, dataset_obj)
    if storage:
        typer.echo(storage, err=True)
    if not resume:
        run_dir = prepare_run_dir(cfg)
    label = f"{cfg.dataset} {cfg.backbone}+{cfg.variant}"
    with round_progress(cfg.rounds, label, start_round=done) as on_round:
        summary = execute(cfg, dataset_obj, run_dir, on_round, resume=folder)
    print_summary(summary)
    typer.echo(f"results: {run_dir}")


def print_summary(summary: dict) -> None:
    """The test table beside the reference rankings and the cold/warm split."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['dataset']} {summary['backbone']}+{summary['variant']}: test at best-valid round "
                        f"{summary['best_round']} (selected on {summary['selected_on']})")
    columns = ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "hr@50", "ndcg@50"]
    table.add_column("ranking")
    for c in columns:
        table.add_column(c.upper(), justify="right")
    rows = [("model", summary["test"]), (f"model, cold test items ({summary['n_cold_test_users']} users)", summary["test_cold"]),
            ("model, warm test items", summary["test_warm"])]
    rows += [(f"reference: {name}", values) for name, values in summary["baselines"].items()]
    for name, values in rows:
        table.add_row(name, *[_percent(values.get(c)) for c in columns])
    Console().print(table)
    if "modality_spearman" in summary:
        typer.echo("modality_spearman: " + json.dumps({k: round(v, 3) for k, v in summary["modality_spearman"].items()}))


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}"


@app.command()
@user_errors
def prepare(
    dataset: str = typer.Option(..., help="KU, Food, Dance, Movie (NineRec), Beauty, Cards (Amazon 2023), ML, or any name with --format mmrec."),
    raw: Path = typer.Option(..., help="Raw data: a folder (or the CSV file for Amazon)."),
    data_dir: str = typer.Option(DATA_DIR, help="Where prepared datasets live."),
    format: Optional[str] = typer.Option(None, "--format", help="mmrec: a folder in the authors' MMRec layout (split and features kept)."),
) -> None:
    """Preprocess a raw dataset into the canonical form (5-core, re-index, leave-one-out)."""
    from fedvlr_sim.datasets import dataset_summary, load_dataset, prepare_dataset

    folder = prepare_dataset(dataset, raw, Path(data_dir), fmt=format)
    summary = dataset_summary(load_dataset(folder.name, Path(data_dir)))
    typer.echo(f"prepared {folder}: " + json.dumps(summary))


@app.command()
@user_errors
def features(
    dataset: str = typer.Option(..., help="A prepared dataset."),
    data_dir: str = typer.Option(DATA_DIR),
    model: str = typer.Option("ViT-B-32", help="open_clip model name."),
    pretrained: str = typer.Option("openai", help="open_clip pretrained tag, or a local weights file."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    batch_size: int = typer.Option(64),
) -> None:
    """Embed item images and titles with CLIP (resumable)."""
    from fedvlr_sim.datasets import extract_features

    typer.echo(json.dumps(extract_features(dataset, Path(data_dir), model=model, pretrained=pretrained,
                                           device=device, batch_size=batch_size)))


@app.command("datasets")
@user_errors
def datasets_command(data_dir: str = typer.Option(DATA_DIR)) -> None:
    """List every known dataset: prepared or not, counts, and where to obtain it."""
    from rich.console import Console
    from rich.table import Table

    from fedvlr_sim.datasets import SYNTHETIC_PRESETS, list_datasets

    table = Table()
    entries = list_datasets(Path(data_dir))
    keys = list(dict.fromkeys(k for e in entries for k in e))
    for key in keys:
        table.add_column(key)
    for entry in entries:
        table.add_row(*[str(entry.get(k, "")) for k in keys])
    Console(width=200).print(table)
    typer.echo("synthetic worlds (no files needed): " + ", ".join(f"synthetic:{name}" for name in SYNTHETIC_PRESETS))


@app.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Draw a run's convergence curves and router-weight distribution as PNG files."""
    from fedvlr_sim.report import draw_report

    for path in draw_report(run_dir):
        typer.echo(str(path))


@app.command()
@user_errors
def sweep(
    dataset: Optional[str] = typer.Option(None, help="Dataset to tune on [synthetic:tiny]."),
    data_dir: Optional[str] = typer.Option(None, help=f"Folder of prepared datasets [{DATA_DIR}]."),
    backbone: Optional[str] = typer.Option(None, help="[fcf]"),
    variant: Optional[str] = typer.Option(None, help="[ours]"),
    out: Path = typer.Option(..., help="Folder for the grid's runs, sweep.json and the selected summary.json."),
    config: Optional[Path] = typer.Option(None, help="JSON file of other run options (rounds, backend, ...)."),
    backend: Optional[str] = typer.Option(None, help="ray | local."),
    rounds: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
) -> None:
    """Run the learning-rate grid {1e-4, 1e-3, 1e-2, 1e-1} (FedRAP: also lambda x mu), select on valid."""
    from fedvlr_sim.datasets import load_dataset
    from fedvlr_sim.sweep import sweep as run_sweep

    cfg = build_config(config, {"dataset": dataset, "data_dir": data_dir or (None if config else DATA_DIR),
                                "backbone": backbone, "variant": variant, "backend": backend, "rounds": rounds, "seed": seed})
    dataset_obj = load_dataset(cfg.dataset, Path(cfg.data_dir), seed=cfg.seed)

    def on_run(name: str, summary: dict) -> None:
        typer.echo(f"{name}: valid {cfg.select_metric} {summary['valid'].get(cfg.select_metric, float('nan')):.4f}")

    selected = run_sweep(cfg, dataset_obj, out, on_run)
    typer.echo(f"selected {selected['sweep']['selected']} on valid {cfg.select_metric}")
    print_summary(selected)


@app.command()
@user_errors
def bench(
    dataset: list[str] = typer.Option(["synthetic:ku", "synthetic:movie"], help="Datasets to time (repeatable)."),
    data_dir: str = typer.Option(DATA_DIR),
    backbone: str = typer.Option("fcf"),
    variant: str = typer.Option("ours"),
    rounds: int = typer.Option(2, help="Timed rounds (after one warm-up round)."),
    sample_users: int = typer.Option(200, help="Users the sequential loop times before extrapolating."),
    shards: int = typer.Option(0, help="Client shards (0 = one per CPU)."),
    local_epochs: int = typer.Option(5),
    address: str = typer.Option("", help="Ray cluster to join; empty starts a private local one."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object per dataset."),
) -> None:
    """Time rounds on Ray shards against a naive sequential per-user loop of the same math."""
    from fedvlr_sim.bench import bench as run_bench
    from fedvlr_sim.datasets import load_dataset

    for name in dataset:
        cfg = build_config(None, {"dataset": name, "data_dir": data_dir, "backbone": backbone, "variant": variant,
                                  "shards": shards, "local_epochs": local_epochs, "address": address})
        row = run_bench(cfg, load_dataset(name, Path(data_dir), seed=cfg.seed), rounds=rounds, sample_users=sample_users)
        if json_output:
            typer.echo(json.dumps(row))
        else:
            note = (f" (sequential: {row['sequential_users_timed']} users timed, extrapolated)"
                    if row["sequential_extrapolated"] else "")
            typer.echo(f"{row['dataset']} {row['backbone']}+{row['variant']}, {row['users']} users, A={row['local_epochs']}, "
                       f"{row['shards']} shards: {row['seconds_per_round']:.3f} s/round on Ray "
                       f"({row['updates_per_second']:.0f} client updates/s), {row.get('local_seconds_per_round', float('nan')):.3f} s/round "
                       f"in-process, sequential loop {row['sequential_seconds_per_round']:.2f} s/round{note}; "
                       f"speed-up {row['speedup']:.1f}x; peak RSS {row['peak_rss_gb']:.2f} GB")


def main() -> None:
    """Console-script entry point: usage errors, like FedVLRError, end in one line and exit 2."""
    import click

    try:
        code = app(standalone_mode=False)
    except click.UsageError as err:
        typer.echo(f"error: {err.format_message()}", err=True)
        code = 2
    except click.Abort:
        typer.echo("aborted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
