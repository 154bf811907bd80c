"""Tokenizers: frames <-> latent tokens behind one interface.

- :class:`PatchTokenizer`: plain patchify of pixels (ViT's patch embedding without the
  projection). Lossless, so a one-pixel ball survives; nothing to train.
- :class:`ConvTokenizer`: a small convolutional autoencoder, 64x64x3 -> 8x8xC, with a
  tanh-bounded latent; needed for larger frames.

Both map ``frames (B, T, 3, H, W) float in [-1, 1]`` to ``tokens (B, T, N, D)`` and back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.config import TokenizerConfig


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3) uint8`` -> ``(..., 3, H, W) float32`` in [-1, 1]."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W) float`` in [-1, 1] -> ``(..., H, W, 3) uint8`` (clamped, rounded)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


class PatchTokenizer(nn.Module):
    """Patchify: each ``p x p x 3`` patch of pixels is one token of size ``3 p^2``."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.p = cfg.patch_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> ``(B, T, N, 3 p^2)`` with ``N = (H/p)(W/p)``."""
        return rearrange(x, "b t c (h p) (w q) -> b t (h w) (p q c)", p=self.p, q=self.p)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, T, N, 3 p^2)`` -> ``(B, T, 3, H, W)``."""
        g = self.cfg.grid
        return rearrange(z, "b t (h w) (p q c) -> b t c (h p) (w q)", h=g, w=g, p=self.p, q=self.p)

    def pixel_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss weights ``(B, T, H, W)`` -> per-token-element weights ``(B, T, N, D)``."""
        return self.encode(w.unsqueeze(2).expand(-1, -1, 3, -1, -1))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class ConvTokenizer(nn.Module):
    """Convolutional autoencoder: stride-2 stages down to a ``grid x grid x C`` latent.

    The latent is bounded by ``tanh`` so that the diffusion model sees values in [-1, 1],
    like pixels.
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        chans = cfg.hidden_channels
        enc, c_prev = [], 3
        for c in chans:
            enc += [_conv_block(c_prev, c), nn.Conv2d(c, c, 4, stride=2, padding=1)]
            c_prev = c
        enc += [nn.Conv2d(c_prev, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(cfg.latent_channels, chans[-1], 3, padding=1)]
        c_prev = chans[-1]
        for c in reversed(chans):
            dec += [_conv_block(c_prev, c), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)]
            c_prev = c
        dec += [nn.Conv2d(c_prev, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> ``(B, T, N, C)`` in [-1, 1]."""
        b = x.shape[0]
        z = torch.tanh(self.encoder(rearrange(x, "b t c h w -> (b t) c h w")))
        return rearrange(z, "(b t) c h w -> b t (h w) c", b=b)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, T, N, C)`` -> ``(B, T, 3, H, W)``."""
        b, g = z.shape[0], self.cfg.grid
        x = self.decoder(rearrange(z, "b t (h w) c -> (b t) c h w", h=g, w=g))
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)

    def pixel_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights ``(B, T, H, W)`` -> per-token weights ``(B, T, N, 1)`` (max over each cell)."""
        b = w.shape[0]
        pooled = F.max_pool2d(rearrange(w, "b t h w -> (b t) 1 h w"), self.cfg.downsample)
        return rearrange(pooled, "(b t) 1 h w -> b t (h w) 1", b=b)


def build_tokenizer(cfg: TokenizerConfig) -> PatchTokenizer | ConvTokenizer:
    """The tokenizer ``cfg.kind`` names."""
    return PatchTokenizer(cfg) if cfg.kind == "patch" else ConvTokenizer(cfg)


def moving_mask(frames: torch.Tensor, threshold: float = 0.02, radius: int = 1) -> torch.Tensor:
    """Pixels that changed since the previous frame, and their surroundings.

    Args:
        frames: ``(B, T, 3, H, W)`` in [-1, 1].
        threshold: smallest change (on the [-1, 1] scale) that counts as moving.
        radius: the mask is dilated by this many pixels (a ``2 radius + 1`` square), so that
            a moving object's surroundings count too: where it could have gone and did not.

    Returns:
        ``(B, T, H, W)`` float mask in {0, 1}; the first frame of each window is all 0.

    Raises:
        ValueError: ``radius`` negative.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    diff = (frames[:, 1:] - frames[:, :-1]).abs().amax(dim=2)
    moving = (diff > threshold).float()
    b = moving.shape[0]
    if radius:
        moving = F.max_pool2d(rearrange(moving, "b t h w -> (b t) 1 h w"), 2 * radius + 1, stride=1, padding=radius)
        moving = rearrange(moving, "(b t) 1 h w -> b t h w", b=b)
    return torch.cat([torch.zeros_like(moving[:, :1]), moving], dim=1)
