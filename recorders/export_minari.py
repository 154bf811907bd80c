"""Export a dataset directory to a Minari dataset (the Farama offline-RL format).

``python -m recorders.export_minari DATASET_DIR dataset_id=NAMESPACE/GAME/NAME-v0 [root=DIR]
[author=...] [description=...]`` writes a Minari dataset readable by ``minari.load_dataset``.

The frames are stored losslessly (Minari's JPEG encoding of image observations is off: it
would smear the one-pixel Pong ball). Minari keeps its datasets under one root directory,
``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``; ``root=`` picks another one, which a
reader names the same way (``MINARI_DATASETS_PATH=DIR``). Needs the ``minari`` extra:
``pip install 'dreamgames[minari]'``.

The mapping: Minari's ``observations`` are our ``frames`` (T+1 of them, the same
convention), ``actions``, ``rewards``, ``terminations`` and ``truncations`` are our
``actions``, ``rewards``, ``terminated`` and ``truncated``; each episode's seed is the seed
its env was reset with. The dataset's env spec makes the real game through
``envs.real:make`` with the dataset's game, frame skip, sticky actions and frame size, so
``MinariDataset.recover_environment()`` gives the environment that recorded it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from recorders.dataset import DatasetError, EpisodeDataset, load_episode

CHUNK_EPISODES = 16
"""Episodes converted and written at a time, so memory stays bounded on large datasets."""


@contextmanager
def _minari_root(root: str | Path | None):
    """Point Minari at ``root`` for the duration (Minari reads its root from the environment only)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def env_spec_for(metadata: dict):
    """The Gymnasium ``EnvSpec`` of the real game that recorded a dataset, from its ``metadata.json``.

    ``gymnasium.make(spec)`` calls ``envs.real.make(game, frame_skip=..., sticky_actions=...,
    size=...)``: observations ``Box(0, 255, (size, size, 3), uint8)``, ``Discrete(n)`` actions.
    """
    from gymnasium.envs.registration import EnvSpec

    size = int(metadata["frame_size"][0])
    kwargs = dict(game=metadata["game"], sticky_actions=float(metadata.get("sticky_actions", 0.0)), size=size)
    if metadata.get("frame_skip") is not None:
        kwargs["frame_skip"] = int(metadata["frame_skip"])
    return EnvSpec(id=f"dreamgames/Real{metadata['game'].capitalize()}-v0", entry_point="envs.real:make",
                   kwargs=kwargs)


def export_minari(dataset: str | Path, dataset_id: str, *, root: str | Path | None = None,
                  author: str | None = None, description: str | None = None):
    """Write a dataset directory as the Minari dataset ``dataset_id``.

    Args:
        dataset: our dataset directory (``metadata.json`` + ``episodes/``).
        dataset_id: Minari's id, ``(namespace/)(env_name/)name-v<version>``, e.g.
            ``dreamgames/pong/random-v0``.
        root: Minari's datasets directory to write under (``None``: Minari's own default).
        author: recorded in the Minari metadata.
        description: recorded in the Minari metadata (``None``: one naming the game and size).

    Returns:
        The ``minari.MinariDataset`` written; ``minari.load_dataset(dataset_id)`` (with the
        same root) reads it back: observations ``(T+1, H, W, 3) uint8`` per episode,
        actions ``(T,) int64``, rewards ``(T,) float32``, terminations and truncations ``(T,) bool``.

    Raises:
        DatasetError: ``dataset`` is not a readable dataset (the message names the file).
        ValueError: a Minari dataset ``dataset_id`` already exists under the root.
        ImportError: Minari is not installed.
    """
    try:
        import minari
        from gymnasium import spaces
        from minari.data_collector import EpisodeBuffer
    except ImportError as e:
        raise ImportError("exporting to Minari needs the minari package: pip install 'dreamgames[minari]'") from e

    ds = EpisodeDataset(dataset, load=False)
    meta = ds.metadata
    h, w = (int(v) for v in meta["frame_size"])
    observation_space = spaces.Box(0, 255, (h, w, 3), dtype="uint8")
    action_space = spaces.Discrete(len(meta["action_meanings"]))
    if description is None:
        description = (f"{meta['game']} recorded by dreamgames: {h}x{w} RGB frames, frame skip "
                       f"{meta.get('frame_skip')}, actions {list(meta['action_meanings'])}")

    def buffers(start: int, stop: int) -> list:
        out = []
        for i in range(start, stop):  # read each file once, without keeping it: memory stays bounded
            ep = load_episode(ds.paths[i])
            ep.validate(frame_size=(h, w), num_actions=action_space.n, where=str(ds.paths[i]))
            seed = ep.info.get("vector_seed")
            out.append(EpisodeBuffer(id=i, seed=int(seed) if isinstance(seed, int) else None,
                                     observations=ep.frames, actions=ep.actions, rewards=ep.rewards,
                                     terminations=ep.terminated, truncations=ep.truncated))
        return out

    with _minari_root(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(code_permalink|author_email|eval_env|author|env_spec).*",
                                category=UserWarning)
        first = min(len(ds), CHUNK_EPISODES)
        out = minari.create_dataset_from_buffers(
            dataset_id, buffers(0, first), env=env_spec_for(meta), algorithm_name="dreamgames.recorders", author=author,
            description=description, action_space=action_space, observation_space=observation_space,
            data_format="hdf5", jpeg_encoding=False)
        for start in range(first, len(ds), CHUNK_EPISODES):
            out.update_dataset_from_buffer(buffers(start, min(start + CHUNK_EPISODES, len(ds))))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m recorders.export_minari DIR dataset_id=... [root=...] [author=...] [description=...]``."""
    parser = argparse.ArgumentParser(prog="python -m recorders.export_minari",
                                     description="Export a dataset directory to a Minari dataset.")
    parser.add_argument("dataset", help="dataset directory")
    parser.add_argument("settings", nargs="*", metavar="key=value",
                        help="dataset_id=... (required), root=..., author=..., description=...")
    args = parser.parse_args(argv)
    known = {"dataset_id", "root", "author", "description"}
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            parser.error(f"expected key=value with key in {sorted(known)}, got {item!r}")
        settings[key] = value
    if "dataset_id" not in settings:
        parser.error("dataset_id=... is required (e.g. dataset_id=dreamgames/pong/random-v0)")
    try:
        out = export_minari(args.dataset, settings.pop("dataset_id"), **settings)
    except (DatasetError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote Minari dataset {out.spec.dataset_id}: {out.total_episodes} episodes, {out.total_steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
