"""``python -m recorders.merge SRC [SRC ...] --out DST``: one dataset from several recordings.

Copies every episode of each source dataset, in order (the sources' episode order, source after
source), into ``DST`` under new consecutive numbers; the files are copied byte for byte, so
the merged episodes are exactly the recorded ones. ``DST`` is created with the first source's
metadata, or, when it already holds a dataset, appended to. Used to train on more play than one
recording holds (``python -m training.pipeline dataset=DST ...``) without recording into the
original dataset.

Exits 0 after merging, 1 (nothing written) when a source is damaged, does not match the others
(game, frame size, frame skip, sticky actions, action set) or is ``DST`` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from recorders.dataset import DatasetError, DatasetWriter, episode_paths, read_metadata, validate_dataset

# What two datasets must share for their episodes to be one dataset.
MATCHING_KEYS = ("game", "frame_size", "frame_skip", "sticky_actions", "action_meanings")


def merge_datasets(sources: list[str | Path], out: str | Path) -> DatasetWriter:
    """Copy the episodes of ``sources`` (dataset directories, in this order) into ``out``.

    Every source is checked in full (:func:`recorders.dataset.validate_dataset`) and against
    the first (:data:`MATCHING_KEYS`), and ``out``, if it holds a dataset already, against them
    too, before anything is written: a bad source leaves ``out`` as it was.

    Args:
        sources: at least one dataset directory.
        out: the merged dataset's directory (created, or appended to).

    Returns:
        The writer, whose ``episodes_before``, ``episodes_written`` and ``frames_written``
        tell what was there and what was added.

    Raises:
        DatasetError: no sources; a source named twice or that is ``out``; a source damaged (every problem named) or of
            another game, frame size, frame skip, sticky-action rate or action set than the
            first source (the key and both values named); an ``out`` of another kind.
    """
    if not sources:
        raise DatasetError("no source datasets to merge")
    out = Path(out)
    paths = [Path(s) for s in sources]
    out_resolved = out.resolve() if out.exists() else None
    seen: dict[Path, Path] = {}
    for p in paths:
        resolved = p.resolve()
        if resolved == out_resolved:
            raise DatasetError(f"{p} is both a source and the output: merge into another directory")
        if resolved in seen:
            raise DatasetError(f"{p} is named twice (as {seen[resolved]} before): its episodes would be merged twice")
        seen[resolved] = p
    for p in paths:
        problems = validate_dataset(p)
        if problems:
            raise DatasetError(f"{p} is not a sound dataset, nothing merged:\n  " + "\n  ".join(problems))
    metas = [read_metadata(p) for p in paths]
    targets = [(str(out), read_metadata(out))] if (out / "metadata.json").exists() else []
    for where, meta in [*zip(map(str, paths[1:]), metas[1:]), *targets]:
        for key in MATCHING_KEYS:
            if json.dumps(meta.get(key)) != json.dumps(metas[0].get(key)):
                raise DatasetError(f"{where} has {key}={meta.get(key)!r} but {paths[0]} has "
                                   f"{metas[0].get(key)!r}: they cannot be one dataset")
    first = {k: v for k, v in metas[0].items() if k not in ("format", "version")}
    writer = DatasetWriter(out, first)
    for p in paths:
        for ep_path in episode_paths(p):
            writer.write_encoded(ep_path.read_bytes(), frames=_frame_count(ep_path))
    return writer


def _frame_count(path: Path) -> int:
    """The frame count of an episode file already validated: one more than its actions (the
    small per-step array; the frames are not decoded again)."""
    with np.load(path, allow_pickle=False) as archive:
        return len(archive["actions"]) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorders.merge", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="dataset directories, merged in this order")
    parser.add_argument("--out", required=True, help="merged dataset directory (created, or appended to)")
    args = parser.parse_args(argv)
    try:
        writer = merge_datasets(args.sources, args.out)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {writer.episodes_written} episodes ({writer.frames_written} frames) from "
          f"{len(args.sources)} datasets added to the {writer.episodes_before} it held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
