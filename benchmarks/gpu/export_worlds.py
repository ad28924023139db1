"""Write the synthetic worlds the GPU check uses as .npz files (for a GPU machine whose Python has
torch and numpy but not the rest of fedvlr-sim's dependencies):

    python benchmarks/gpu/export_worlds.py OUT_DIR      # on a machine with fedvlr-sim installed
    python benchmarks/gpu/engine_check.py OUT_DIR       # on the GPU machine
"""
import sys
from pathlib import Path

import numpy as np

from fedvlr_sim.datasets import load_dataset

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("synthetic:tiny", "synthetic:movie"):
        ds = load_dataset(name, out, seed=0)
        np.savez_compressed(out / f"{name.split(':')[1]}.npz", user=ds.user, item=ds.item, split=ds.split,
                            vision=np.asarray(ds.vision, np.float16), text=np.asarray(ds.text, np.float16),
                            planted=ds.planted_weights, n_users=ds.n_users, n_items=ds.n_items)
        print(f"{name}: {ds.n_users} users, {ds.n_items} items, {len(ds.user)} interactions -> {out}")
