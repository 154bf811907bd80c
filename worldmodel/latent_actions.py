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
        frames: ``(T, H, W, 3)`` uint8 frames, ``T >= 2``, or a batch of clips ``(B, T, H, W, 3)``.

    Returns:
        ``(T-1,)`` (or ``(B, T-1)``) int64: ``z_t`` is the latent action of the transition
        ``x_t -> x_{t+1}``.

    Raises:
        ValueError: the bundle has no LAM, or the frames have the wrong shape or dtype.
    """
    if model.lam is None:
        raise ValueError(f"the {model.game!r} bundle has no latent-action model")
    f = np.asarray(frames)
    size = model.lam_config.frame_size
    if f.dtype != np.uint8 or f.ndim not in (4, 5) or f.shape[-3:] != (size, size, 3) or f.shape[-4] < 2:
        raise ValueError(f"frames must be uint8 ([B,] T >= 2, {size}, {size}, 3), got {f.dtype} {f.shape}")
    device = next(model.lam.parameters()).device
    with torch.inference_mode():
        return model.lam.infer(frames_to_tensor(torch.as_tensor(f, device=device))).cpu().numpy().astype(np.int64)


def fit_action_codes(codes, actions, *, num_actions: int, num_codes: int) -> np.ndarray:
    """A key-to-code map from a few labelled transitions: for each of the game's actions, the
    latent code the LAM gave most often to the transitions made with it.

    Genie (Bruce et al. 2024, section 3.2) fits the inverse map, code -> action, on a few
    labelled steps to score its latent actions; playing a latent-conditioned dream with the
    game's keys needs this direction.

    Args:
        codes: ``(N,)`` int64 latent codes of ``N`` labelled transitions.
        actions: ``(N,)`` int64 the game's actions of the same transitions.
        num_actions: the game's action count.
        num_codes: the LAM's code count.

    Returns:
        ``(num_actions,)`` int64; an action absent from the labelled transitions gets the code
        seen most often overall.

    Raises:
        ValueError: no transitions, shapes that differ, or a code or action out of range.
    """
    codes, actions = np.asarray(codes).reshape(-1), np.asarray(actions).reshape(-1)
    if len(codes) == 0 or codes.shape != actions.shape:
        raise ValueError(f"need as many codes as actions (at least one), got {codes.shape} and {actions.shape}")
    for name, values, n in (("code", codes, num_codes), ("action", actions, num_actions)):
        bad = values[(values < 0) | (values >= n)]
        if bad.size:
            raise ValueError(f"{name} {int(bad[0])} out of range [0, {n})")
    counts = np.zeros((num_actions, num_codes), np.int64)
    np.add.at(counts, (actions, codes), 1)
    fallback = int(np.bincount(codes, minlength=num_codes).argmax())
    return np.where(counts.sum(1) > 0, counts.argmax(1), fallback).astype(np.int64)
