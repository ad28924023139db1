"""GPU checks of the engine (no Ray needed): CPU/GPU equivalence on a small world, and Movie-scale
rounds (synthetic:movie, 15,908 users, full participation, A = 5) with the server and the client
population on CUDA, at several chunk sizes. Prints one JSON line per measurement.

    python benchmarks/gpu/engine_check.py WORLDS_DIR    # WORLDS_DIR from export_worlds.py
"""
import json, sys, time, types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fedvlr_sim.config import RunConfig
from fedvlr_sim.engine.client import ClientPopulation
from fedvlr_sim.engine.federation import Federation, LocalPool
from fedvlr_sim.engine.simulation import make_server, problem_of

WORLDS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
CUDA = "cuda" if torch.cuda.is_available() else "cpu"


def world(name):
    z = np.load(WORLDS / f"{name}.npz")
    return types.SimpleNamespace(name=name, n_users=int(z["n_users"]), n_items=int(z["n_items"]), user=z["user"],
                                 item=z["item"], split=z["split"], vision=z["vision"].astype(np.float32),
                                 text=z["text"].astype(np.float32), planted_weights=z["planted"])


def federation(cfg, ds, device):
    problem = problem_of(ds)
    server = make_server(cfg, ds, device=device)
    pop = ClientPopulation(cfg.model, cfg.client, cfg.seed, problem.data, ds.n_items, device=device)
    return Federation(cfg.loop, cfg.seed, problem, server, LocalPool([pop], ds.n_users))


def sync():
    if CUDA == "cuda":
        torch.cuda.synchronize()


def equivalence(tiny):
    for backbone, variant in (("fcf", "ours"), ("fedrap", "ours"), ("pfedrec", "none"), ("fedncf", "mlp")):
        cfg = RunConfig.create(backbone=backbone, variant=variant, dim=16, local_epochs=2, seed=0,
                               server_optimizer="adam", server_lr=0.01)
        runs = {}
        for device in ("cpu", CUDA):
            fed = federation(cfg, tiny, device)
            losses = [fed.run_round(t).loss for t in (1, 2, 3)]
            valid, test, _ = fed.evaluate(fed.server.publish())
            runs[device] = (losses, valid, test["all"])
        (lc, vc, tc), (lg, vg, tg) = runs["cpu"], runs[CUDA]
        print(json.dumps({"check": "cpu_vs_gpu", "config": f"{backbone}+{variant}", "device": CUDA,
                          "max_loss_diff": max(abs(a - b) for a, b in zip(lc, lg)),
                          "valid_ndcg50": [vc["ndcg@50"], vg["ndcg@50"]], "test_hr50": [tc["hr@50"], tg["hr@50"]]}),
              flush=True)


def movie_rounds(movie, backbone, chunk_elements, device):
    cfg = RunConfig.create(backbone=backbone, variant="ours", seed=0, server_optimizer="adam", server_lr=0.01,
                           chunk_elements=chunk_elements, table_dtype="float32")
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    start = time.perf_counter()
    fed = federation(cfg, movie, device)
    setup = time.perf_counter() - start
    fed.run_round(1)
    sync()
    times = []
    for t in (2, 3):
        start = time.perf_counter()
        record = fed.run_round(t)
        sync()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    valid, test, _ = fed.evaluate(fed.server.publish())
    sync()
    evaluation = time.perf_counter() - start
    out = {"check": "movie_round", "config": f"{backbone}+ours", "device": device, "users": movie.n_users,
           "chunk_elements": chunk_elements, "setup_s": setup, "train_s_per_round": float(np.mean(times)),
           "updates_per_s": movie.n_users / float(np.mean(times)), "eval_s": evaluation,
           "loss_round3": record.loss, "valid_ndcg50": valid["ndcg@50"]}
    if device == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps({"torch": torch.__version__, "device": CUDA, "threads": torch.get_num_threads()}), flush=True)
    equivalence(world("tiny"))
    movie = world("movie")
    for backbone, chunks in (("fedrap", (1 << 28, 1 << 30)), ("fcf", (1 << 26,))):
        for chunk in chunks:
            movie_rounds(movie, backbone, chunk, CUDA)
