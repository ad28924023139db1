"""The `fedvlr-sim` command line: run | sweep | reproduce | prepare | features | images | datasets | bench | report.

The CLI only parses, configures and calls; user-facing problems (FedVLRError) end in a one-line
message on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedvlr_sim.config import (MODALITIES, PRESETS, SEED_HELP, RunConfig, option_fields, parse_settings, read_options,
                               require_folder, resolve)
from fedvlr_sim.errors import FedVLRError

app = typer.Typer(add_completion=False, help="Federated vision-language recommendation simulator (FedVLR).")
DATA_DIR = os.environ.get("FEDVLR_DATA_DIR", "data")


def user_errors(command):
    """Turn FedVLRError, and a file the system refuses (a path that cannot be created, read or
    written), into a one-line message and exit code 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FedVLRError as err:
            typer.echo(f"error: {err}", err=True)
        except OSError as err:
            if err.filename is None:
                raise
            typer.echo(f"error: {err.filename}: {err.strerror}", err=True)
        raise typer.Exit(2) from None
    return wrapper


def build_config(config_file: Optional[Path], settings: list[str], options: dict,
                 preset: Optional[str] = None) -> RunConfig:
    """Field defaults < $FEDVLR_DATA_DIR < --preset < config file < --set assignments <
    command-line options that were given; an error names the file, the --set or the option at fault."""
    layers = [(None, {"data_dir": DATA_DIR})]
    if preset:
        if preset not in PRESETS:
            raise FedVLRError(f"--preset: unknown value {preset!r} (expected one of {', '.join(PRESETS)})")
        layers.append((f"--preset {preset}", PRESETS[preset]))
    if config_file:
        layers.append((str(config_file), read_options(config_file)))
    layers += parse_settings(settings)
    layers.append((None, {name: value for name, value in options.items() if value is not None}))
    return resolve(layers)


CONFIG_HELP = ("Config file of run options: .json, .toml, .yaml or .yml (a run's config.json works; --set and "
               "command-line options override it).")
PRESET_HELP = ("Start from a named option set: paper (the paper's exact settings: "
               + ", ".join(f"{k}={v}" for k, v in PRESETS["paper"].items()) + ").")
SET_HELP = "Override one option: key=value, key flat (lr) or dotted (client.lr), value JSON or text (repeatable)."


def data_dir_option(value: str) -> Path:
    """The --data-dir of the data commands, refused when it names a file."""
    return require_folder("--data-dir", Path(value), "of prepared datasets")


def ablation_of(drop: list[str], noise: list[str]) -> dict[str, str] | None:
    if not drop and not noise:
        return None
    for option_name, names in (("--drop", drop), ("--noise", noise)):
        for name in names:
            if name not in MODALITIES:
                raise FedVLRError(f"{option_name}: unknown modality {name!r} (expected one of {', '.join(MODALITIES)})")
    both = set(drop) & set(noise)
    if both:
        raise FedVLRError(f"--drop and --noise both name {sorted(both)[0]!r}: choose one")
    return {m: "drop" if m in drop else "noise" if m in noise else "keep" for m in MODALITIES}


def config_options(include: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()):
    """Give a command one `--option` per run-config field (or those in `include`), generated
    from the fields' help and defaults; the command receives them in its `options` dict, None
    where not given. Its other parameters stay as declared."""
    every = [(f.name, f.type, f.default, f.metadata["help"]) for _, f in option_fields() if f.name != "ablation"]
    chosen = [c for c in [*every, ("seed", "int", 0, SEED_HELP)]
              if c[0] not in exclude and (include is None or c[0] in include)]
    types = {"int": int, "float": float, "str": str, "bool": bool}

    def decorate(command):
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "options"]
        generated = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                       default=typer.Option(None, help=escape(f"{help_text} [default: {_shown(name, default)}]")),
                                       annotation=Optional[types[kind]])
                     for name, kind, default, help_text in chosen]

        @functools.wraps(command)
        def wrapper(**kwargs):
            options = {name: kwargs.pop(name) for name, *_ in chosen}
            return command(options=options, **kwargs)

        params = own + generated
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return decorate


def _shown(name: str, default) -> str:
    if name == "data_dir":
        return f"$FEDVLR_DATA_DIR or {default}"
    return repr(default) if default == "" else str(default)


@app.command()
@user_errors
@config_options()
def run(
    options: dict,
    drop: list[str] = typer.Option([], help="Modality ablation: drop vision, text or id (repeatable)."),
    noise: list[str] = typer.Option([], help="Modality ablation: replace vision, text or id by matched-norm noise."),
    config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration as JSON and "
                                      "exit (nothing is trained or written)."),
) -> None:
    """Train and evaluate one federated model; write a results folder."""
    given = {k: v for k, v in options.items() if v is not None}
    ablation = ablation_of(drop, noise)
    if ablation:
        given["ablation"] = ablation
    if resume and (config or set_ or preset):
        raise FedVLRError("--config, --set and --preset cannot be combined with --resume (the run keeps its own "
                          "config.json)")
    cfg = _resumed_config(resume, given) if resume else build_config(config, set_, given, preset)
    if print_config:
        typer.echo(json.dumps(cfg.flat(), indent=2))
        return
    summary, run_dir = _resume(resume, given) if resume else _start(cfg)
    print_summary(summary.to_dict())
    typer.echo(f"results: {run_dir}")


def _resumed_config(resume: Path, given: dict) -> RunConfig:
    """The configuration a --resume of `resume` continues with (read, nothing written)."""
    from fedvlr_sim.runner import saved_config

    if not resume.is_dir():
        raise FedVLRError(f"--resume {resume}: no such run folder (expected a folder with config.json and a checkpoint)")
    return saved_config(resume, extend=given)


def _start(cfg: RunConfig):
    """A new run of `cfg`: (summary, run folder)."""
    from fedvlr_sim.runner import new_run

    dataset_obj = _checked_dataset(cfg)   # fail before any results folder exists
    with new_run(cfg) as (cfg, run_dir):
        return _train_with_progress(cfg, dataset_obj, run_dir, None, 0), run_dir


def _resume(run_dir: Path, given: dict):
    """The interrupted run in `run_dir`, continued from its last checkpoint: (summary, run folder)."""
    from fedvlr_sim.runlock import run_lock
    from fedvlr_sim.runner import resume_config

    with run_lock(run_dir):
        cfg, folder, done = resume_config(run_dir, extend=given)
        return _train_with_progress(cfg, _checked_dataset(cfg), run_dir, folder, done), run_dir


def _checked_dataset(cfg: RunConfig):
    """The run's dataset, checked (see runner.load_checked); the storage of personal tables said."""
    from fedvlr_sim.engine.simulation import table_storage
    from fedvlr_sim.runner import load_checked

    dataset_obj = load_checked(cfg)
    storage = table_storage(cfg, dataset_obj)
    if storage:
        typer.echo(storage, err=True)
    return dataset_obj


def _train_with_progress(cfg: RunConfig, dataset_obj, run_dir: Path, resume: Optional[Path], done: int):
    """Train with a progress display; after Ctrl-C, say where the checkpoint is and how to resume."""
    from fedvlr_sim.engine import checkpoint
    from fedvlr_sim.engine.accounting import epsilon_tracker
    from fedvlr_sim.progress import round_progress
    from fedvlr_sim.runner import execute

    label = f"{cfg.launch.dataset} {cfg.model.backbone}+{cfg.model.variant}"
    try:
        epsilon_after = epsilon_tracker(cfg, dataset_obj.n_users)
        with round_progress(cfg.loop.rounds, label, start_round=done, epsilon_after=epsilon_after) as (on_round, on_status):
            return execute(cfg, dataset_obj, run_dir, on_round, resume=resume, on_status=on_status)
    except KeyboardInterrupt:
        where = checkpoint.latest(run_dir)
        typer.echo(f"interrupted: the last checkpoint is {where}; continue with: fedvlr-sim run --resume {run_dir}"
                   if where else f"interrupted before the first checkpoint of {run_dir} (nothing to resume)", err=True)
        raise typer.Exit(130) from None


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
    rows += [(f"reference: {_reference_label(name, summary)}", values) for name, values in summary["baselines"].items()]
    for name, values in rows:
        table.add_row(name, *[_percent(values.get(c)) for c in columns])
    Console().print(table)
    shares = summary.get("cold_share") or {}
    if shares:
        typer.echo("held-out items never seen in train: " + ", ".join(
            f"{split} {100 * share:.1f}%" for split, share in shares.items()))
    if summary.get("stopped"):
        typer.echo(f"stopped: {summary['stopped']}")
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}")
    if "dp" in summary:
        typer.echo("privacy: epsilon {epsilon:.3g} at delta {delta:.3g} (noise multiplier {noise_multiplier:.3g}, "
                   "clip {clip:g}, {uploads_composed} uploads composed, assumption {assumption}, {accountant})"
                   .format(**summary["dp"]))
    if "modality_spearman" in summary:
        typer.echo("modality_spearman: " + json.dumps({k: round(v, 3) for k, v in summary["modality_spearman"].items()}))


def _reference_label(name: str, summary: dict) -> str:
    if name == "cold_prior":
        return f"cold prior (this model, beta {summary.get('cold_prior_beta', float('nan')):g})"
    return name


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}"


@app.command()
@user_errors
def prepare(
    dataset: str = typer.Option(..., help="KU, Food, Dance, Movie (NineRec), Beauty, Cards (Amazon 2023), ML, or any name with --format mmrec."),
    raw: Path = typer.Option(..., help="Raw data: a folder (or the CSV file for Amazon)."),
    data_dir: str = typer.Option(DATA_DIR, help="Where prepared datasets live."),
    format: Optional[str] = typer.Option(None, "--format", help="mmrec (a folder in the authors' MMRec layout: split "
                                         "and features kept), ninerec, amazon or movielens [default: the known "
                                         "dataset's]."),
    replace: bool = typer.Option(False, "--replace", help="Allow preparing a dataset that is already "
                                 "prepared: its folder is replaced whole (features embedded since are deleted)."),
) -> None:
    """Preprocess a raw dataset into the canonical form (5-core, re-index, leave-one-out)."""
    from fedvlr_sim.datasets import dataset_summary, load_dataset, prepare_dataset

    folder = prepare_dataset(dataset, raw, data_dir_option(data_dir), fmt=format, replace=replace)
    summary = dataset_summary(load_dataset(folder.name, Path(data_dir)))
    typer.echo(f"prepared {folder}: " + json.dumps(summary))


@app.command()
@user_errors
def images(
    dataset: str = typer.Option(..., help="Amazon 2023 dataset (Beauty, Cards, or another category name)."),
    raw: Path = typer.Option(..., help="The ratings CSV or its folder (as for `prepare`)."),
    metadata: Optional[Path] = typer.Option(None, help="Item metadata JSON lines [default: the meta_*.jsonl beside the CSV]."),
    workers: int = typer.Option(8, help="Parallel downloads."),
    retries: int = typer.Option(3, help="Retries after the first try (timeouts, 5xx, 429)."),
    timeout: float = typer.Option(20.0, help="Seconds before one download attempt gives up."),
    backoff: float = typer.Option(1.0, help="First wait before a retry, in seconds (doubled each retry)."),
) -> None:
    """Download the item images named in the Amazon metadata into the raw folder (resumable); run
    `prepare --replace` afterwards so the dataset records them."""
    from rich.progress import Progress

    from fedvlr_sim.datasets import download_images

    with Progress(transient=True) as bar:
        task = bar.add_task("images", total=None)
        summary = download_images(dataset, raw, metadata, workers=workers, retries=retries, timeout_s=timeout,
                                  backoff_s=backoff, progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(json.dumps(summary, default=str))


@app.command()
@user_errors
def features(
    dataset: str = typer.Option(..., help="A prepared dataset."),
    data_dir: str = typer.Option(DATA_DIR),
    model: str = typer.Option("ViT-B-32", help="open_clip model name."),
    pretrained: str = typer.Option("openai", help="open_clip pretrained tag, or a local weights file."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    batch_size: int = typer.Option(64, min=1),
) -> None:
    """Embed item images and titles with CLIP (resumable)."""
    from fedvlr_sim.datasets import extract_features

    typer.echo(json.dumps(extract_features(dataset, data_dir_option(data_dir), model=model, pretrained=pretrained,
                                           device=device, batch_size=batch_size)))


@app.command("datasets")
@user_errors
def datasets_command(data_dir: str = typer.Option(DATA_DIR)) -> None:
    """List every known dataset: prepared or not, counts, and where to obtain it."""
    from rich.console import Console
    from rich.table import Table

    from fedvlr_sim.datasets import SYNTHETIC_PRESETS, list_datasets

    table = Table()
    entries = list_datasets(data_dir_option(data_dir))
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
@config_options(exclude=("lr", "out"))
def sweep(
    options: dict,
    out: Path = typer.Option(..., help="Folder for the grid's runs, sweep.json and the selected summary.json."),
    config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out: finished points are kept, "
                                "interrupted ones resumed."),
    max_parallel: int = typer.Option(1, help="Grid points at once (above 1 they run as Ray tasks, --backend local)."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
) -> None:
    """Run the client learning-rate grid {1e-3, 1e-2, 1e-1, 1} (and the backbone's own grid, e.g.
    FedRAP's lambda x mu), then --neg-popularity 0, 0.5 and 1 at its best point; select on valid."""
    from fedvlr_sim.runner import load_checked
    from fedvlr_sim.sweep import sweep as run_sweep

    require_folder("--out", out, "for the sweep's runs")
    cfg = build_config(config, set_, options, preset)
    load_checked(cfg)   # fail before any run folder exists
    metric = cfg.loop.select_metric

    def on_run(job, outcome, kept) -> None:
        what = "diverged" if "failed" in outcome else f"valid {metric} {outcome['valid'].get(metric, float('nan')):.4f}"
        typer.echo(f"{job.run_dir.name}: {what}{' (finished earlier)' if kept else ''}")

    selected = run_sweep(cfg, out, resume, max_parallel, on_run)
    print_grid(selected["sweep"], metric)
    print_summary(selected)


def print_grid(sweep: dict, metric: str) -> None:
    """Every grid point's valid and test metric, the selected one marked."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"grid selected on valid {metric}")
    for column in ("point", f"valid {metric}", f"test {metric}", ""):
        table.add_column(column, justify="left" if column == "point" else "right")
    for row in sweep["grid"]:
        name = ", ".join(f"{k}={v:g}" for k, v in row["point"].items())
        if row["failed"]:
            table.add_row(name, "diverged", "", "")
        else:
            table.add_row(name, _percent(row["valid"].get(metric)), _percent(row["test"].get(metric)),
                          "selected" if row["point"] == sweep["selected"] else "")
    Console().print(table)


@app.command()
@user_errors
@config_options(include=("backbone", "variant", "view_norm", "modality_views", "local_epochs", "shards", "address",
                         "data_dir"))
def bench(
    options: dict,
    dataset: list[str] = typer.Option(["synthetic:ku", "synthetic:movie"], help="Datasets to time (repeatable)."),
    rounds: int = typer.Option(2, min=1, help="Timed rounds (after one warm-up round)."),
    sample_users: int = typer.Option(200, min=1, help="Users the sequential loop times before extrapolating."),
    users: list[int] = typer.Option([], min=1, help="Time the first N users of each dataset (repeatable; "
                                    "default: all users)."),
    plot: Path = typer.Option(Path("scaling.png"), dir_okay=False,
                              help="Where to draw seconds per round against users (when several sizes are timed)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object per dataset and size."),
) -> None:
    """Time rounds on Ray shards against a naive sequential per-user loop of the same math."""
    from fedvlr_sim.bench import bench as run_bench
    from fedvlr_sim.bench import draw_scaling, first_users
    from fedvlr_sim.runner import load_checked

    if not plot.parent.is_dir():
        raise FedVLRError(f"--plot {plot}: no folder {plot.parent} to write it in")
    loaded = []   # every dataset checked before any timing
    for name in dataset:
        cfg = build_config(None, [], options | {"dataset": name, "backend": "ray"})
        full = load_checked(cfg)
        if users and max(users) > full.n_users:
            raise FedVLRError(f"--users {max(users)}: {name} has only {full.n_users} users")
        loaded.append((cfg, full))
    rows = []
    for cfg, full in loaded:
        for size in users or [full.n_users]:
            rows.append(run_bench(cfg, first_users(full, size), rounds=rounds, sample_users=sample_users,
                                  report=lambda text: typer.echo(text, err=True)))
            _print_bench_row(rows[-1], json_output)
    if len({row["users"] for row in rows}) > 1:
        typer.echo(f"scaling plot: {draw_scaling(rows, plot)}", err=True)


def _print_bench_row(row: dict, json_output: bool) -> None:
    """One bench row as JSON or as a sentence."""
    if json_output:
        typer.echo(json.dumps(row))
        return
    note = (f" (sequential: {row['sequential_users_timed']} users timed, extrapolated)"
            if row["sequential_extrapolated"] else "")
    typer.echo(f"{row['dataset']} {row['backbone']}+{row['variant']} ({row['views']} views), {row['users']} users, "
               f"A={row['local_epochs']}, "
               f"{row['shards']} shards: {row['seconds_per_round']:.3f} s/round on Ray "
               f"({row['updates_per_second']:.0f} client updates/s; evaluation {row['eval_seconds']:.3f} s), "
               f"{row['local_seconds_per_round']:.3f} s/round "
               f"in-process (one thread), sequential loop (one thread) {row['sequential_seconds_per_round']:.2f} "
               f"s/round{note}; speed-up {row['speedup']:.1f}x ({row['speedup_per_shard']:.1f}x per shard's core); "
               f"peak RSS {row['peak_rss_gb']:.2f} GB")


@app.command()
@user_errors
def reproduce(
    name: str = typer.Argument(..., help="Experiment: table2, table3, table4, table5, table6, fig3, fig6, fig7, fig8, fig9 or fig10."),
    dataset: list[str] = typer.Option(..., help="Prepared dataset or synthetic:<preset> (repeatable)."),
    seeds: int = typer.Option(3, help="Seeds per cell (the 95% interval is over seeds)."),
    rounds: Optional[int] = typer.Option(None, help="Most rounds per run [default: the run default]."),
    out: Path = typer.Option(Path("runs/reproduce"), help="Folder of NAME.parquet, NAME.md, NAME.png and the "
                             "runs (NAME/...; finished runs are kept, interrupted ones resumed)."),
    backbone: str = typer.Option("fcf", help="Backbone of the single-backbone experiments (table5, table6, fig3, fig7, fig9, fig10)."),
    dp_clip: float = typer.Option(1.0, help="table4: the clipping norm of the DP cells."),
    dp_noise: float = typer.Option(0.1, help="table4: the noise multiplier of the DP cells."),
    address: str = typer.Option("", help="Ray cluster to run the cells on as Ray tasks (empty: this machine)."),
    max_parallel: int = typer.Option(1, help="Runs at once (above 1 they run as Ray tasks)."),
    data_dir: str = typer.Option(DATA_DIR, help="Where prepared datasets live."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: write NAME.parquet and NAME.md "
                                     "from the runs finished so far (unfinished cells show missing)."),
) -> None:
    """Run one of the paper's experiments on any prepared datasets; write OUT/NAME.parquet,
    OUT/NAME.md (mean +- 95% interval per cell) and OUT/NAME.png where the paper has a figure."""
    from fedvlr_sim.reproduce import Choices, base_config, experiment_named
    from fedvlr_sim.reproduce import reproduce as run_experiment

    experiment = experiment_named(name)
    require_folder("--out", out, "for the experiment's results")
    base = base_config(set_, {"rounds": rounds, "data_dir": str(data_dir_option(data_dir))})
    base.replace(dp_clip=dp_clip, dp_noise=dp_noise)   # checked for every experiment, read by table4
    choices = Choices(backbone=base.replace(backbone=backbone).model.backbone, dp_clip=dp_clip, dp_noise=dp_noise)
    given = [*(f"--dataset {d}" for d in dataset), f"--seeds {seeds}", *([f"--rounds {rounds}"] if rounds else []),
             *([f"--backbone {choices.backbone}"] if experiment.reads(choices, backbone="-") else []),
             *([f"--dp-clip {dp_clip:g} --dp-noise {dp_noise:g}"] if experiment.reads(choices, dp_clip=-1.0) else []),
             *(f"--set {s}" for s in set_)]
    command = " ".join(["fedvlr-sim reproduce", name, *given])
    for path in run_experiment(name, dataset, seeds, out, base, choices, max_parallel, address, command, typer.echo,
                               train=not report_only):
        typer.echo(f"written: {path}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fedvlr-sim {version('fedvlr-sim')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Federated vision-language recommendation simulator (FedVLR)."""


def _click_errors() -> tuple[type, ...]:
    """The click exception classes in use: typer bundles its own click (typer._click), and a
    plain click may be installed beside it."""
    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except ImportError:
            continue
    return tuple(found)


def main() -> None:
    """Console-script entry point: usage errors, like FedVLRError, end in one line and exit 2;
    Ctrl-C ends with one line and exit 130."""
    try:
        code = app(standalone_mode=False)
    except _click_errors() as err:
        typer.echo(f"error: {' '.join(err.format_message().split())}", err=True)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
