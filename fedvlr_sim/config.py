"""The run configuration: frozen, split by role, validated when it is built.

A run is described by five small frozen records, each read only by the part that needs it:
`ModelConfig` (what is learned), `ClientConfig` (local training), `ServerConfig` (the server
step), `LoopConfig` (rounds, selection, checkpoints) and `LaunchConfig` (data and placement),
composed with the seed into `RunConfig`.

Every field has a flat option name, unique across roles, that is at once its `fedvlr-sim run`
option (underscores become dashes), its key in a config file and in a run's `config.json`.
Defaults and help texts live here only: the command line is generated from these fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from fedvlr_sim.errors import FedVLRError

MODALITIES = ("vision", "text", "id")
ABLATIONS = ("keep", "drop", "noise")
METRICS = tuple(f"{m}@{k}" for k in (10, 20, 50) for m in ("hr", "ndcg"))


def option(default, help: str, choices: tuple[str, ...] | None = None, minimum: float | None = None,
           positive: bool = False):
    """A config field with its help text and the bounds `validate_fields` checks."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum, "positive": positive})


def _backbone_names() -> tuple[str, ...]:
    from fedvlr_sim.engine.backbones import BACKBONES

    return tuple(BACKBONES)


def _backbone_class(name: str):
    from fedvlr_sim.engine.backbones import BACKBONES

    return BACKBONES[name]


def _variant_names() -> tuple[str, ...]:
    from fedvlr_sim.engine.variants import VARIANTS

    return tuple(VARIANTS)


@dataclass(frozen=True)
class ModelConfig:
    """What is learned: the backbone, the fusion variant and their sizes."""

    backbone: str = option("fcf", "Backbone (fedavg | fcf | fedncf | pfedrec | fedrap).", choices=_backbone_names)
    variant: str = option("ours", "Fusion variant (none | ours | mlp | vbpr | sum | gate).", choices=_variant_names)
    dim: int = option(64, "Embedding size d.", positive=True)
    router_hidden: int = option(64, "Hidden units of each user's private router (+ours).", positive=True)
    fedrap_lambda: float = option(1e-3, "FedRAP lambda (personal-table regulariser weight).", minimum=0)
    fedrap_mu: float = option(1e-3, "FedRAP mu (L1 weight on the shared item representation).", minimum=0)
    ablation: tuple[str, ...] = field(default=("keep", "keep", "keep"), metadata={
        "help": "How vision, text and id enter fusion: keep | drop | noise each (--drop / --noise)."})

    def __post_init__(self):
        validate_fields(self)
        if len(self.ablation) != len(MODALITIES):
            raise FedVLRError(f"ablation: expected one of {', '.join(ABLATIONS)} for each of {', '.join(MODALITIES)}")
        for modality, how in zip(MODALITIES, self.ablation):
            _choice(f"ablation of {modality}", how, ABLATIONS)
        _backbone_class(self.backbone).validate(self)
        self.variant_def.validate(self)

    @property
    def backbone_def(self):
        """The registered `Backbone` of this configuration, holding its hyper-parameters."""
        from fedvlr_sim.engine.backbones import BACKBONES

        return BACKBONES[self.backbone](self)

    @property
    def variant_def(self):
        """The registered `Variant` object of this configuration."""
        from fedvlr_sim.engine.variants import VARIANTS

        return VARIANTS[self.variant]

    def ablation_of(self, modality: str) -> str:
        """keep, drop or noise for one modality."""
        return self.ablation[MODALITIES.index(modality)]


@dataclass(frozen=True)
class ClientConfig:
    """How each sampled client trains locally and what it uploads."""

    lr: float = option(0.1, "Client learning rate eta_l.", positive=True)
    local_epochs: int = option(5, "Local epochs A.", positive=True)
    neg_ratio: int = option(4, "Negatives per positive.", positive=True)
    batch_size: int = option(2048, "Most (positive, negative) pairs per local minibatch.", positive=True)
    global_update: str = option("accumulate", "accumulate (upload accumulated global gradients) | local (step a "
                                "local copy of the globals, upload its change / lr).", choices=("accumulate", "local"))
    dp_clip: float = option(0.0, "Clip each client's upload to this L2 norm (0 = off).", minimum=0)
    dp_noise: float = option(0.0, "Gaussian noise multiplier sigma (noise std = sigma * clip).", minimum=0)
    table_dtype: str = option("auto", "Storage of personal item tables (PFedRec, FedRAP): auto | float32 | bfloat16.",
                              choices=("auto", "float32", "bfloat16"))
    chunk_elements: int = option(1 << 24, "Memory budget per user chunk, in tensor elements.", positive=True)

    def __post_init__(self):
        validate_fields(self)
        if self.dp_noise > 0 and self.dp_clip == 0:
            raise FedVLRError("--dp-noise needs --dp-clip > 0 (noise is scaled by the clipping norm)")


@dataclass(frozen=True)
class ServerConfig:
    """The server step on the aggregated uploads."""

    server_lr: float = option(1.0, "Server learning rate eta_s.", positive=True)
    server_optimizer: str = option("sgd", "Server optimiser: sgd | adam.", choices=("sgd", "adam"))

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class LoopConfig:
    """Rounds, client sampling, evaluation, selection and checkpoints."""

    rounds: int = option(40, "Most rounds.", positive=True)
    patience: int = option(10, "Early stopping: rounds without a better valid metric.", positive=True)
    eval_every: int = option(1, "Evaluate on valid every N rounds.", positive=True)
    sample_ratio: float = option(1.0, "Client sampling ratio rho in (0, 1].")
    select_metric: str = option("ndcg@50", "Valid metric for early stopping and selection.", choices=METRICS)
    checkpoint_every: int = option(5, "Checkpoint every N rounds (0 = never).", minimum=0)

    def __post_init__(self):
        validate_fields(self)
        if not 0 < self.sample_ratio <= 1:
            raise FedVLRError(f"--sample-ratio must be in (0, 1], got {self.sample_ratio}")


@dataclass(frozen=True)
class LaunchConfig:
    """Where the data is and where the run executes."""

    dataset: str = option("synthetic:tiny", "Prepared dataset name (KU, ML, Beauty, Movie, ...) or "
                          "synthetic:<tiny|ku|movie>.")
    data_dir: str = option("data", "Folder of prepared datasets ($FEDVLR_DATA_DIR overrides the default).")
    backend: str = option("ray", "ray | local (in process).", choices=("ray", "local"))
    shards: int = option(0, "Client shards (0 = one per CPU of the Ray cluster).", minimum=0)
    address: str = option("", "Ray cluster to join ('auto' inside `ray job submit`); empty starts a private one.")
    out: str = option("", "Run folder (empty: runs/<dataset>-<backbone>-<variant>-<time>).")

    def __post_init__(self):
        validate_fields(self)


ROLES = {"model": ModelConfig, "client": ClientConfig, "server": ServerConfig, "loop": LoopConfig,
         "launch": LaunchConfig}
SEED_HELP = "Random seed (every draw is keyed by seed, round and user)."


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run: the five roles and the seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise FedVLRError(f"--seed must be an integer in [0, 2**63), got {self.seed!r}")

    @classmethod
    def create(cls, **flat) -> "RunConfig":
        """Build from flat option names (`lr=0.1, backbone="fedrap", ...`); the rest default."""
        parts: dict[str, dict] = {role: {} for role in ROLES}
        seed = flat.pop("seed", 0)
        for name, value in flat.items():
            role = ROLE_OF.get(name)
            if role is None:
                raise FedVLRError(f"unknown option {name!r} (known: {', '.join(sorted([*ROLE_OF, 'seed']))})")
            parts[role][name] = _ablation_tuple(value) if name == "ablation" else value
        return cls(**{role: ROLES[role](**values) for role, values in parts.items()}, seed=seed)

    def flat(self) -> dict:
        """Every option by its flat name (the form of config files and config.json)."""
        out = {}
        for role in ROLES:
            out |= dataclasses.asdict(getattr(self, role))
        out["ablation"] = dict(zip(MODALITIES, self.model.ablation))
        return out | {"seed": self.seed}

    def replace(self, **flat) -> "RunConfig":
        """A copy with some flat options changed (validated again)."""
        return RunConfig.create(**(self.flat() | flat))

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "RunConfig":
        """Build from a mapping read from a file; unknown keys and wrong types name the source."""
        defaults = RunConfig().flat()
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise FedVLRError(f"{source}: unknown option {unknown[0]!r} (known: {', '.join(sorted(defaults))})")
        for name, value in values.items():
            expected = type(defaults[name])
            allowed = (int, float) if expected is float else expected
            if isinstance(value, bool) and expected is not bool or not isinstance(value, allowed):
                raise FedVLRError(f"{source}: option {name!r} must be of type {expected.__name__}, got {value!r}")
        try:
            return cls.create(**values)
        except FedVLRError as err:
            raise FedVLRError(f"{source}: {err}") from None

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


ROLE_OF = {f.name: role for role, kind in ROLES.items() for f in dataclasses.fields(kind)}


def option_fields() -> list[tuple[str, dataclasses.Field]]:
    """(role, field) of every flat option, in declaration order: the command line's source."""
    return [(role, f) for role, kind in ROLES.items() for f in dataclasses.fields(kind)]


def dash(name: str) -> str:
    """The command-line spelling of an option name."""
    return name.replace("_", "-")


def validate_fields(record) -> None:
    """Check every field of a role record against its metadata: type, choices, bounds, finiteness."""
    for f in dataclasses.fields(record):
        value, meta = getattr(record, f.name), f.metadata
        name = f"--{dash(f.name)}"
        if f.type in ("int", "float"):
            numeric = numbers.Real if f.type == "float" else numbers.Integral
            if isinstance(value, bool) or not isinstance(value, numeric):
                kind = "a number" if f.type == "float" else "an integer"
                raise FedVLRError(f"{name} must be {kind}, got {value!r}")
            value = float(value) if f.type == "float" else int(value)
            object.__setattr__(record, f.name, value)   # plain Python numbers (numpy ones too)
            if not math.isfinite(value):
                raise FedVLRError(f"{name} must be finite, got {value}")
        if meta.get("choices") is not None:
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            _choice(name, value, choices)
        if meta.get("positive") and not value > 0:
            kind = "a positive integer" if f.type == "int" else "> 0"
            raise FedVLRError(f"{name} must be {kind}, got {value}")
        if meta.get("minimum") is not None and not value >= meta["minimum"]:
            raise FedVLRError(f"{name} must be >= {meta['minimum']}, got {value}")


def _ablation_tuple(value) -> tuple[str, ...]:
    """Accept {modality: how} (missing modalities kept) or a tuple in MODALITIES order."""
    if isinstance(value, dict):
        unknown = set(value) - set(MODALITIES)
        if unknown:
            raise FedVLRError(f"ablation: unknown modality {sorted(unknown)[0]!r} (expected one of {', '.join(MODALITIES)})")
        return tuple(value.get(m, "keep") for m in MODALITIES)
    return tuple(value)


def _choice(option_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise FedVLRError(f"{option_name}: unknown value {value!r} (expected one of {', '.join(allowed)})")
