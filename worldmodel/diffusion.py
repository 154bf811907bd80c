"""Diffusion maths: the noise schedule, diffusion-forcing noise levels, and the sampler.

The forward process is the linear (rectified-flow / flow-matching) interpolation

    x_s = (1 - s) * x_0 + s * eps,    eps ~ N(0, I),    s in [0, 1]

(Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023,
"Rectified Flow"), where ``s`` is the noise level: 0 is the clean frame, 1 pure noise.
The network predicts the clean frame ``x_0`` (x0-prediction), which at this scale trains
where eps- and v-prediction stayed noise.

Diffusion forcing (Chen et al. 2024, "Diffusion Forcing: Next-token Prediction Meets
Full-Sequence Diffusion"): every frame of a training window gets its own independent
noise level, so one causal model learns to denoise a frame given a past at any noise level.
"""

from __future__ import annotations

import torch


def add_noise(x0: torch.Tensor, noise_levels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Noise clean tokens to per-frame levels.

    Args:
        x0: ``(B, T, N, D)`` clean tokens.
        noise_levels: ``(B, T)`` levels in [0, 1].
        eps: ``(B, T, N, D)`` standard normal noise.

    Returns:
        ``(B, T, N, D)`` noisy tokens ``(1 - s) x0 + s eps``.
    """
    s = noise_levels[..., None, None]
    return (1.0 - s) * x0 + s * eps


def shift_noise_levels(s: torch.Tensor | float, shift: float):
    """Shift noise levels towards 1: ``s' = shift s / (1 + (shift - 1) s)``.

    The time-step shift of Esser et al. 2024 ("Scaling Rectified Flow Transformers", eq. 23).
    Predicting the next frame from nearly pure noise is where the action matters (at low
    noise the noisy frame itself gives the answer away), so training and sampling spend
    more of their effort there. ``shift = 1`` is the identity.
    """
    return shift * s / (1 + (shift - 1) * s)


def sample_noise_levels(batch: int, frames: int, *, context_prob: float = 0.5, context_max: float = 0.1,
                        shift: float = 1.0, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Independent per-frame noise levels for diffusion-forcing training.

    Each frame independently is, with probability ``context_prob``, "context-like"
    (``s ~ U(0, context_max)``, as the clean or lightly noised past is at inference) and
    otherwise a shifted uniform level (:func:`shift_noise_levels`). Biasing the past towards
    low levels puts it in the regime the KV-cached sampler uses, while every (past, present)
    level pair still occurs.

    Returns:
        ``(batch, frames)`` float32 levels in [0, 1].
    """
    u = torch.rand(batch, frames, generator=generator, device=device)
    ctx = torch.rand(batch, frames, generator=generator, device=device) < context_prob
    return torch.where(ctx, u * context_max, shift_noise_levels(u, shift))


def sampling_schedule(steps: int, shift: float = 1.0) -> list[float]:
    """Noise levels visited by the sampler: ``steps + 1`` values from 1 down to 0, evenly
    spaced and then shifted like the training levels (:func:`shift_noise_levels`).

    Raises:
        ValueError: ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    return [float(shift_noise_levels(1.0 - i / steps, shift)) for i in range(steps + 1)]


def euler_step(x_s: torch.Tensor, x0_hat: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    """One deterministic step of the probability-flow ODE, from level ``s`` to ``s_next``.

    With the linear path the ODE's velocity is ``(x_s - x0_hat) / s``, so an Euler step is
    ``x_{s'} = x0_hat + (s' / s) (x_s - x0_hat)``: the DDIM update (Song et al. 2021,
    "Denoising Diffusion Implicit Models", eq. 12 with eta = 0) for this schedule.

    Args:
        x_s: ``(..., D)`` tokens at level ``s > 0``.
        x0_hat: the model's clean-frame prediction, same shape.
        s, s_next: current and next levels, ``1 >= s > s_next >= 0``.
    """
    return x0_hat + (s_next / s) * (x_s - x0_hat)


def sample_palette_colours(scores: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                           *, shared_pixels: bool = True) -> torch.Tensor:
    """Draw each pixel's palette colour from its scores at a temperature (Gumbel-max).

    ``argmax_k (scores_k + temperature * g_k)`` with ``g`` standard Gumbel noise draws colour
    ``k`` with probability ``softmax(scores / temperature)_k`` (the Gumbel-max trick; Gumbel
    1954, as used for categorical sampling by Maddison et al. 2014, "A* Sampling"). At
    ``temperature = 0`` it is the argmax. Below 1 the distribution is sharpened: a pixel the
    model is sure of keeps its colour, while an event the model gives a fair chance on every
    frame (a serve whose exact frame it cannot tell) is drawn on some frame instead of on none,
    which a per-frame argmax never does.

    With ``shared_pixels`` one Gumbel draw per token and colour serves all of the token's
    pixels, so the pixels of a patch that hesitate between the same two colours change
    together (an object appears whole, not as scattered pixels); each pixel still picks
    among its own scores.

    Args:
        scores: ``(B, F, N, P, K)`` float colour scores (log-probabilities up to a constant)
            of the ``P`` pixels of each of ``N`` tokens.
        temperature: >= 0.
        generator: the noise's random generator (same seed, same colours).
        shared_pixels: one draw per token and colour (True) or per pixel and colour.

    Returns:
        ``(B, F, N, P)`` int64 colour indices.

    Raises:
        ValueError: a negative temperature.
    """
    shape = (*scores.shape[:-2], 1, scores.shape[-1]) if shared_pixels else scores.shape
    return gumbel_max(scores, temperature, generator, noise_shape=shape)


def gumbel_max(scores: torch.Tensor, temperature: float, generator: torch.Generator | None = None, *,
               noise_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``argmax_k (scores_k + temperature * g_k)``, ``g`` standard Gumbel noise: a draw from
    ``softmax(scores / temperature)`` over the last axis (the Gumbel-max trick), the argmax at 0.

    Args:
        scores: ``(..., K)`` float logits.
        temperature: >= 0.
        generator: the noise's random generator.
        noise_shape: the noise's shape, broadcast against ``scores`` (default: ``scores``').

    Returns:
        ``(...)`` int64 indices.

    Raises:
        ValueError: a negative temperature.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if temperature == 0:
        return scores.argmax(-1)
    shape = scores.shape if noise_shape is None else noise_shape
    u = torch.rand(shape, generator=generator, device=scores.device).clamp_(1e-20, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    return (scores.float() + temperature * gumbel).argmax(-1)
