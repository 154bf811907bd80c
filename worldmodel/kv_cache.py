"""A bounded KV cache: a ring buffer of the keys and values of the last few frames."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the last ``slots`` frames for every layer, preallocated.

    Frames are written into slots in ring order, so memory and the cost of attending over
    the cache stay constant however long the episode runs. Each slot remembers the absolute
    frame index it holds (for the rotary position embedding) or -1 when empty.

    Args:
        depth: number of transformer layers.
        batch: batch size B.
        heads: attention heads H.
        slots: frames kept (the model's context window minus the frame being generated).
        tokens_per_frame: tokens per frame N.
        head_dim: per-head width.
        device, dtype: where and how the tensors live.

    Attributes:
        k, v: ``(depth, B, H, slots * N, head_dim)``.
        frame_pos: ``(B, slots)`` int64 absolute frame index per slot, -1 if empty.
    """

    def __init__(self, *, depth: int, batch: int, heads: int, slots: int, tokens_per_frame: int, head_dim: int,
                 device=None, dtype=torch.float32):
        self.depth, self.batch, self.slots, self.tokens_per_frame = depth, batch, slots, tokens_per_frame
        shape = (depth, batch, heads, slots * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.frame_pos = torch.full((batch, slots), -1, dtype=torch.long, device=device)
        self.next_slot = 0

    def clear(self, env_mask: torch.Tensor | None = None) -> None:
        """Forget every frame (or only those of the envs where ``env_mask (B,) bool`` is set)."""
        if env_mask is None:
            self.frame_pos.fill_(-1)
            self.next_slot = 0
        else:
            self.frame_pos[env_mask] = -1

    def token_frames(self) -> torch.Tensor:
        """``(B, slots * N)`` int64: the frame index of each cached token (-1: empty slot)."""
        return self.frame_pos.repeat_interleave(self.tokens_per_frame, dim=1)

    def write_index(self, frames: int) -> torch.Tensor:
        """Token indices the next ``frames`` frames (at most ``slots``) are written to."""
        slot = (self.next_slot + torch.arange(frames)) % self.slots
        n = self.tokens_per_frame
        return (slot[:, None] * n + torch.arange(n)[None, :]).reshape(-1).to(self.k.device)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys/values ``(B, H, F*N, Dh)`` of ``F`` frames (the last ``slots`` of them if more)."""
        n = self.tokens_per_frame
        frames = min(k.shape[2] // n, self.slots)
        idx = self.write_index(frames)
        self.k[layer, :, :, idx] = k[:, :, -frames * n:]
        self.v[layer, :, :, idx] = v[:, :, -frames * n:]

    def commit(self, positions: torch.Tensor) -> None:
        """Advance the ring after every layer has written; ``positions (B, F)`` are the frames' indices."""
        frames = min(positions.shape[1], self.slots)
        slot = (self.next_slot + torch.arange(frames)) % self.slots
        self.frame_pos[:, slot.to(self.frame_pos.device)] = positions[:, -frames:]
        self.next_slot = int((self.next_slot + frames) % self.slots)

    def last_position(self) -> torch.Tensor:
        """``(B,)`` index of the newest cached frame (-1 where empty)."""
        return self.frame_pos.max(dim=1).values

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
