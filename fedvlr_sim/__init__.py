"""fedvlr-sim: a Ray-actor simulation engine for federated vision-language recommendation.

The Python API is one call, `run(config)`, and the configuration it takes, `RunConfig`; torch
and Ray are imported only when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedvlr_sim.config import RunConfig

if TYPE_CHECKING:
    from pathlib import Path

    from fedvlr_sim.engine.messages import RunSummary

__version__ = "0.1.0"
__all__ = ["RunConfig", "RunSummary", "run", "__version__"]


def run(config: RunConfig | dict | str | Path) -> RunSummary:
    """Train and evaluate one configuration into a new run folder and return its summary.

    `config` is a `RunConfig`, a dict of options (flat names like `lr`, dotted like
    `client.lr`, or role sections), or the path of a JSON, TOML or YAML config file (a run's own
    config.json works). The folder is the configuration's `out`, or a new
    `runs/<dataset>-<backbone>-<variant>-<time>`; bad input raises `FedVLRError`.
    """
    from fedvlr_sim.runner import run as run_config

    return run_config(config)


def __getattr__(name: str):
    """`RunSummary` on first use (it needs torch)."""
    if name == "RunSummary":
        from fedvlr_sim.engine.messages import RunSummary

        return RunSummary
    raise AttributeError(f"module 'fedvlr_sim' has no attribute {name!r}")
