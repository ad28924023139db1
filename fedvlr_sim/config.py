"""One typed run configuration, validated up front.

Every field maps to a `fedvlr-sim run` option of the same name (underscores become dashes), and a
config file (JSON) may hold any subset of them; CLI options override the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedvlr_sim.errors import FedVLRError

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
VARIANTS = ("none", "ours", "mlp", "vbpr", "sum", "gate")
FUSION_VARIANTS = tuple(v for v in VARIANTS if v != "none")
MODALITIES = ("vision", "text", "id")
ABLATIONS = ("keep", "drop", "noise")
METRICS = tuple(f"{m}@{k}" for k in (10, 20, 50) for m in ("hr", "ndcg"))


@dataclass
class RunConfig:
    """Everything that determines a run. Defaults follow SPEC.md section 7."""

    dataset: str = "synthetic:tiny"
    data_dir: str = "data"
    backbone: str = "fcf"
    variant: str = "ours"
    dim: int = 64
    lr: float = 0.1
    server_lr: float = 1.0
    server_optimizer: str = "sgd"
    local_epochs: int = 5
    neg_ratio: int = 4
    batch_size: int = 2048
    rounds: int = 40
    patience: int = 10
    eval_every: int = 1
    sample_ratio: float = 1.0
    seed: int = 0
    global_update: str = "accumulate"
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    fedrap_lambda: float = 1e-3
    fedrap_mu: float = 1e-3
    router_hidden: int = 64
    ablation: dict[str, str] = field(default_factory=lambda: {m: "keep" for m in MODALITIES})
    select_metric: str = "ndcg@50"
    table_dtype: str = "auto"
    chunk_elements: int = 1 << 24
    backend: str = "ray"
    shards: int = 0
    address: str = ""
    checkpoint_every: int = 5
    out: str = ""

    def validate(self) -> "RunConfig":
        """Raise FedVLRError naming the first impossible option; return self when all is well."""
        _choice("--backbone", self.backbone, BACKBONES)
        _choice("--variant", self.variant, VARIANTS)
        _choice("--server-optimizer", self.server_optimizer, ("sgd", "adam"))
        _choice("--global-update", self.global_update, ("accumulate", "local"))
        _choice("--select-metric", self.select_metric, METRICS)
        _choice("--table-dtype", self.table_dtype, ("auto", "float32", "bfloat16"))
        _choice("--backend", self.backend, ("ray", "local"))
        for name in ("dim", "local_epochs", "neg_ratio", "batch_size", "rounds", "patience",
                     "eval_every", "router_hidden", "chunk_elements"):
            if getattr(self, name) < 1:
                raise FedVLRError(f"--{_dash(name)} must be a positive integer, got {getattr(self, name)}")
        for name in ("lr", "server_lr"):
            if not getattr(self, name) > 0:
                raise FedVLRError(f"--{_dash(name)} must be > 0, got {getattr(self, name)}")
        if self.backbone == "fedncf" and self.dim % 4:
            raise FedVLRError(f"--dim must be divisible by 4 for fedncf (tower d -> d/2 -> d/4), got {self.dim}")
        if not 0 < self.sample_ratio <= 1:
            raise FedVLRError(f"--sample-ratio must be in (0, 1], got {self.sample_ratio}")
        for name in ("dp_clip", "dp_noise", "fedrap_lambda", "fedrap_mu", "shards", "checkpoint_every"):
            if not getattr(self, name) >= 0:
                raise FedVLRError(f"--{_dash(name)} must be >= 0, got {getattr(self, name)}")
        if self.dp_noise > 0 and self.dp_clip == 0:
            raise FedVLRError("--dp-noise needs --dp-clip > 0 (noise is scaled by the clipping norm)")
        unknown = set(self.ablation) - set(MODALITIES)
        if unknown:
            raise FedVLRError(f"ablation: unknown modality {sorted(unknown)[0]!r} (expected one of {', '.join(MODALITIES)})")
        self.ablation = {m: self.ablation.get(m, "keep") for m in MODALITIES}
        for modality, how in self.ablation.items():
            _choice(f"ablation of {modality}", how, ABLATIONS)
        if any(how != "keep" for how in self.ablation.values()):
            if self.variant == "none":
                raise FedVLRError("--drop/--noise need a fusion variant (--variant ours|mlp|sum|gate|vbpr), not 'none'")
            if all(how == "drop" for how in self.ablation.values()):
                raise FedVLRError("--drop: at least one of vision, text, id must remain")
        return self

    @property
    def uses_router(self) -> bool:
        return self.variant == "ours"

    @property
    def uses_features(self) -> bool:
        return self.variant != "none"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "RunConfig":
        """Build from a mapping; unknown keys are an error naming the source."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise FedVLRError(f"{source}: unknown option {unknown[0]!r} (known: {', '.join(sorted(names))})")
        defaults = cls()
        for name, value in values.items():
            expected = type(getattr(defaults, name))
            allowed = (int, float) if expected is float else expected
            if isinstance(value, bool) and expected is not bool or not isinstance(value, allowed):
                raise FedVLRError(f"{source}: option {name!r} must be of type {expected.__name__}, got {value!r}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> "RunConfig":
        """Read a JSON config file (a run's own config.json works)."""
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FedVLRError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise FedVLRError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise FedVLRError(f"{path}: cannot read config file ({type(err).__name__}: expected a UTF-8 JSON file)") from None
        if not isinstance(values, dict):
            raise FedVLRError(f"{path}: expected a JSON object of run options")
        return cls.from_dict(values, source=str(path))


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise FedVLRError(f"{option}: unknown value {value!r} (expected one of {', '.join(allowed)})")
