"""The dataset format: episodes of frames and actions on disk, and random training windows.

Layout of a dataset directory (format version 1)::

    my_dataset/
      metadata.json               # game, frame size, frame skip, action meanings, ...
      episodes/
        episode_000000.npz        # one episode, written atomically (tmp file + rename)
        episode_000001.npz
        ...

Each ``episode_*.npz`` is a plain NumPy archive (readable with ``numpy.load`` alone; deflated
at zlib level 1 by default, which writes ~3.5x faster than ``np.savez_compressed``'s level 6
for files ~1.7x larger, still ~80x smaller than raw Pong frames):

====================  ======================  =============================================
array                 shape, dtype            meaning
====================  ======================  =============================================
``frames``            (T+1, H, W, 3) uint8    observations x_0 .. x_T (RGB)
``actions``           (T,) int64              a_t, taken after observing x_t; it produces x_{t+1}
``rewards``           (T,) float32            r_t, received for the transition x_t -> x_{t+1}
``terminated``        (T,) bool               the game ended with x_{t+1}
``truncated``         (T,) bool               the episode was cut after x_{t+1} (time limit)
``info``              () str                  JSON: policy, seed, env index, wall time
====================  ======================  =============================================

T is the number of transitions; frames holds one more entry than the per-step arrays, the
final observation, which is Minari's convention. ``metadata.json`` holds::

    {"format": "dreamgame-dataset", "version": 1, "game": "pong", "frame_size": [64, 64],
     "frame_skip": 4, "sticky_actions": 0.0, "action_meanings": [...], "fps": 15,
     "policy": "...", "seed": 0}

A killed recorder loses only the episodes it had not finished: each file appears whole or
not at all (a ``*.tmp`` file may be left behind; readers ignore it, :func:`validate_dataset`
names it and the next :class:`DatasetWriter` removes it), and a later recording into the same
directory appends new episode numbers. ``docs/dataset_format.md`` shows how to read the
format with NumPy alone.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_NAME = "dreamgame-dataset"
FORMAT_VERSION = 1
REQUIRED_METADATA = ("game", "frame_size", "action_meanings")
NULL_ACTION = -1
"""Action value used for the (missing) action before an episode's first frame."""
NO_REWARD_SEEN = 2**31 - 1
"""The reward clock of a frame with no non-zero reward before it (:func:`frames_since_reward`)."""


def frames_since_reward(rewards: np.ndarray, start=NO_REWARD_SEEN) -> np.ndarray:
    """The reward clock of every frame of an episode: ``rewards (..., T)`` of its transitions ->
    ``(..., T + 1)`` int64, for frame ``k`` how many frames ago the last non-zero reward landed
    (0 on the frame a rewarded transition leads to; :data:`NO_REWARD_SEEN` before the first,
    saturating there).

    Args:
        start: the clock of frame 0, a scalar or ``(...)`` (default: none seen).

    This is what a dynamics model with ``reward_clock`` conditions on (the clock of the frame
    before the one it makes); the Simulator counts it from its reward model's verdicts.
    """
    hit = np.asarray(rewards) != 0
    clock = np.empty((*hit.shape[:-1], hit.shape[-1] + 1), np.int64)
    clock[..., 0] = np.minimum(start, NO_REWARD_SEEN)
    for k in range(hit.shape[-1]):
        clock[..., k + 1] = np.where(hit[..., k], 0, np.minimum(clock[..., k] + 1, NO_REWARD_SEEN))
    return clock


class DatasetError(ValueError):
    """A dataset directory or episode file is missing, corrupt or inconsistent."""


@dataclass
class Episode:
    """One episode in memory; see the module docstring for the arrays' meaning."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of transitions T (``len(frames) - 1``)."""
        return len(self.actions)

    def validate(self, *, frame_size: tuple[int, int] | None = None, num_actions: int | None = None,
                 where: str = "episode") -> None:
        """Check shapes, dtypes and ranges.

        Raises:
            DatasetError: naming ``where`` and the first inconsistency found.
        """
        f = self.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise DatasetError(f"{where}: frames must be uint8 (T+1, H, W, 3), got {f.dtype} {f.shape}")
        if frame_size is not None and tuple(f.shape[1:3]) != tuple(frame_size):
            raise DatasetError(f"{where}: frame size {f.shape[1:3]} differs from the dataset's {tuple(frame_size)}")
        t = len(f) - 1
        if t < 1:
            raise DatasetError(f"{where}: an episode needs at least 2 frames, got {len(f)}")
        for name, dtype in (("actions", np.int64), ("rewards", np.float32), ("terminated", np.bool_),
                            ("truncated", np.bool_)):
            a = getattr(self, name)
            if a.ndim == 1 and len(a) != t:
                raise DatasetError(f"{where}: mismatched lengths: {name} has {len(a)} steps but frames has "
                                   f"{len(f)} frames (T+1 frames need T={t} steps)")
            if a.dtype != dtype or a.shape != (t,):
                raise DatasetError(f"{where}: {name} must be {np.dtype(dtype)} ({t},), got {a.dtype} {a.shape}")
        if num_actions is not None and len(self.actions):
            lo, hi = int(self.actions.min()), int(self.actions.max())
            if lo < 0 or hi >= num_actions:
                bad = lo if lo < 0 else hi
                raise DatasetError(f"{where}: action {bad} out of range [0, {num_actions})")


def encode_episode(episode: Episode, *, compress: bool = True, level: int = 1, where: str = "episode") -> bytes:
    """One episode as the bytes of its ``.npz`` file (validated first).

    Args:
        episode: the episode.
        compress: deflate the arrays (``False``: store them as they are).
        level: zlib level 1 (fastest) to 9 (smallest) when compressing.
        where: names the episode in errors.

    Raises:
        DatasetError: the episode is inconsistent.
        ValueError: ``level`` outside 1..9.
    """
    if not (isinstance(level, int) and 1 <= level <= 9):
        raise ValueError(f"level must be a zlib level in 1..9, got {level!r}")
    episode.validate(where=where)
    arrays = dict(frames=episode.frames, actions=episode.actions, rewards=episode.rewards,
                  terminated=episode.terminated, truncated=episode.truncated,
                  info=np.array(json.dumps(episode.info)))
    buf = io.BytesIO()
    _write_npz(buf, arrays, level if compress else None)
    return buf.getvalue()


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``<path>.tmp``, flush it to disk, then rename it into place.

    A reader sees the whole file or none; only a killed process leaves a ``*.tmp`` behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def save_episode(path: str | Path, episode: Episode, *, compress: bool = True, level: int = 1) -> Path:
    """Write one episode atomically (:func:`encode_episode`, then :func:`write_atomically`).

    Args:
        path: the ``.npz`` file to write.
        episode: the episode (validated first).
        compress: deflate the arrays (``False``: store them as they are).
        level: zlib level 1 (fastest) to 9 (smallest) when compressing.

    Returns:
        The final path.

    Raises:
        DatasetError: the episode is inconsistent (nothing is written).
        ValueError: ``level`` outside 1..9.
    """
    return write_atomically(path, encode_episode(episode, compress=compress, level=level, where=str(path)))


def _write_npz(fh, arrays: dict[str, np.ndarray], level: int | None) -> None:
    """What ``np.savez`` / ``np.savez_compressed`` write, with a chosen zlib level (``None``: stored)."""
    compression = zipfile.ZIP_STORED if level is None else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(fh, "w", compression=compression, compresslevel=level, allowZip64=True) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_episode(path: str | Path) -> Episode:
    """Read one episode file.

    Raises:
        DatasetError: the file is missing, not a NumPy archive, truncated, or lacks an array.
    """
    path = Path(path)
    if path.exists() and not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: corrupt episode file (not a NumPy .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"frames", "actions", "rewards", "terminated", "truncated"} - set(z.files)
            if missing:
                raise DatasetError(f"{path}: missing arrays {sorted(missing)}")
            ep = Episode(frames=z["frames"], actions=z["actions"], rewards=z["rewards"],
                         terminated=z["terminated"], truncated=z["truncated"],
                         info=json.loads(str(z["info"])) if "info" in z.files else {})
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such episode file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: corrupt episode file ({type(e).__name__}: {e})") from None
    ep.validate(where=str(path))
    return ep


class DatasetWriter:
    """Appends episodes to a dataset directory, creating it (and its metadata) if needed.

    Args:
        root: dataset directory.
        metadata: dataset-level metadata (``game``, ``frame_size``, ``action_meanings``, ...).
            When the directory already holds a dataset, the keys that define the data
            (``game``, ``frame_size``, ``frame_skip``, ``action_meanings``) must match it.
        compress_level: zlib level of the episode files, 1 (fastest) to 9; 0 stores them
            uncompressed.

    Attributes:
        episodes_before: episode files that were already there when the writer opened.
        episodes_written, frames_written: what this writer added.

    Raises:
        DatasetError: appending to a dataset of another game, size or action set.
        ValueError: ``compress_level`` outside 0..9.
    """

    _IDENTITY_KEYS = ("game", "frame_size", "frame_skip", "action_meanings")

    def __init__(self, root: str | Path, metadata: dict, *, compress_level: int = 1):
        if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
            raise ValueError(f"compress_level must be in 0..9 (0: uncompressed), got {compress_level!r}")
        self.compress_level = compress_level
        self.root = Path(root)
        (self.root / "episodes").mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "metadata.json"
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}
        if meta_path.exists():
            old = read_metadata(self.root)
            for key in self._IDENTITY_KEYS:
                if key in meta and json.dumps(old.get(key)) != json.dumps(meta[key]):
                    raise DatasetError(f"{self.root}: cannot append, {key}={meta[key]!r} but the dataset has "
                                       f"{old.get(key)!r}")
        else:
            tmp = meta_path.with_suffix(".json.tmp")
            with open(tmp, "w") as fh:
                fh.write(json.dumps(meta, indent=2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, meta_path)
        for stale in (self.root / "episodes").glob("*.tmp"):
            stale.unlink()  # an episode a killed recorder did not finish
        existing = episode_paths(self.root)
        self.episodes_before = len(existing)
        self._next = 1 + max((int(p.stem.split("_")[1]) for p in existing), default=-1)
        self.frames_written = 0
        self.episodes_written = 0

    def write(self, episode: Episode) -> Path:
        """Write one episode under the next free number and return its path."""
        return self.write_encoded(encode_episode(episode, compress=self.compress_level > 0,
                                                 level=max(self.compress_level, 1),
                                                 where=str(self.root / "episodes" / f"episode_{self._next:06d}.npz")),
                                  frames=len(episode.frames))

    def write_encoded(self, data: bytes, *, frames: int) -> Path:
        """Write an episode already encoded by :func:`encode_episode` (``frames``: its frame
        count, for the tally) under the next free number and return its path."""
        path = write_atomically(self.root / "episodes" / f"episode_{self._next:06d}.npz", data)
        self._next += 1
        self.frames_written += frames
        self.episodes_written += 1
        return path


def episode_paths(root: str | Path) -> list[Path]:
    """The episode files of a dataset directory, in episode order (``[]`` if there are none)."""
    return sorted((Path(root) / "episodes").glob("episode_*.npz"))


def read_metadata(root: str | Path) -> dict:
    """Read ``metadata.json`` of a dataset directory.

    Raises:
        DatasetError: no dataset there, unreadable JSON, or another format.
    """
    root = Path(root)
    path = root / "metadata.json"
    if not path.exists():
        raise DatasetError(f"{path}: missing metadata, so {root} is not a dataset")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: format {meta.get('format')!r} v{meta.get('version')!r} is not "
                           f"{FORMAT_NAME!r} v{FORMAT_VERSION}")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise DatasetError(f"{path}: metadata lacks {missing}")
    return meta


class EpisodeDataset:
    """A dataset directory, read.

    Args:
        root: dataset directory.
        load: read every episode into memory now (``True``) or on first access.

    Attributes:
        metadata: the parsed ``metadata.json``.
        paths: the episode files, in episode order.

    Raises:
        DatasetError: the directory is not a dataset, holds no episodes, or an episode is corrupt
            (the message names the file).
    """

    def __init__(self, root: str | Path, *, load: bool = True):
        self.root = Path(root)
        self.metadata = read_metadata(self.root)
        self.paths = episode_paths(self.root)
        if not self.paths:
            raise DatasetError(f"{self.root}: the dataset holds no episodes")
        self._episodes: list[Episode | None] = [None] * len(self.paths)
        if load:
            for i in range(len(self.paths)):
                self[i]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Episode:
        if self._episodes[i] is None:
            ep = load_episode(self.paths[i])
            ep.validate(frame_size=tuple(self.metadata["frame_size"]),
                        num_actions=len(self.metadata["action_meanings"]), where=str(self.paths[i]))
            self._episodes[i] = ep
        return self._episodes[i]

    @property
    def num_transitions(self) -> int:
        return sum(len(self[i]) for i in range(len(self)))


def validate_dataset(root: str | Path) -> list[str]:
    """Check every file of a dataset; return one message per problem (empty: all good).

    Problems named: a missing, unreadable or foreign ``metadata.json``; no episodes; an
    episode file that is corrupt (not an archive, truncated, lacking an array), whose
    frames have the wrong dtype, shape or size, whose per-step arrays do not have one
    entry fewer than its frames, or whose actions fall outside the action set; and
    ``*.tmp`` files that an interrupted write left behind (readers ignore them, the next
    recording into the directory removes them). Every message starts with the file's path.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: no such dataset directory"]
    problems = [f"{p}: leftover temporary file of an interrupted write (readers ignore it; the next recording "
                f"removes it, or delete it)" for p in sorted([*root.glob("*.tmp"), *root.glob("episodes/*.tmp")])]
    try:
        meta = read_metadata(root)
    except DatasetError as e:
        return [str(e), *problems]
    paths = episode_paths(root)
    if not paths:
        problems.append(f"{root}: the dataset holds no episodes")
    for p in paths:
        try:
            load_episode(p).validate(frame_size=tuple(meta["frame_size"]),
                                     num_actions=len(meta["action_meanings"]), where=str(p))
        except DatasetError as e:
            problems.append(str(e))
    return problems


class WindowSampler:
    """Random fixed-length training windows from episodes in memory.

    A window starting at frame ``s`` holds, for slot ``i`` in ``range(window)``:

    - ``frames[i] = x_{s+i}``;
    - ``actions[i] = a_{s+i-1}``, the action that produced ``x_{s+i}`` (``NULL_ACTION`` for
      an episode's first frame);
    - ``rewards[i] = r_{s+i-1}`` and ``terminated[i] = terminated_{s+i-1}``, the reward and
      end flag of that same transition (0 and False for an episode's first frame);
    - ``since_reward[i]``: the reward clock of ``x_{s+i-1}`` (:func:`frames_since_reward`;
      :data:`NO_REWARD_SEEN` for an episode's first frame), what a model with a reward clock
      conditions ``x_{s+i}`` on.

    So every slot carries the action, reward and end flag of the transition into its frame,
    which is what the dynamics model conditions on and predicts.

    Args:
        episodes: episodes to sample from (each needs at least ``window`` frames to be used).
        window: frames per window.
        seed: seed of the sampler's generator.

    Raises:
        DatasetError: no episode is long enough.
    """

    def __init__(self, episodes: list[Episode], window: int, *, seed: int = 0):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.window = window
        self.episodes = [e for e in episodes if len(e.frames) >= window]
        if not self.episodes:
            raise DatasetError(f"no episode has the {window} frames a training window needs")
        starts = np.array([len(e.frames) - window + 1 for e in self.episodes], dtype=np.float64)
        self._p = starts / starts.sum()
        self._n_starts = starts.astype(np.int64)
        self.rng = np.random.default_rng(seed)
        self._clocks: dict[int, np.ndarray] = {}

    def window_at(self, episode_index: int, start: int) -> dict[str, np.ndarray]:
        """The window of ``episode_index`` beginning at frame ``start`` (see class docs)."""
        ep = self.episodes[episode_index]
        w = self.window
        frames = ep.frames[start:start + w]
        lo = start - 1
        actions = np.full(w, NULL_ACTION, np.int64)
        rewards = np.zeros(w, np.float32)
        terminated = np.zeros(w, np.bool_)
        src = slice(max(lo, 0), lo + w)
        dst = slice(max(-lo, 0), w)
        actions[dst], rewards[dst], terminated[dst] = ep.actions[src], ep.rewards[src], ep.terminated[src]
        if episode_index not in self._clocks:
            self._clocks[episode_index] = frames_since_reward(ep.rewards)
        since = np.full(w, NO_REWARD_SEEN, np.int64)
        since[dst] = self._clocks[episode_index][src]
        return dict(frames=frames, actions=actions, rewards=rewards, terminated=terminated, since_reward=since)

    def sample_one(self) -> dict[str, np.ndarray]:
        """One random window; every start position of every episode is equally likely."""
        e = int(self.rng.choice(len(self.episodes), p=self._p))
        return self.window_at(e, int(self.rng.integers(self._n_starts[e])))

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of random windows: ``frames (B, W, H, W', 3) uint8``, ``actions (B, W) int64``,
        ``rewards (B, W) float32``, ``terminated (B, W) bool``, ``since_reward (B, W) int64``."""
        return stack_windows([self.sample_one() for _ in range(batch_size)])


def stack_windows(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Windows of :meth:`WindowSampler.window_at` -> one batch, each array stacked on a new first axis."""
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def window_dataset(root: str | Path, window: int, *, seed: int = 0):
    """A PyTorch ``IterableDataset`` of random training windows from a dataset directory.

    Each item is the dict of :meth:`WindowSampler.window_at` (NumPy arrays; the default
    collate function stacks them into tensors). With several ``DataLoader`` workers, each
    worker draws from its own generator (``seed + worker id``).

    Raises:
        DatasetError: as :class:`EpisodeDataset` and :class:`WindowSampler`.
    """
    import torch.utils.data as tud

    ds = EpisodeDataset(root)
    episodes = [ds[i] for i in range(len(ds))]

    class _Windows(tud.IterableDataset):
        def __iter__(self):
            info = tud.get_worker_info()
            sampler = WindowSampler(episodes, window, seed=seed + (info.id if info else 0))
            while True:
                yield sampler.sample_one()

    return _Windows()
