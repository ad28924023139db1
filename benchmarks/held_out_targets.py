"""What the held-out test items of prepared datasets are: how many never occur in train, how
popular they are in train. Prints one Markdown row per dataset (docs/findings.md).

    python benchmarks/held_out_targets.py --data-dir DATA Beauty KU ML
"""
import argparse

import numpy as np

from fedvlr_sim.datasets.registry import load_dataset
from fedvlr_sim.engine.simulation import problem_of


def target_row(name: str, data_dir: str) -> str:
    dataset = load_dataset(name, data_dir, 0)
    problem = problem_of(dataset)
    counts = problem.item_train_counts
    target_counts = counts[problem.data.test]
    percentile = np.searchsorted(np.sort(counts), target_counts, side="left") / len(counts)
    return (f"| {name} | {dataset.n_users:,} | {dataset.n_items:,} | {len(problem.data.train_items):,} | "
            f"{np.mean(target_counts == 0):.1%} | {np.mean(target_counts <= 2):.1%} | {np.median(percentile):.2f} | "
            f"{np.median(problem.data.train_counts):.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    print("| set | users | items | train interactions | test targets never in train | with at most 2 train users "
          "| median popularity percentile of the test target | median train items per user |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        print(target_row(name, args.data_dir))
