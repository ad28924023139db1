"""CLIP features: prompts, image imputation, storage, resuming; offline with random tiny models."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import open_clip
import polars as pl
import pytest
import torch
from PIL import Image

from fedvlr_sim.datasets import extract_features, load_dataset
from fedvlr_sim.datasets import features as features_module
from fedvlr_sim.datasets.canonical import Prepared, write_prepared
from fedvlr_sim.datasets.dataset import Dataset
from fedvlr_sim.datasets.preprocess import temporal_split
from fedvlr_sim.errors import FedVLRError

TINY = "fedvlr-test-tiny"
TITLES = ["Red shoe", "Blue hat", None, "Green bag", "Pink cup", "Grey mug", "Gold ring"]
IMAGES = ["0.jpg", "1.png", None, "3.jpg", "broken.jpg", None, "6.jpg"]  # 4 usable, 1 unreadable, 2 absent


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    """Register a CLIP config small enough to build and run in well under a second on CPU."""
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("clip") / f"{TINY}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A prepared dataset of 7 items with the titles and images above; 3 users see every item."""
    images = tmp_path / "images"
    images.mkdir()
    for k, name in enumerate(IMAGES):
        if name == "broken.jpg":
            (images / name).write_bytes(b"not an image")
        elif name is not None:
            Image.new("RGB", (20, 12), (40 * k, 255 - 30 * k, 90)).save(images / name)
    user = np.repeat(np.arange(3), 7)
    item = np.tile(np.arange(7), 3)
    order, split = temporal_split(user, np.arange(21))
    ds = Dataset("Shop", 3, 7, user[order], item[order], np.arange(21)[order], split, meta={"source": {}})
    items = pl.DataFrame({"item": np.arange(7), "raw_id": [f"s{i}" for i in range(7)], "title": TITLES,
                          "image_path": [name and str(images / name) for name in IMAGES], "image_url": None})
    users = pl.DataFrame({"user": np.arange(3), "raw_id": ["a", "b", "c"]})
    write_prepared(Prepared(ds, items, users), tmp_path / "data" / "Shop")
    return tmp_path / "data"


def test_titles_and_images_are_embedded_and_missing_images_get_the_mean_image(shop):
    summary = extract_features("Shop", shop, model=TINY, pretrained=None, progress=False)
    assert summary | {"pretrained": "-"} == {
        "name": "Shop", "items": 7, "model": TINY, "pretrained": "-", "text_embedded": 7, "titles_missing": 1,
        "images_embedded": 4, "images_imputed": 3, "images_unreadable": 1, "rows_resumed": 0}
    ds = load_dataset("Shop", shop)
    assert ds.vision.shape == ds.text.shape == (7, 32)
    assert np.allclose(np.linalg.norm(ds.vision, axis=1), 1, atol=1e-5)
    embedded = ds.vision[[0, 1, 3, 6]]
    mean = embedded.mean(axis=0) / np.linalg.norm(embedded.mean(axis=0))
    for row in (2, 4, 5):
        assert np.allclose(ds.vision[row], mean, atol=1e-5)
    meta = json.loads((shop / "Shop" / "meta.json").read_text())["features"]
    assert meta["vision"]["model"] == TINY and meta["vision"]["pretrained"] is None and meta["text"]["dim"] == 32
    assert not list((shop / "Shop" / "features").glob(".partial*"))


class FakeClip:
    """A stand-in for an open_clip model that records what it is asked to embed."""

    def __init__(self, fail_on_image_call: int | None = None):
        self.prompts, self.image_calls, self.fail_on = [], 0, fail_on_image_call

    def tokenizer(self, texts):
        self.prompts += texts
        return torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                            for t in texts])

    @staticmethod
    def preprocess(image):
        return torch.tensor(np.asarray(image.resize((4, 4)), dtype=np.float32)).flatten()[:16]

    def encode_text(self, tokens):
        return tokens

    def encode_image(self, pixels):
        self.image_calls += 1
        if self.image_calls == self.fail_on:
            raise KeyboardInterrupt
        return pixels + 1.0


def use(monkeypatch, clip: FakeClip) -> FakeClip:
    monkeypatch.setattr(features_module, "_load_clip", lambda *args: (clip, clip.preprocess, clip.tokenizer))
    return clip


def test_text_prompts_follow_the_spec(shop, monkeypatch):
    clip = use(monkeypatch, FakeClip())
    extract_features("Shop", shop, progress=False)
    assert clip.prompts[:3] == ["The title of this item is: Red shoe.", "The title of this item is: Blue hat.",
                                "The title is missing."]


def test_an_interrupted_run_resumes_without_embedding_finished_rows_again(shop, tmp_path, monkeypatch):
    use(monkeypatch, FakeClip(fail_on_image_call=2))
    with pytest.raises(KeyboardInterrupt):
        extract_features("Shop", shop, batch_size=2, progress=False)
    assert (shop / "Shop" / "features" / ".partial_vision.npy").is_file()
    clip = use(monkeypatch, FakeClip())
    summary = extract_features("Shop", shop, batch_size=2, progress=False)
    assert summary["rows_resumed"] == 7 + 2  # every title and the first image batch
    assert clip.prompts == [] and clip.image_calls == 2  # images 3 and 4 (unreadable), then image 6
    resumed = load_dataset("Shop", shop)
    use(monkeypatch, FakeClip())
    extract_features("Shop", shop, batch_size=2, progress=False)
    assert np.allclose(load_dataset("Shop", shop).vision, resumed.vision)


def test_partial_results_of_another_model_are_not_reused(shop, monkeypatch):
    use(monkeypatch, FakeClip(fail_on_image_call=1))
    with pytest.raises(KeyboardInterrupt):
        extract_features("Shop", shop, pretrained="weights-a.pt", progress=False)
    use(monkeypatch, FakeClip())
    assert extract_features("Shop", shop, pretrained="weights-b.pt", progress=False)["rows_resumed"] == 0


def test_missing_weights_file_is_a_one_line_error_naming_the_option(shop):
    with pytest.raises(FedVLRError, match=r"--model .* --pretrained /nowhere/clip\.pt: cannot load CLIP"):
        extract_features("Shop", shop, model=TINY, pretrained="/nowhere/clip.pt", progress=False)


@pytest.mark.parametrize("content", [b"", b"not weights\n", bytes(range(256)) * 4], ids=["empty", "text", "bytes"])
def test_a_file_that_is_not_clip_weights_is_a_one_line_error_naming_it(shop, tmp_path, content):
    weights = tmp_path / "clip.pt"
    weights.write_bytes(content)
    with pytest.raises(FedVLRError, match=rf"^--pretrained {weights}: not a weights file open_clip can load") as err:
        extract_features("Shop", shop, model=TINY, pretrained=str(weights), progress=False)
    assert "\n" not in str(err.value)


def test_unknown_model_is_a_one_line_error(shop):
    with pytest.raises(FedVLRError, match=r"--model NoSuchCLIP"):
        extract_features("Shop", shop, model="NoSuchCLIP", pretrained=None, progress=False)


def test_dataset_without_titles_or_images_is_refused(shop):
    items = shop / "Shop" / "items.parquet"
    pl.read_parquet(items).with_columns(title=None, image_path=None).write_parquet(items)
    meta = json.loads((shop / "Shop" / "meta.json").read_text())
    meta["checksums"].pop("items.parquet")
    (shop / "Shop" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FedVLRError, match=r"items\.parquet: no item has a title or an image path"):
        extract_features("Shop", shop, model=TINY, pretrained=None, progress=False)


def test_a_torn_partial_file_is_discarded_and_its_rows_embedded_again(shop, monkeypatch):
    use(monkeypatch, FakeClip(fail_on_image_call=2))
    with pytest.raises(KeyboardInterrupt):
        extract_features("Shop", shop, batch_size=2, progress=False)
    (shop / "Shop" / "features" / ".partial_vision.npy").write_bytes(b"")  # as a kill during its creation leaves it
    clip = use(monkeypatch, FakeClip())
    assert extract_features("Shop", shop, batch_size=2, progress=False)["rows_resumed"] == 0
    assert len(clip.prompts) == 7


# --- CLIP weights: a local file works; missing Hub weights fail at once, not after a minute of retries -----


def test_a_local_weights_file_is_what_embeds(shop, tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(TINY).state_dict(), weights)
    first = extract_features("Shop", shop, model=TINY, pretrained=str(weights), progress=False)
    text = load_dataset("Shop", shop).text
    extract_features("Shop", shop, model=TINY, pretrained=str(weights), progress=False)
    assert first["pretrained"] == str(weights)
    assert np.array_equal(load_dataset("Shop", shop).text, text)  # random weights would differ between runs


@pytest.fixture
def uncached_hub_weights(monkeypatch):
    """No weights in the Hugging Face cache; open_clip must not even be asked to fetch them."""
    import huggingface_hub

    def must_not_load(*args, **kwargs):
        raise AssertionError("open_clip was asked for weights that cannot be had")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_load)


def test_offline_mode_without_cached_weights_fails_at_once_naming_the_option(shop, uncached_hub_weights, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FedVLRError, match=r"^--model ViT-B-32 --pretrained openai: cannot load CLIP \(HF_HUB_OFFLINE "
                                          r"is set and the weights .* are not in the Hugging Face cache\); pass "
                                          r"--pretrained PATH"):
        extract_features("Shop", shop, progress=False)


def test_no_connection_without_cached_weights_fails_after_one_quick_request(shop, uncached_hub_weights, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    requests = []

    def no_connection(url, **kwargs):
        requests.append(url)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_connection)
    with pytest.raises(FedVLRError, match=r"--pretrained openai: cannot load CLIP \(.* the Hub cannot be reached: "
                                          r"ConnectionError: Name or service not known\)"):
        extract_features("Shop", shop, progress=False)
    assert len(requests) == 1
