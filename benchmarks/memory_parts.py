"""Peak resident memory of each process of a Ray run, stage by stage: the parameter server, every
client shard and the driver, after the actors are placed, after each of two training rounds and
after one evaluation (docs/performance.md, "FedRAP's memory, part by part").

    python benchmarks/memory_parts.py --backbone fedrap --dataset synthetic:movie

Peaks are each process's ru_maxrss, so the sum counts pages shared between processes (torch's
libraries) once per process.
"""
from __future__ import annotations

import argparse
import time

import ray

from fedvlr_sim.backends import open_backend
from fedvlr_sim.cli import build_config
from fedvlr_sim.engine.federation import Federation
from fedvlr_sim.engine.resources import peak_rss_bytes
from fedvlr_sim.engine.simulation import problem_of
from fedvlr_sim.runner import load_checked

GIB = 1024**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic:movie")
    p.add_argument("--backbone", default="fedrap")
    p.add_argument("--variant", default="ours")
    p.add_argument("--data-dir", default="data")
    args = p.parse_args()
    cfg = build_config(None, [], {"dataset": args.dataset, "backend": "ray", "backbone": args.backbone,
                                  "variant": args.variant, "data_dir": args.data_dir})
    dataset = load_checked(cfg)
    problem = problem_of(dataset)
    with open_backend(cfg, dataset, problem, "memory-parts") as backend:
        actors = {"server": backend.placement.server,
                  **{f"shard {i}": shard for i, shard in enumerate(backend.placement.shards)}}
        print("| stage | " + " | ".join(actors) + " | driver | sum |")
        print("|---" * (len(actors) + 3) + "|")

        def row(stage: str) -> None:
            peaks = ray.get([actor.peak_rss_bytes.remote() for actor in actors.values()]) + [peak_rss_bytes()]
            print(f"| {stage} | " + " | ".join(f"{b / GIB:.2f} GB" for b in peaks) + f" | {sum(peaks) / GIB:.2f} GB |",
                  flush=True)

        row("actors placed")
        federation = Federation(cfg.loop, cfg.seed, problem, backend.server, backend.pool)
        for round_idx in (1, 2):
            start = time.perf_counter()
            federation.run_round(round_idx)
            row(f"after round {round_idx} ({time.perf_counter() - start:.1f} s)")
        federation.evaluate(backend.server.publish())
        row("after an evaluation")


if __name__ == "__main__":
    main()
