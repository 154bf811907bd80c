"""``python -m recorders.validate DATASET_DIR``: check a dataset and name every problem.

Exits 0 when the dataset is sound, 1 (printing one line per problem) when not.
"""

from __future__ import annotations

import argparse
import sys

from recorders.dataset import EpisodeDataset, validate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorders.validate", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset directory")
    args = parser.parse_args(argv)
    problems = validate_dataset(args.dataset)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    ds = EpisodeDataset(args.dataset, load=False)
    print(f"{args.dataset}: ok, {len(ds)} episodes of {ds.metadata['game']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
