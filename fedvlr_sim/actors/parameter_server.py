"""The ParameterServer actor: fusion operators and the server step, on GPU when there is one."""

from __future__ import annotations

import numpy as np
import ray
import torch

from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.messages import Upload
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.server import Server


def to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Globals as numpy arrays, which Ray's object store shares zero-copy with readers."""
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


@ray.remote(num_cpus=0)
class ParameterServer:
    """Wraps an engine `Server`; each round it puts the views in the object store once."""

    def __init__(self, cfg: RunConfig, n_items: int, vision, text):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.server = Server(cfg.model, cfg.server, cfg.seed, n_items, vision, text, device=device)

    def shape(self) -> tuple[int, int, str]:
        """(number of views, view width, device)."""
        return self.server.n_views, self.server.width, str(self.server.device)

    @staticmethod
    def _put(tensors: dict[str, torch.Tensor]) -> tuple[list[ray.ObjectRef], int]:
        """The globals put in the object store once ([reference], bytes put)."""
        arrays = to_numpy(tensors)
        return [ray.put(arrays)], sum(a.nbytes for a in arrays.values())

    def publish(self):
        return self._put(self.server.publish())

    def altered_globals(self, modality: str):
        return self._put(self.server.altered_globals(modality))

    def apply(self, upload: Upload) -> float:
        return self.server.apply(upload)

    def largest_published(self) -> float:
        return self.server.largest_published()

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()

    def full_state(self) -> dict:
        return self.server.full_state()

    def load_full_state(self, state: dict) -> None:
        self.server.load_full_state(state)


class ServerProxy:
    """The engine-facing side of a ParameterServer actor (same methods as `Server`)."""

    def __init__(self, actor):
        self.actor = actor
        self.bytes_put = 0   # bytes of the last globals put in the object store

    def publish(self):
        (ref,), self.bytes_put = ray.get(self.actor.publish.remote())
        return ref

    def altered_globals(self, modality: str):
        (ref,), _ = ray.get(self.actor.altered_globals.remote(modality))
        return ref

    def apply(self, upload: Upload) -> float:
        return ray.get(self.actor.apply.remote(upload))

    def largest_published(self) -> float:
        return ray.get(self.actor.largest_published.remote())

    def full_state(self) -> dict:
        return ray.get(self.actor.full_state.remote())

    def load_full_state(self, state: dict) -> None:
        ray.get(self.actor.load_full_state.remote(state))
