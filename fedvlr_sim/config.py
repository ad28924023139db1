"""The run configuration: frozen, split by role, validated when it is built.

A run is described by five small frozen records, each read only by the part that needs it:
`ModelConfig` (what is learned), `ClientConfig` (local training), `ServerConfig` (the server
step), `LoopConfig` (rounds, selection, checkpoints) and `LaunchConfig` (data and placement),
composed with the seed into `RunConfig`.

Every field has a flat option name, unique across roles, that is at once its `fedvlr-sim run`
option (underscores become dashes), its key in a config file (JSON, TOML or YAML; also as
`role.name` or in a `[role]` section) and in a run's `config.json`, and a `--set` key.
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
    center_features: bool = option(False, "Centre the vision and text features on their item mean before the "
                                   "projections (real CLIP rows share one dominant direction).")
    view_norm: str = option("auto", "Normalise every fused view per item: none | rms (unit RMS, no gain; with "
                            "--modality-views it raised valid NDCG@50 on KU for every backbone) | center (centred "
                            "on the item mean first) | auto (center for fedncf, whose ReLU tower otherwise sees "
                            "one direction shared by every item, rms for the others; docs/defaults.md Q7).",
                            choices=("auto", "none", "rms", "center"))
    modality_views: bool = option(True, "Offer the router the modality-only views x_v, x_c, x_d beside "
                                  "Sum, MLP and Gate (+ours; doubles the views; docs/defaults.md).")
    head_bias: bool = option(True, "Give the score head of fedavg, pfedrec and fedrap a per-user bias b_u "
                             "(theta_u . e + b_u, a Linear layer as in the authors' code). Without it (theta_u . e) "
                             "an item no user has in train keeps a neutral score, and with --neg-popularity ranks "
                             "near the top (docs/defaults.md Q10).")

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
        """The registered `Variant` of this configuration, with its fusion-input choices."""
        from fedvlr_sim.engine.variants import VARIANTS

        view_norm = self.backbone_def.view_norm if self.view_norm == "auto" else self.view_norm
        return VARIANTS[self.variant].configured(self.modality_views, view_norm, self.center_features)

    def ablation_of(self, modality: str) -> str:
        """keep, drop or noise for one modality."""
        return self.ablation[MODALITIES.index(modality)]


@dataclass(frozen=True)
class ClientConfig:
    """How each sampled client trains locally and what it uploads."""

    lr: float = option(0.1, "Client learning rate eta_l.", positive=True)
    weight_decay: float = option(0.0, "L2 weight decay on each client's local parameters (0 = off).", minimum=0)
    local_epochs: int = option(5, "Local epochs A.", positive=True)
    neg_ratio: int = option(4, "Negatives per positive.", positive=True)
    neg_popularity: float = option(0.0, "Draw each negative with probability proportional to the item's train "
                                   "users to this power beta: 0 = uniform (SPEC section 5); above 0, items no user "
                                   "has in train are never negatives. Clients then need every item's train count.",
                                   minimum=0)
    batch_size: int = option(2048, "Most (positive, negative) pairs per local minibatch.", positive=True)
    global_update: str = option("accumulate", "accumulate (upload accumulated global gradients) | local (step a "
                                "local copy of the globals, upload its change / lr).", choices=("accumulate", "local"))
    dp_clip: float = option(0.0, "Clip each client's upload to this L2 norm (0 = off).", minimum=0)
    dp_noise: float = option(0.0, "Gaussian noise multiplier sigma (noise std = sigma * clip).", minimum=0)
    dp_epsilon: float = option(0.0, "Target epsilon: use the noise multiplier that spends it over --rounds (0 = no "
                               "target; needs --dp-clip, excludes --dp-noise).", minimum=0)
    dp_delta: float = option(0.0, "delta of the reported (epsilon, delta) (0 = 1 / number of users).", minimum=0)
    dp_assumption: str = option("none", "Privacy accounting: none (composition over the rounds a user uploads in) | "
                                "poisson-sampling (assumes amplification by sampling, which does not hold when the "
                                "server sees who uploads).", choices=("none", "poisson-sampling"))
    table_dtype: str = option("auto", "Storage of personal item tables (PFedRec, FedRAP): auto | float32 | bfloat16.",
                              choices=("auto", "float32", "bfloat16"))
    chunk_elements: int = option(1 << 24, "Memory budget per user chunk, in tensor elements.", positive=True)

    def __post_init__(self):
        validate_fields(self)
        if self.dp_noise > 0 and self.dp_clip == 0:
            raise FedVLRError("--dp-noise needs --dp-clip > 0 (noise is scaled by the clipping norm)")
        if self.dp_epsilon > 0 and self.dp_clip == 0:
            raise FedVLRError("--dp-epsilon needs --dp-clip > 0 (noise is scaled by the clipping norm)")
        if self.dp_epsilon > 0 and self.dp_noise > 0:
            raise FedVLRError("--dp-epsilon and --dp-noise exclude each other: give the target epsilon or the noise "
                              "multiplier")
        if self.dp_delta >= 1:
            raise FedVLRError(f"--dp-delta must be < 1, got {self.dp_delta}")


@dataclass(frozen=True)
class ServerConfig:
    """The server step on the aggregated uploads."""

    server_lr: float = option(0.03, "Server learning rate eta_s (Adam 0.03 raised valid NDCG@50 over 0.01 in 9 of "
                              "10 KU and ML cells, 0.1 was no better: docs/defaults.md Q8; the paper: SGD 1.0).", positive=True)
    server_optimizer: str = option("adam", "Server optimiser: sgd | adam (Adam learned far better than the "
                                   "paper's SGD 1.0 over 3 seeds: docs/defaults.md Q1).", choices=("sgd", "adam"))

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class LoopConfig:
    """Rounds, client sampling, evaluation, selection and checkpoints."""

    rounds: int = option(40, "Most rounds.", positive=True)
    patience: int = option(10, "Early stopping: rounds without a better valid metric.", positive=True)
    min_rounds: int = option(20, "Early stopping counts patience only after this many rounds (FedNCF sits on a "
                             "plateau first: docs/defaults.md).", minimum=0)
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
    shard_device: str = option("cpu", "Where client shards train: cpu | cuda (same answers to float "
                               "round-off; on Ray each shard takes a share of the GPUs).", choices=("cpu", "cuda"))
    tensorboard: bool = option(False, "Also write loss, client updates/s and valid metrics per round as "
                               "TensorBoard scalars to <run folder>/tensorboard/ (needs the tensorboard package).")
    address: str = option("", "Ray cluster to join ('auto' inside `ray job submit`); empty starts a private one.")
    out: str = option("", "Run folder (empty: runs/<dataset>-<backbone>-<variant>-<time>).")

    def __post_init__(self):
        validate_fields(self)


ROLES = {"model": ModelConfig, "client": ClientConfig, "server": ServerConfig, "loop": LoopConfig,
         "launch": LaunchConfig}
SEED_HELP = "Random seed (every draw is keyed by seed, round and user)."

# The paper's fusion inputs: Sum, MLP and Gate of the raw inputs (the defaults since docs/defaults.md
# Q6-Q7 are six unit-RMS views, centred first for FedNCF).
PAPER_VIEWS = {"view_norm": "none", "modality_views": False}

# Named option sets (`--preset NAME`), applied over the field defaults and under everything given.
# `paper`: the method exactly as the paper states it (SPEC.md sections 5-7), without the amendments
# of SPEC.md section 10 that the defaults may carry (docs/defaults.md gives the measurements).
PRESETS = {
    "paper": {"server_optimizer": "sgd", "server_lr": 1.0, "lr": 0.1, "weight_decay": 0.0, "min_rounds": 0,
              "neg_popularity": 0.0, "center_features": False, **PAPER_VIEWS},
}


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
        """Build from a mapping read from a file (flat names, dotted `role.name` or role
        sections); unknown keys and wrong types name the source."""
        return resolve([(source, values)])

    @classmethod
    def from_file(cls, path: Path) -> "RunConfig":
        """Read a config file: JSON, TOML or YAML by suffix (a run's own config.json works)."""
        return resolve([(str(path), read_options(path))])


ROLE_OF = {f.name: role for role, kind in ROLES.items() for f in dataclasses.fields(kind)}
OPTION_NAMES = (*ROLE_OF, "seed")


# --------------------------------------------------------------------------- reading options
def resolve(layers: list[tuple[str | None, dict]]) -> RunConfig:
    """The configuration of option layers applied in order (later ones win) over the field
    defaults. Each layer is (source, options) with source a file name, `--set ...`, or None for
    command-line options; an error names the first layer at which the options stop making a
    valid configuration."""
    checked = [(source, checked_options(values, source)) for source, values in layers]
    merged: dict = {}
    for depth, (source, values) in enumerate(checked):
        merged |= values
        try:
            RunConfig.create(**merged)
        except FedVLRError as err:
            if not _valid_with(checked[depth + 1:], merged):
                raise FedVLRError(f"{source}: {err}" if source else str(err)) from None
    return RunConfig.create(**merged)


def _valid_with(later: list[tuple[str | None, dict]], merged: dict) -> bool:
    """Whether the later layers make `merged` a valid configuration (so it is not to blame)."""
    try:
        RunConfig.create(**(merged | {k: v for _, values in later for k, v in values.items()}))
    except FedVLRError:
        return False
    return True


def checked_options(values: dict, source: str | None) -> dict:
    """`values` by flat option name, each of its field's type; `source` names the origin in errors."""
    flat = flat_names(values, source)
    defaults = RunConfig().flat()
    for name, value in flat.items():
        expected = type(defaults[name])
        allowed = (int, float) if expected is float else expected
        if isinstance(value, bool) and expected is not bool or not isinstance(value, allowed):
            raise FedVLRError(f"{_prefix(source)}option {name!r} must be of type {expected.__name__}, got {value!r}")
    return flat


def flat_names(values: dict, source: str | None) -> dict:
    """Options keyed by flat name, from flat names, dotted `role.name` or `{role: {name: ...}}`."""
    flat: dict = {}
    for key, value in values.items():
        nested = key in ROLES and isinstance(value, dict)
        for dotted, item in (((f"{key}.{k}", v) for k, v in value.items()) if nested else [(key, value)]):
            name = flat_name(str(dotted), source)
            if name in flat:
                raise FedVLRError(f"{_prefix(source)}option {name!r} is given twice")
            flat[name] = item
    return flat


def flat_name(key: str, source: str | None) -> str:
    """The flat option name of `lr` or `client.lr`; an unknown one is an error naming `source`."""
    role, _, name = key.rpartition(".")
    if name not in OPTION_NAMES:
        raise FedVLRError(f"{_prefix(source)}unknown option {key!r} (known: {', '.join(sorted(OPTION_NAMES))})")
    if role and ROLE_OF.get(name) != role:
        owner = f"belongs to {ROLE_OF[name]}" if name in ROLE_OF else "takes no role prefix"
        raise FedVLRError(f"{_prefix(source)}unknown option {key!r} ({name!r} {owner})")
    return name


def parse_settings(settings: list[str]) -> list[tuple[str, dict]]:
    """`--set key=value` assignments as option layers, one per assignment (so an error names
    it); a value is parsed as JSON (numbers, true/false, null, quoted strings) else kept as
    the string it is."""
    layers = []
    for setting in settings:
        key, equals, text = setting.partition("=")
        if not equals or not key.strip():
            raise FedVLRError(f"--set {setting}: expected key=value (e.g. --set client.lr=0.05)")
        layers.append((f"--set {setting}", {key.strip(): _json_or_text(text)}))
    return layers


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


CONFIG_SUFFIXES = (".json", ".toml", ".yaml", ".yml")


def read_options(path: Path) -> dict:
    """The options of a config file (JSON, TOML or YAML, chosen by suffix), as written in it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise FedVLRError(f"{path}: unknown config file type {suffix or '(no suffix)'!r}; expected "
                          f"{', '.join(CONFIG_SUFFIXES)}")
    kind = "YAML" if suffix in (".yaml", ".yml") else suffix[1:].upper()
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FedVLRError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FedVLRError(f"{path}: cannot read config file ({type(err).__name__}: expected a UTF-8 {kind} "
                          f"file)") from None
    values = _PARSERS[kind](text, path)
    if not isinstance(values, dict):
        raise FedVLRError(f"{path}: expected a {kind} mapping of run options, got {type(values).__name__}")
    return values


def _parse_json(text: str, path: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FedVLRError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _parse_toml(text: str, path: Path):
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise FedVLRError(f"{path}: not valid TOML ({' '.join(str(err).split())})") from None


def _parse_yaml(text: str, path: Path):
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FedVLRError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or 'parse error'}{where})") from None


def _yaml_loader():
    """YAML's safe loader that also reads `1e-3` as a number (YAML 1.1 floats need a dot)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent_float = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789"))
    return Loader


_PARSERS = {"JSON": _parse_json, "TOML": _parse_toml, "YAML": _parse_yaml}


def _prefix(source: str | None) -> str:
    return f"{source}: " if source else ""


def require_folder(option: str, path: Path, purpose: str) -> Path:
    """`path`, given by `option`, unless it exists as something other than a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FedVLRError(f"{option} {path}: is a file, expected a folder {purpose}")
    return path


def create_folder(option: str, path: Path) -> Path:
    """Create the folder `path`, given by `option` (with its parents), or raise FedVLRError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FedVLRError(f"{option} {path}: cannot create this folder ({err.strerror})") from None
    return path


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
        if f.type == "bool" and not isinstance(value, bool):
            raise FedVLRError(f"{name} must be true or false, got {value!r}")
        if f.type in ("int", "float"):
            numeric = numbers.Real if f.type == "float" else numbers.Integral
            if isinstance(value, bool) or not isinstance(value, numeric):
                kind = "a number" if f.type == "float" else "an integer"
                raise FedVLRError(f"{name} must be {kind}, got {value!r}")
            value = _plain_number(value, f.type)
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


def _plain_number(value, kind: str) -> int | float:
    """A plain int, or a float (an integer too large for a float becomes infinite)."""
    if kind == "int":
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return math.inf


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
