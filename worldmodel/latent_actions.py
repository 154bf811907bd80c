"""Labelling video with latent actions."""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.bundle import ModelBundle
from worldmodel.tokenizer import frames_to_tensor


def infer_latent_actions(model: ModelBundle, frames) -> np.ndarray:
    """Latent action codes of a clip, from the bundle's latent-action model.

    Args:
        model: a bundle with a trained LAM (``model.lam``).
        frames: ``(T, H, W, 3)`` uint8 frames, ``T >= 2``.

    Returns:
        ``(T-1,)`` int64: ``z_t`` is the latent action of the transition ``x_t -> x_{t+1}``.

    Raises:
        ValueError: the bundle has no LAM, or the frames have the wrong shape or dtype.
    """
    if model.lam is None:
        raise ValueError(f"the {model.game!r} bundle has no latent-action model")
    f = np.asarray(frames)
    size = model.lam_config.frame_size
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[1:] != (size, size, 3) or len(f) < 2:
        raise ValueError(f"frames must be uint8 (T >= 2, {size}, {size}, 3), got {f.dtype} {f.shape}")
    device = next(model.lam.parameters()).device
    with torch.inference_mode():
        return model.lam.infer(frames_to_tensor(torch.as_tensor(f, device=device))).cpu().numpy().astype(np.int64)
