"""What an operator watches: the Grafana dashboard shipped in deploy/grafana queries exactly the
`ray_fedvlr_*` metrics a run exports (and the README names them all), and the TensorBoard
callback writes a run's scalars or says which package is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers_observability import dashboard, exported_metrics, queried_metrics

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.callbacks import TensorBoardWriter
from fedvlr_sim.engine.messages import RoundRecord
from fedvlr_sim.engine.simulation import build_federation, local_pool, make_server, problem_of
from fedvlr_sim.errors import FedVLRError

README = Path(__file__).resolve().parents[1] / "README.md"
EVALUATED_ROUND = RoundRecord(round=2, loss=0.6, clients=300, grad_norm=1.0, train_seconds=0.2,
                              updates_per_second=1234.5, valid={"hr@50": 0.21, "ndcg@50": 0.07})
TRAINING_ONLY_ROUND = RoundRecord(round=3, loss=0.5, clients=300, grad_norm=1.0, train_seconds=0.3,
                                  updates_per_second=987.0)


def test_the_dashboard_queries_exactly_the_metrics_a_run_exports(ray_local):
    assert queried_metrics() == exported_metrics()


def test_every_panel_reads_the_chosen_data_source_and_runs():
    board = dashboard()
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "run"}
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all('run=~"$run"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_the_readme_names_every_exported_metric(ray_local):
    text = README.read_text()
    assert [name for name in sorted(exported_metrics()) if name not in text] == []


def scalars_of(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value to float32 precision) of every scalar TensorBoard reads back from `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_loss_speed_and_valid_metrics_per_round(tmp_path):
    pytest.importorskip("tensorboard")
    writer = TensorBoardWriter(tmp_path)
    writer.on_round_end(None, EVALUATED_ROUND)
    writer.on_round_end(None, TRAINING_ONLY_ROUND)
    assert scalars_of(tmp_path / "tensorboard") == {
        "train/loss": [(2, 0.6), (3, 0.5)],
        "train/client_updates_per_second": [(2, 1234.5), (3, 987.0)],
        "valid/hr@50": [(2, 0.21)],
        "valid/ndcg@50": [(2, 0.07)],
    }


def test_tensorboard_follows_a_federation_as_an_extra_callback(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = RunConfig.create(dataset="synthetic:tiny", backbone="fcf", variant="none", dim=8, rounds=2, local_epochs=1,
                           checkpoint_every=0, seed=0, backend="local")
    problem = problem_of(tiny)
    fed = build_federation(cfg, problem, make_server(cfg, tiny), local_pool(cfg, problem, 1),
                           extra_callbacks=[TensorBoardWriter(tmp_path)])
    fed.run()
    assert [step for step, _ in scalars_of(tmp_path / "tensorboard")["train/loss"]] == [1, 2]


def test_without_tensorboard_installed_the_error_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if absent
    with pytest.raises(FedVLRError, match="needs the `tensorboard` package") as err:
        TensorBoardWriter(tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "tensorboard").exists()
