"""Privacy as a post-processor of each user's upload (SPEC.md section 5, step 4).

`GaussianPrivacy` clips one user's flattened upload to L2 norm S and adds N(0, (sigma S)^2) per
coordinate before it leaves the client. The noise is drawn from the run's counter-based
generator keyed by (seed, round, user), so a simulation is layout-independent and repeatable;
that also means the noise is not secret to whoever knows the seed. What the uploads spend in
(epsilon, delta) is accounted in engine/accounting.py.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvlr_sim.engine.rng import Stream, normal
from fedvlr_sim.errors import FedVLRError


class GaussianPrivacy:
    """Per-user clipping to `clip`, then Gaussian noise of std `noise_multiplier * clip`."""

    def __init__(self, clip: float, noise_multiplier: float, seed: int):
        self.clip, self.noise_multiplier, self.seed = clip, noise_multiplier, seed

    def process(self, uploads: torch.Tensor, users: np.ndarray, round_idx: int) -> torch.Tensor:
        """uploads (n, P), one flattened upload per user -> the privatised uploads."""
        norms = uploads.norm(dim=1, keepdim=True)
        clipped = uploads * (self.clip / norms.clamp_min(1e-12)).clamp(max=1.0)
        if self.noise_multiplier == 0:
            return clipped
        noise = normal(self.seed, Stream.DP_NOISE, round_idx, users, uploads.shape[1])
        return clipped + noise.to(uploads.device) * (self.noise_multiplier * self.clip)


def privacy_of(client_cfg, seed: int) -> GaussianPrivacy | None:
    """The post-processor a client configuration asks for (None without --dp-clip); a target
    --dp-epsilon must have been turned into --dp-noise first (accounting.resolve_noise)."""
    if client_cfg.dp_epsilon > 0:
        raise FedVLRError("--dp-epsilon is solved into a noise multiplier only where a run is set up "
                          "(fedvlr-sim run, fedvlr_sim.run); give --dp-noise here instead")
    if client_cfg.dp_clip > 0:
        return GaussianPrivacy(client_cfg.dp_clip, client_cfg.dp_noise, seed)
    return None
