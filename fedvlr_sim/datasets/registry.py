"""Dataset names: the paper's datasets, where to get them, and loading any dataset by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedvlr_sim.datasets import synthetic
from fedvlr_sim.datasets.canonical import FEATURE_FILES, META, read_dataset, read_meta
from fedvlr_sim.datasets.dataset import Dataset
from fedvlr_sim.errors import FedVLRError

SYNTHETIC_PREFIX = "synthetic:"
NINEREC = "NineRec (https://github.com/westlake-repl/NineRec)"
AMAZON = "Amazon Reviews 2023 (https://amazon-reviews-2023.github.io), benchmark/5core/rating_only"
AMAZON_IMAGES = "`fedvlr-sim images` downloads them from the metadata URLs"


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the paper: its source format, Table 1 counts and how to obtain it."""

    name: str
    paper_name: str
    fmt: str  # reader in fedvlr_sim.datasets.formats
    source_name: str  # its name at the source: NineRec folder, Amazon category, MovieLens release
    users: int
    items: int
    interactions: int
    obtain: str

    @property
    def preset(self) -> str:
        """The synthetic preset with this dataset's shape."""
        return self.name.lower()


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("KU", "KU", "ninerec", "KU", 204, 560, 3488,
                    f"{NINEREC}: KU_pair.csv, KU_item.csv, KU_cover/; or the FedVLR authors' MMRec "
                    f"folder (inter.csv, image_features.npy, text_features.npy) with --format mmrec"),
        DatasetInfo("Food", "Bili_Food", "ninerec", "Bili_Food", 5990, 1125, 36482,
                    f"{NINEREC}: Bili_Food_pair.csv, Bili_Food_item.csv, Bili_Food_cover/"),
        DatasetInfo("Dance", "Bili_Dance", "ninerec", "Bili_Dance", 10231, 1676, 80086,
                    f"{NINEREC}: Bili_Dance_pair.csv, Bili_Dance_item.csv, Bili_Dance_cover/"),
        DatasetInfo("Movie", "Bili_Movie", "ninerec", "Bili_Movie", 15908, 2528, 111091,
                    f"{NINEREC}: Bili_Movie_pair.csv, Bili_Movie_item.csv, Bili_Movie_cover/"),
        DatasetInfo("Beauty", "Beauty", "amazon", "All_Beauty", 253, 356, 2535,
                    f"{AMAZON}/All_Beauty.csv; optional meta_All_Beauty.jsonl and images/<parent_asin>.jpg "
                    f"({AMAZON_IMAGES})"),
        DatasetInfo("Cards", "Cards", "amazon", "Gift_Cards", 377, 129, 2429,
                    f"{AMAZON}/Gift_Cards.csv; optional meta_Gift_Cards.jsonl and images/<parent_asin>.jpg "
                    f"({AMAZON_IMAGES})"),
        DatasetInfo("ML", "ML", "movielens", "ml-latest-small", 610, 3650, 90274,
                    "MovieLens latest-small (https://grouplens.org/datasets/movielens/latest/, "
                    "ml-latest-small.zip): ratings.csv, movies.csv"),
    )
}


def known(name: str) -> DatasetInfo | None:
    """The known dataset called ``name`` (case-insensitive), or None."""
    return next((info for key, info in KNOWN_DATASETS.items() if key.lower() == name.lower()), None)


def dataset_folder(name: str, data_dir: Path) -> Path:
    """``data_dir/<name>``, a known dataset's name spelled as in KNOWN_DATASETS."""
    info = known(name)
    return Path(data_dir) / (info.name if info else name)


def load_dataset(name: str, data_dir: Path, seed: int = 0) -> Dataset:
    """Load a prepared dataset folder ``data_dir/<name>``, or generate ``synthetic:<preset>`` from ``seed``.

    Unprepared known names, unknown names and unknown presets raise FedVLRError saying what to do.
    """
    if name.startswith(SYNTHETIC_PREFIX):
        return synthetic.generate(name[len(SYNTHETIC_PREFIX):], seed)
    data_dir, info, folder = Path(data_dir), known(name), dataset_folder(name, data_dir)
    if (folder / META).is_file():
        return read_dataset(folder)
    if info is not None:
        raise FedVLRError(
            f"dataset '{info.name}' is not prepared in {data_dir} (no {folder / META}): get {info.obtain}, "
            f"then run `fedvlr-sim prepare --dataset {info.name} --raw PATH`; or run "
            f"`--dataset {SYNTHETIC_PREFIX}{info.preset}` for a synthetic world of the same shape"
        )
    if folder.is_dir():
        raise FedVLRError(f"{folder}: not a prepared dataset (no {META}); run `fedvlr-sim prepare` on its raw files")
    raise FedVLRError(
        f"unknown dataset '{name}': known datasets are {', '.join(KNOWN_DATASETS)}; prepared in {data_dir}: "
        f"{', '.join(_prepared_folders(data_dir)) or 'none'}; synthetic worlds: "
        f"{', '.join(SYNTHETIC_PREFIX + p for p in synthetic.PRESETS)}"
    )


def list_datasets(data_dir: Path) -> list[dict]:
    """Every known dataset (prepared or not) and every other prepared folder in ``data_dir``.

    Each entry: name, paper_name, prepared, users, items, interactions, features (modalities
    present), obtain, problem (why a prepared folder cannot be read, else None).
    """
    data_dir = Path(data_dir)
    names = list(KNOWN_DATASETS) + [n for n in _prepared_folders(data_dir) if n not in KNOWN_DATASETS]
    return [_entry(name, data_dir / name) for name in names]


def _entry(name: str, folder: Path) -> dict:
    info = KNOWN_DATASETS.get(name)
    entry = {"name": name, "paper_name": info.paper_name if info else name, "prepared": False,
             "users": None, "items": None, "interactions": None, "features": [],
             "obtain": info.obtain if info else None, "problem": None}
    if not (folder / META).is_file():
        return entry
    try:
        meta = read_meta(folder)
    except FedVLRError as exc:
        return entry | {"problem": str(exc)}
    counts = meta.get("counts", {})
    return entry | {
        "prepared": True,
        "users": counts.get("users"),
        "items": counts.get("items"),
        "interactions": counts.get("interactions"),
        "features": [part for part, f in FEATURE_FILES.items() if (folder / f).is_file()],
    }


def _prepared_folders(data_dir: Path) -> list[str]:
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir() if (p / META).is_file() and not p.name.startswith("."))
