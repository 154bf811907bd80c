"""Import action-free video into the dataset format, each transition labelled by a latent-action model.

Run it with Hydra::

    python -m recorders.import_video src=gameplay.mp4 checkpoint=pong out=data/pong-video
    python -m recorders.import_video src=frames_dir/ checkpoint=runs/x/bundle out=data/clips max_frames=5000

``src`` is a video file (MP4, GIF, anything imageio reads) or a folder of image files (read
in name order). Frames are resized to the checkpoint's frame size by exact area averaging
(the resize the recorders use, so a one-pixel ball survives), their transitions are
labelled by the checkpoint's latent-action model (:func:`worldmodel.infer_latent_actions`),
and the clip is written as one episode (or several of ``episode_frames``) whose actions are
latent codes: ``metadata.json`` has ``action_source: "latent"`` and one meaning ``code<k>``
per code, rewards are 0, the last transition of each episode is marked truncated. A dynamics
model trained on such a dataset is conditioned on latent actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImportConfig:
    """Attributes:
        src: a video file or a folder of images.
        checkpoint: a bundle with a latent-action model (shipped name or directory).
        out: dataset directory (created, or appended to).
        episode_frames: cut the clip into episodes of at most this many frames.
        max_frames: read at most this many frames (0: all).
        every: keep one frame in ``every`` (to match the game's frame skip).
    """

    src: str = ""
    checkpoint: str = "pong"
    out: str = "data/imported"
    episode_frames: int = 2000
    max_frames: int = 0
    every: int = 1

    def __post_init__(self):
        if not self.src:
            raise ValueError("src= is required: a video file or a folder of images")
        if self.episode_frames < 2 or self.every < 1 or self.max_frames < 0:
            raise ValueError("episode_frames must be >= 2, every >= 1, max_frames >= 0")


def read_frames(src: str | Path, *, max_frames: int = 0, every: int = 1) -> np.ndarray:
    """Read ``(T, H, W, 3)`` uint8 RGB frames from a video file or a folder of images.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: no frames, or frames of different sizes in a folder.
    """
    import imageio.v3 as iio

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"no video or folder at {src}")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every]
        if max_frames:
            files = files[:max_frames]
        frames = [iio.imread(p) for p in files]
        shapes = {f.shape[:2] for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"images in {src} have different sizes: {sorted(shapes)}")
    else:
        frames = []
        for i, f in enumerate(iio.imiter(src)):
            if i % every == 0:
                frames.append(f)
                if max_frames and len(frames) >= max_frames:
                    break
    if not frames:
        raise ValueError(f"no frames in {src}")
    out = []
    for f in frames:
        f = np.asarray(f)
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=-1)
        out.append(f[..., :3].astype(np.uint8))
    return np.stack(out)


def import_video(cfg: ImportConfig) -> list[Path]:
    """Import ``cfg.src`` into ``cfg.out``; returns the episode files written.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_frames`; the checkpoint has no LAM.
        recorders.dataset.DatasetError: ``cfg.out`` holds a dataset of another game or code set.
    """
    from envs.wrappers import AreaResizer
    from recorders.dataset import DatasetWriter, Episode
    from worldmodel.bundle import load
    from worldmodel.latent_actions import infer_latent_actions

    model = load(cfg.checkpoint)
    if model.lam is None:
        raise ValueError(f"checkpoint {cfg.checkpoint!r} has no latent-action model to label the video with")
    size = model.lam_config.frame_size
    raw = read_frames(cfg.src, max_frames=cfg.max_frames, every=cfg.every)
    frames = AreaResizer(raw.shape[1], raw.shape[2], size, size)(raw) if raw.shape[1:3] != (size, size) else raw
    codes = int(np.prod(model.lam_config.fsq_levels))
    writer = DatasetWriter(cfg.out, dict(
        game=model.game, frame_size=[size, size], frame_skip=None, action_meanings=[f"code{k}" for k in range(codes)],
        fps=model.fps, action_source="latent", source_video=str(cfg.src), labelled_by=str(cfg.checkpoint)))
    written = []
    for start in range(0, len(frames) - 1, cfg.episode_frames - 1):
        clip = frames[start:start + cfg.episode_frames]
        if len(clip) < 2:
            break
        t = len(clip) - 1
        truncated = np.zeros(t, bool)
        truncated[-1] = True
        written.append(writer.write(Episode(
            frames=clip, actions=infer_latent_actions(model, clip), rewards=np.zeros(t, np.float32),
            terminated=np.zeros(t, bool), truncated=truncated,
            info={"source_frames": [start, start + len(clip)]})))
    print(f"imported {len(frames)} frames from {cfg.src} as {len(written)} episode(s) into {cfg.out}")
    return written


def main() -> None:
    """Hydra entry point (see the module docstring)."""
    from recorders.dataset import DatasetError
    from worldmodel.bundle import CheckpointError
    from worldmodel.cli import hydra_command

    hydra_command(__file__, "import_video", lambda cfg: import_video(ImportConfig(**cfg)),
                  (ValueError, FileNotFoundError, DatasetError, CheckpointError))


if __name__ == "__main__":
    main()
