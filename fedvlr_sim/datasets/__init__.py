"""Datasets: raw-format loaders, item image download, the canonical on-disk form, CLIP features,
synthetic worlds."""

from fedvlr_sim.datasets.dataset import Dataset, dataset_summary
from fedvlr_sim.datasets.features import extract_features
from fedvlr_sim.datasets.images import download_images
from fedvlr_sim.datasets.prepare import prepare_dataset
from fedvlr_sim.datasets.registry import KNOWN_DATASETS, DatasetInfo, list_datasets, load_dataset
from fedvlr_sim.datasets.synthetic import PRESETS as SYNTHETIC_PRESETS

__all__ = [
    "KNOWN_DATASETS",
    "SYNTHETIC_PRESETS",
    "Dataset",
    "DatasetInfo",
    "dataset_summary",
    "download_images",
    "extract_features",
    "list_datasets",
    "load_dataset",
    "prepare_dataset",
]
