"""Recording what was played: dataset episodes (the recorders' format) and a video of the window."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from recorders.dataset import DatasetWriter, Episode

VIDEO_SUFFIXES = (".mp4", ".gif")


class EpisodeRecorder:
    """Writes played segments into a dataset directory, one episode file per segment.

    A segment begins with :meth:`start` (a reset, a re-sync, a new real episode) and ends
    when a step reports the game's end (``terminated`` or ``truncated``), when the next
    segment starts, or at :meth:`flush`; a segment cut by the player is marked
    ``truncated`` on its last step. Each episode is written atomically when its segment
    ends (:class:`recorders.dataset.DatasetWriter`), so a killed window loses only the
    segment in flight. Segments without a single step are dropped (an episode needs two
    frames).

    Args:
        root: dataset directory (created, or appended to if it holds the same game).
        metadata: the dataset's ``metadata.json`` fields (``game``, ``frame_size``,
            ``action_meanings``, ...; see :mod:`recorders.dataset`).
        info: fields added to every episode's ``info``.

    Raises:
        recorders.dataset.DatasetError: ``root`` holds a dataset of another game, frame size
            or action set.
    """

    def __init__(self, root: str | Path, metadata: dict, *, info: dict | None = None):
        self.writer = DatasetWriter(root, metadata)
        self.info = dict(info or {})
        self._frames: list[np.ndarray] = []
        self._actions: list[int] = []
        self._rewards: list[float] = []
        self._terminated: list[bool] = []
        self._truncated: list[bool] = []

    @property
    def episodes_written(self) -> int:
        """Episodes written so far."""
        return self.writer.episodes_written

    def start(self, frame: np.ndarray, *, reason: str = "restart") -> None:
        """Begin a segment at ``frame (H, W, 3) uint8``, writing the open one first."""
        self.flush(reason=reason)
        self._frames = [np.array(frame, np.uint8)]

    def add(self, action: int, frame: np.ndarray, reward: float = 0.0, *, terminated: bool = False,
            truncated: bool = False) -> None:
        """Record one step: ``action`` taken after the latest frame produced ``frame (H, W, 3) uint8``.

        A step that ends the game (``terminated`` or ``truncated``) writes the segment; the
        next one needs :meth:`start`.

        Raises:
            RuntimeError: no segment was started.
        """
        if not self._frames:
            raise RuntimeError("EpisodeRecorder.add before start(frame)")
        self._frames.append(np.array(frame, np.uint8))
        self._actions.append(int(action))
        self._rewards.append(float(reward))
        self._terminated.append(bool(terminated))
        self._truncated.append(bool(truncated))
        if terminated or truncated:
            self._write(reason="terminated" if terminated else "truncated")

    def flush(self, *, reason: str = "stopped") -> Path | None:
        """Write the open segment now (its last step marked ``truncated``); returns its path, if any."""
        if not self._actions:
            self._frames = []
            return None
        self._truncated[-1] = True
        return self._write(reason=reason)

    def _write(self, *, reason: str) -> Path:
        episode = Episode(frames=np.stack(self._frames), actions=np.asarray(self._actions, np.int64),
                          rewards=np.asarray(self._rewards, np.float32),
                          terminated=np.asarray(self._terminated, np.bool_),
                          truncated=np.asarray(self._truncated, np.bool_),
                          info={**self.info, "ended_by": reason, "recorded_at": time.time()})
        self._frames, self._actions, self._rewards, self._terminated, self._truncated = [], [], [], [], []
        return self.writer.write(episode)


def check_video_path(path: str | Path) -> Path:
    """Check that a video can be written to ``path``: a ``.mp4`` (needs imageio-ffmpeg) or ``.gif``.

    Raises:
        ValueError: another suffix, or ``.mp4`` without the ``imageio-ffmpeg`` package.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video={str(path)!r}: the file name must end in one of {VIDEO_SUFFIXES}")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(f"video={str(path)!r}: writing MP4 needs imageio-ffmpeg (pip install 'imageio[ffmpeg]'), "
                         f"or ask for a .gif")
    return path


class VideoRecorder:
    """Writes frames to an MP4 (H.264 through imageio-ffmpeg) or an animated GIF (Pillow).

    An MP4 is streamed to ffmpeg frame by frame; a GIF is held in memory until :meth:`close`
    (about 1.5 MB a frame for an 8x side-by-side window), so long sessions want MP4.

    Args:
        path: ``.mp4`` or ``.gif`` file; its directory is created.
        fps: frames per second of the video.

    Raises:
        ValueError: as :func:`check_video_path`, or ``fps <= 0``.
    """

    def __init__(self, path: str | Path, *, fps: float):
        import imageio.v2 as imageio

        self.path = check_video_path(path)
        if fps <= 0:
            raise ValueError(f"video fps must be > 0, got {fps}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix.lower() == ".mp4":
            # Frames are 64 * scale pixels a side, a multiple of 16, so no resizing happens.
            self._writer = imageio.get_writer(self.path, format="FFMPEG", fps=fps, codec="libx264",
                                              pixelformat="yuv420p", macro_block_size=16)
        else:
            self._writer = imageio.get_writer(self.path, format="GIF", mode="I", duration=1000 / fps, loop=0)
        self.frames_written = 0

    def add(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 frame."""
        self._writer.append_data(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (an MP4 is unplayable until closed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
