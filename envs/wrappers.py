"""Observation wrappers that turn any RGB-rendering Gymnasium game into 64x64 uint8 frames."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def area_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Weights of an exact area-averaging resize along one axis.

    Output pixel ``i`` covers the input interval ``[i * r, (i + 1) * r)`` with
    ``r = in_size / out_size``; each input pixel contributes in proportion to the length of
    its overlap. This is OpenCV's ``INTER_AREA`` for down-scaling: a one-pixel object is
    averaged into the output, never skipped as point sampling or bilinear filtering can.

    Returns:
        ``(out_size, in_size)`` float32 matrix whose rows sum to 1.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    ratio = in_size / out_size
    edges = np.arange(out_size + 1) * ratio
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(in_size)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def area_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 frames by area averaging.

    Args:
        frame: uint8 RGB frames.
        height, width: output size in pixels.

    Returns:
        uint8 frames of shape ``(..., height, width, 3)``, rounded to nearest.

    Raises:
        ValueError: the input is not uint8 with 3 channels.
    """
    if frame.dtype != np.uint8 or frame.ndim not in (3, 4) or frame.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (B, H, W, 3) frames, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[-3], frame.shape[-2]
    if (h, w) == (height, width):
        return frame
    wy = area_resize_matrix(h, height)
    wx = area_resize_matrix(w, width)
    out = np.einsum("yh,...hwc,xw->...yxc", wy, frame.astype(np.float32), wx, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class AreaResizeObservation(gym.ObservationWrapper):
    """Resize RGB observations to ``(height, width, 3)`` uint8 by area averaging.

    Observation Space:
        ``Box(0, 255, (height, width, 3), uint8)``.
    """

    def __init__(self, env: gym.Env, height: int = 64, width: int = 64):
        super().__init__(env)
        shape = env.observation_space.shape
        if shape is None or len(shape) != 3 or shape[-1] != 3:
            raise ValueError(f"AreaResizeObservation needs (H, W, 3) observations, got {shape}")
        self.height, self.width = height, width
        self._wy = area_resize_matrix(shape[0], height)
        self._wx = area_resize_matrix(shape[1], width)
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        out = np.einsum("yh,hwc,xw->yxc", self._wy, observation.astype(np.float32), self._wx, optimize=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
