"""CLIP image and title embeddings for a prepared dataset (SPEC section 1), resumable.

Text: "The title of this item is: {title}." or, without a title, "The title is missing.".
Vision: the item's image; items without a readable image get the mean of the embedded image
vectors. Rows are L2-normalised and written to features/vision.npy and features/text.npy.
Progress is kept in features/.partial_<part>.npy (vectors), .partial_<part>.state.npy (per row:
0 to do, 1 embedded, 2 no usable image) and .partial.json (model, weights, items checksum),
flushed after every batch, so an interrupted run only embeds what is left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from fedvlr_sim.datasets.canonical import (FEATURE_FILES, ITEMS, features_folder, read_items, read_meta,
                                           save_features, write_meta)
from fedvlr_sim.datasets.registry import dataset_folder
from fedvlr_sim.errors import FedVLRError

TEXT_PROMPT = "The title of this item is: {}."
MISSING_TITLE = "The title is missing."
TODO, EMBEDDED, UNUSABLE = 0, 1, 2
HUB_PROBE_TIMEOUT_S = 5


def extract_features(
    name: str,
    data_dir: Path,
    model: str = "ViT-B-32",
    pretrained: str | None = "openai",
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Embed the titles and images of prepared dataset ``name`` with open_clip ``model``.

    ``pretrained``: an open_clip tag, a local weights file, or None for random weights.
    Returns counts: items, embedded and imputed images, missing titles, rows resumed.
    """
    folder = dataset_folder(name, data_dir)
    meta = read_meta(folder)
    items = read_items(folder)
    titles, paths = items["title"].to_list(), items["image_path"].to_list()
    if all(t is None for t in titles) and all(p is None for p in paths):
        raise FedVLRError(
            f"{folder / ITEMS}: no item has a title or an image path, so there is nothing to embed; "
            f"prepare it again (`prepare --replace`) from raw files with titles or images (MMRec folders bring their own features)"
        )
    features = features_folder(folder)
    clip, preprocess, tokenizer = _load_clip(model, pretrained, device)
    signature = {"model": model, "pretrained": None if pretrained is None else str(pretrained),
                 "items_sha256": meta.get("checksums", {}).get(ITEMS)}
    store = _PartialStore(features, signature, len(items))
    prompts = [MISSING_TITLE if t is None else TEXT_PROMPT.format(t) for t in titles]

    def encode_text(rows):
        return _encode(clip.encode_text, tokenizer([prompts[i] for i in rows]), device), rows

    def encode_images(rows):
        images = {i: image for i in rows if (image := _open_image(paths[i])) is not None}
        if not images:
            return None, []
        batch = _stack([preprocess(image) for image in images.values()])
        return _encode(clip.encode_image, batch, device), list(images)

    with _progress_bar(progress) as bar:
        text, text_resumed = store.run("text", encode_text, batch_size, bar, todo=range(len(items)))
        has_path = [i for i, p in enumerate(paths) if p is not None]
        vision, vision_resumed = store.run("vision", encode_images, batch_size, bar, todo=has_path)
    embedded = store.state("vision") == EMBEDDED
    summary = {
        "name": folder.name, "items": len(items), "model": model, "pretrained": signature["pretrained"],
        "text_embedded": len(items), "titles_missing": prompts.count(MISSING_TITLE),
        "images_embedded": int(embedded.sum()), "images_imputed": int((~embedded).sum()) if embedded.any() else 0,
        "images_unreadable": int((store.state("vision") == UNUSABLE).sum()),
        "rows_resumed": text_resumed + vision_resumed,
    }
    _write(folder, meta, text, vision, embedded, summary)
    store.clear()
    return summary


def _write(folder: Path, meta: dict, text: np.ndarray, vision: np.ndarray, embedded: np.ndarray, summary: dict):
    """Save text (and, when any image was embedded, imputed vision) features; record them in meta.json."""
    source = {"model": summary["model"], "pretrained": summary["pretrained"], "dim": int(text.shape[1])}
    features = {"text": source | {"prompt": TEXT_PROMPT, "missing_title": MISSING_TITLE,
                                  "titles_missing": summary["titles_missing"]}}
    save_features(folder, "text", text)
    if embedded.any():
        vectors = vision[embedded] / np.linalg.norm(vision[embedded], axis=1, keepdims=True)
        vision = np.where(embedded[:, None], vision, vectors.mean(axis=0))
        save_features(folder, "vision", vision)
        features["vision"] = source | {"embedded": summary["images_embedded"], "imputed": summary["images_imputed"],
                                       "imputation": "mean of the embedded image vectors"}
    else:  # no image: drop any vision features of another model so the modalities stay consistent
        (folder / FEATURE_FILES["vision"]).unlink(missing_ok=True)
    write_meta(folder, meta | {"features": features})


class _PartialStore:
    """Per-modality vectors and row states on disk, flushed after every batch."""

    def __init__(self, folder: Path, signature: dict, n_rows: int):
        self.folder, self.n_rows = folder, n_rows
        folder.mkdir(exist_ok=True)
        sig_path = folder / ".partial.json"
        try:
            same_run = json.loads(sig_path.read_text()) == signature
        except (OSError, ValueError):
            same_run = False
        if not (same_run and self._intact()):
            self.clear()
            sig_path.write_text(json.dumps(signature))

    def _paths(self, part: str) -> tuple[Path, Path]:
        return self.folder / f".partial_{part}.npy", self.folder / f".partial_{part}.state.npy"

    def _intact(self) -> bool:
        """Whether every partial file present reads as one row per item (a killed run may leave a torn one)."""
        for part in FEATURE_FILES:
            for path, dtype, ndim in zip(self._paths(part), (np.float32, np.uint8), (2, 1)):
                if not path.exists():
                    continue
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    return False
                if array.dtype != dtype or array.ndim != ndim or array.shape[0] != self.n_rows:
                    return False
        return True

    def state(self, part: str) -> np.ndarray:
        state_path = self._paths(part)[1]
        return np.load(state_path) if state_path.is_file() else np.zeros(self.n_rows, dtype=np.uint8)

    def run(self, part, encode, batch_size, bar, todo) -> tuple[np.ndarray | None, int]:
        """Encode the rows of ``todo`` still to do, in batches; return all vectors and rows resumed.

        ``encode(rows)`` returns the vectors of the rows it could embed and those rows.
        """
        values_path, state_path = self._paths(part)
        state = self.state(part)
        resumed = int((state != TODO).sum())
        rows = [i for i in todo if state[i] == TODO]
        task = bar.add_task(f"{part} embeddings", total=len(todo), completed=len(todo) - len(rows))
        values = np.load(values_path, mmap_mode="r+") if values_path.is_file() else None
        state = np.lib.format.open_memmap(state_path, mode="r+" if state_path.is_file() else "w+",
                                          dtype=np.uint8, shape=(self.n_rows,))
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            vectors, embedded = encode(batch)
            if embedded:
                if values is None:
                    values = np.lib.format.open_memmap(values_path, mode="w+", dtype=np.float32,
                                                       shape=(self.n_rows, vectors.shape[1]))
                values[embedded] = vectors
                values.flush()
            state[batch] = UNUSABLE
            state[embedded] = EMBEDDED
            state.flush()
            bar.update(task, advance=len(batch))
        return (None if values is None else np.array(values)), resumed

    def clear(self) -> None:
        """Remove every partial file."""
        for path in self.folder.glob(".partial*"):
            path.unlink()


def _load_clip(model: str, pretrained: str | None, device: str):
    """open_clip model (eval mode), image preprocessing and tokenizer; failures become FedVLRError."""
    import open_clip

    try:
        _require_weights(model, pretrained)
        with _library_logs_muted():
            clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
            tokenizer = open_clip.get_tokenizer(model)
    except Exception as exc:   # noqa: BLE001 - a user's weights file can fail in any way (pickle, keys)
        reason = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]  # the first sentence
        if pretrained and Path(pretrained).is_file():
            raise FedVLRError(f"--pretrained {pretrained}: not a weights file open_clip can load for --model {model} "
                              f"({type(exc).__name__}{': ' + reason if reason else ''})") from None
        if not isinstance(exc, (RuntimeError, OSError, ValueError)):
            raise
        raise FedVLRError(
            f"--model {model} --pretrained {pretrained}: cannot load CLIP ({reason}); "
            f"pass --pretrained PATH to a local weights file when offline"
        ) from None
    return clip.eval(), preprocess, tokenizer


def _require_weights(model: str, pretrained: str | None) -> None:
    """Raise FileNotFoundError at once when the Hub weights of open_clip tag ``pretrained`` are
    neither in the Hugging Face cache nor downloadable now (offline mode, or no connection).

    Without this, open_clip's download retries for about a minute before failing. Local weight
    files, ``None`` (random weights) and tags without Hub weights are left to open_clip.
    """
    import open_clip
    from huggingface_hub import constants, try_to_load_from_cache

    hub_path = open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained).get("hf_hub") if pretrained else None
    if not hub_path:
        return
    repo_id, filename = os.path.split(hub_path)
    files = _hub_weight_files(filename)
    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files):
        return
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"HF_HUB_OFFLINE is set and the weights of tag '{pretrained}' ({repo_id}) "
                                f"are not in the Hugging Face cache")
    unreachable = _hub_unreachable(repo_id, files[-1])
    if unreachable:
        raise FileNotFoundError(f"the weights of tag '{pretrained}' ({repo_id}) are not in the Hugging Face cache "
                                f"and the Hub cannot be reached: {unreachable}")


def _hub_weight_files(filename: str) -> list[str]:
    """The weight files open_clip looks for in a Hub repository, in its order (a .safetensors twin first)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    twin = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else re.sub(r"\.(bin|pth)$", ".safetensors", filename)
    return [twin, filename] if twin != filename else [filename]


def _hub_unreachable(repo_id: str, filename: str) -> str | None:
    """Why one quick request (no retries) to the Hub for ``repo_id/filename`` got no answer, or None."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return None  # the Hub answered: open_clip downloads, or reports what the Hub said
    except Exception as exc:  # no connection, proxy or TLS failure: whatever the transport raises
        detail = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return None


@contextlib.contextmanager
def _library_logs_muted():
    """Keep library log records off stderr (open_clip logs each failure it then raises)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _encode(encoder, batch, device: str) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoder(batch.to(device)).float().cpu().numpy()


def _stack(images):
    import torch

    return torch.stack(images)


def _open_image(path: str | None):
    """The RGB image at ``path``, or None when it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)
