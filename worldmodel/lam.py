"""The latent-action model (LAM), after Genie (Bruce et al. 2024, "Genie: Generative
Interactive Environments", section 2.1).

The encoder sees ``x_{t+1}`` and ``history + 1`` frames up to ``x_t`` (and, with
``frame_differences``, their consecutive differences) and emits a discrete code ``z_t`` from
a small codebook (finite scalar quantization, Mentzer et al. 2023, "Finite Scalar
Quantization: VQ-VAE Made Simple"). The decoder rebuilds ``x_{t+1}`` from the frames up to
``x_t`` and the code only; it never sees ``x_{t+1}``, so the code has to carry the change.

FSQ has no codebook to collapse, but its input can: a quantizer input that stays inside one
rounding bin gives every transition the same code, which is what the first shipped Pong LAM
learned (perplexity 1.0). ``normalize_latent`` batch-normalises that input (without learned
scale), which keeps it spread over the bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.config import LAMConfig


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023, section 3).

    Each of ``len(levels)`` dimensions is bounded by ``tanh`` and rounded to one of
    ``levels[i]`` values, with a straight-through gradient. Codes are the mixed-radix
    integers of the per-dimension indices.
    """

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1])), dim=0)
        self.register_buffer("basis", basis, persistent=False)
        self.num_codes = int(torch.prod(lv).item())

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (..., len(levels))`` -> (quantized values in [-1, 1] ``(..., len(levels))``, codes ``(...)`` int64)."""
        bounded = self._bound(z)
        q = bounded + (torch.round(bounded) - bounded).detach()
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        idx = (torch.round(bounded) + half_width).long()
        return q / half_width, (idx * self.basis).sum(dim=-1)

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of the code numbering: ``(...)`` int64 -> ``(..., len(levels))`` in [-1, 1]."""
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        idx = (codes[..., None] // self.basis) % self.levels.long()
        return (idx - half_width) / half_width


def _differences(frames: torch.Tensor) -> torch.Tensor:
    """``(B, K, 3, H, W)`` -> consecutive differences stacked on channels ``(B, 3 (K-1), H, W)``,
    scaled up: a moving object's change is a few pixels of the frame."""
    return 4 * rearrange(frames[:, 1:] - frames[:, :-1], "b k c h w -> b (k c) h w")


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class LatentActionModel(nn.Module):
    """Encoder ``(x_{t-h..t}, x_{t+1}) -> z_t`` and decoder ``(x_{t-h..t}, z_t) -> x_{t+1}``.

    Frames are ``(B, K, 3, H, W)`` float in [-1, 1] stacked along channels, ``K = history + 2``
    for the encoder (the last one is ``x_{t+1}``) and ``history + 1`` for the decoder.
    """

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.history + 1
        enc, c_prev = [], 3 * (k + 1) + (3 * k if cfg.frame_differences else 0)
        for c in cfg.channels:
            enc.append(_down(c_prev, c))
            c_prev = c
        self.encoder = nn.Sequential(*enc)
        grid = cfg.frame_size // 2 ** len(cfg.channels)
        self.to_latent = nn.Linear(c_prev * (grid * grid if cfg.spatial_readout else 1), len(cfg.fsq_levels))
        self.latent_norm = (nn.BatchNorm1d(len(cfg.fsq_levels), affine=False) if cfg.normalize_latent
                            else nn.Identity())
        self.fsq = FSQ(cfg.fsq_levels)
        # Decoder: a small U-Net over the past frames, with the code injected at every scale.
        ch = cfg.decoder_channels or cfg.channels
        self.dec_down = nn.ModuleList()
        c_prev = 3 * k + (3 * (k - 1) if cfg.decoder_differences else 0)
        for c in ch:
            self.dec_down.append(_down(c_prev, c))
            c_prev = c
        self.code_proj = nn.ModuleList([nn.Linear(len(cfg.fsq_levels), 2 * c) for c in ch])
        self.dec_up = nn.ModuleList()
        ups = list(reversed(ch))
        for i, c in enumerate(ups):
            c_out = ups[i + 1] if i + 1 < len(ups) else 32
            self.dec_up.append(_up(c if i == 0 else 2 * c, c_out))
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames (B, history+2, 3, H, W)`` -> (FSQ values ``(B, d)``, codes ``(B,)`` int64)."""
        x = rearrange(frames, "b k c h w -> b (k c) h w")
        if self.cfg.frame_differences:
            x = torch.cat([x, _differences(frames)], dim=1)
        h = self.encoder(x)
        h = h.flatten(1) if self.cfg.spatial_readout else h.mean(dim=(-2, -1))
        return self.fsq(self.latent_norm(self.to_latent(h)))

    def decode(self, past: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``past (B, history+1, 3, H, W)`` and FSQ ``values (B, d)`` -> predicted ``x_{t+1} (B, 3, H, W)``."""
        h = rearrange(past, "b k c h w -> b (k c) h w")
        if self.cfg.decoder_differences:
            h = torch.cat([h, _differences(past)], dim=1)
        skips = []
        for down, proj in zip(self.dec_down, self.code_proj):
            h = down(h)
            scale, shift = proj(values)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
            skips.append(h)
        for i, up in enumerate(self.dec_up):
            h = up(h if i == 0 else torch.cat([h, skips[-1 - i]], dim=1))
        return past[:, -1] + self.out(h)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames (B, history+2, 3, H, W)`` -> (reconstructed ``x_{t+1} (B, 3, H, W)``, codes ``(B,)``)."""
        values, codes = self.encode(frames)
        return self.decode(frames[:, :-1], values), codes

    @torch.no_grad()
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        """Latent actions of clips.

        Args:
            frames: ``(T, 3, H, W)`` or a batch of clips ``(B, T, 3, H, W)``, float in [-1, 1].

        Returns:
            ``(T-1,)`` (or ``(B, T-1)``) int64 codes; ``z_t`` labels the transition
            ``x_t -> x_{t+1}``. The first frames, which lack history, repeat the first frame
            as their history.
        """
        if frames.dim() == 4:
            return self.infer(frames[None])[0]
        b, h = frames.shape[0], self.cfg.history
        padded = torch.cat([frames[:, :1].expand(-1, h, -1, -1, -1), frames], dim=1)
        windows = padded.unfold(1, h + 2, 1)                                    # (B, T-1, 3, H, W, K)
        codes = self.encode(rearrange(windows, "b n c h w k -> (b n) k c h w"))[1]
        return codes.view(b, -1)


def lam_loss(model: LatentActionModel, frames: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted reconstruction loss of ``x_{t+1}``.

    Args:
        frames: ``(B, history+2, 3, H, W)`` in [-1, 1].
        weights: ``(B, H, W)`` per-pixel weights (moving pixels weigh more).

    Returns:
        (scalar loss, codes ``(B,)``).
    """
    pred, codes = model(frames)
    err = F.mse_loss(pred, frames[:, -1], reduction="none").mean(dim=1)
    return (err * weights).sum() / weights.sum(), codes
