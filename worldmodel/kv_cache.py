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
        pass_frames: new frames a pass may carry without copying the cache: behind the ring,
            each layer's buffer has room for their keys and values, so that attention reads
            ring and new frames as one view (:meth:`keys_and_values`); a longer pass concatenates.

    Attributes:
        k, v: ``(depth, B, H, slots * N, head_dim)`` views of the ring.
        frame_pos: ``(B, slots)`` int64 absolute frame index per slot, -1 if empty.
    """

    def __init__(self, *, depth: int, batch: int, heads: int, slots: int, tokens_per_frame: int, head_dim: int,
                 device=None, dtype=torch.float32, pass_frames: int = 2):
        self.depth, self.batch, self.slots, self.tokens_per_frame = depth, batch, slots, tokens_per_frame
        ring = slots * tokens_per_frame
        shape = (depth, batch, heads, ring + pass_frames * tokens_per_frame, head_dim)
        self._k = torch.zeros(shape, device=device, dtype=dtype)
        self._v = torch.zeros(shape, device=device, dtype=dtype)
        self.k, self.v = self._k[:, :, :, :ring], self._v[:, :, :, :ring]
        self.frame_pos = torch.full((batch, slots), -1, dtype=torch.long, device=device)
        self.next_slot = 0
        self._indices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}   # by (next_slot, frames)

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

    def keys_and_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's keys and values of ``layer`` followed by a pass's own ``k, v (B, H, L, Dh)``:
        ``(B, H, slots * N + L, Dh)`` each, views of the buffers when the pass fits behind the
        ring (the cost of copying ``L`` tokens, not the whole ring). Valid until the next call."""
        ring, end = self.k.shape[3], self.k.shape[3] + k.shape[2]
        if end > self._k.shape[3]:
            return torch.cat([self.k[layer], k.to(self.k.dtype)], dim=2), torch.cat([self.v[layer], v.to(self.v.dtype)], dim=2)
        self._k[layer, :, :, ring:end] = k
        self._v[layer, :, :, ring:end] = v
        return self._k[layer, :, :, :end], self._v[layer, :, :, :end]

    def _ring_indices(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots ``(frames,)`` the next ``frames`` frames (at most ``slots``) go to and their
        token indices ``(frames * N,)``, on the cache's device; built once per ring position and
        frame count (every layer of every pass asks)."""
        key = (self.next_slot, frames)
        found = self._indices.get(key)
        if found is None:
            slot = ((self.next_slot + torch.arange(frames)) % self.slots).to(self.k.device)
            n = self.tokens_per_frame
            tokens = (slot[:, None] * n + torch.arange(n, device=self.k.device)).reshape(-1)
            found = self._indices[key] = (slot, tokens)
        return found

    def write_index(self, frames: int) -> torch.Tensor:
        """Token indices the next ``frames`` frames (at most ``slots``) are written to."""
        return self._ring_indices(frames)[1]

    def write(self, layer: int | None, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys/values ``(B, H, F*N, Dh)`` of ``F`` frames (the last ``slots`` of them if
        more) for ``layer``, or ``(depth, B, H, F*N, Dh)`` for every layer at once (``layer=None``).

        Raises:
            ValueError: ``k`` or ``v`` without the 4 (one layer) or 5 (every layer) dimensions.
        """
        dims = 5 if layer is None else 4
        if k.dim() != dims or v.dim() != dims:
            raise ValueError(f"KVCache.write(layer={layer}) takes {dims}-D keys and values, got {tuple(k.shape)} "
                             f"and {tuple(v.shape)}")
        n = self.tokens_per_frame
        frames = min(k.shape[-2] // n, self.slots)
        idx = self.write_index(frames)
        keys, values = (self.k, self.v) if layer is None else (self.k[layer], self.v[layer])
        keys[..., idx, :] = k[..., -frames * n:, :]
        values[..., idx, :] = v[..., -frames * n:, :]

    def commit(self, positions: torch.Tensor) -> None:
        """Advance the ring after every layer has written; ``positions (B, F)`` are the frames' indices."""
        frames = min(positions.shape[1], self.slots)
        self.frame_pos[:, self._ring_indices(frames)[0]] = positions[:, -frames:]
        self.next_slot = int((self.next_slot + frames) % self.slots)

    def holds_window_before(self, positions: torch.Tensor) -> bool:
        """Whether the new frames ``positions (B, F)`` int64 are consecutive and every dream's ring
        holds exactly the ``slots`` frames before its first one, oldest in the next slot to be
        written (the steady state of a rollout, after ``slots`` frames)."""
        age = (torch.arange(self.slots, device=self.frame_pos.device) - self.next_slot) % self.slots
        held = (self.frame_pos == positions[:, :1] - self.slots + age) & (self.frame_pos >= 0)
        consecutive = positions[:, 1:] == positions[:, :-1] + 1
        return bool(held.all() & consecutive.all())

    def last_position(self) -> torch.Tensor:
        """``(B,)`` index of the newest cached frame (-1 where empty)."""
        return self.frame_pos.max(dim=1).values

    @property
    def nbytes(self) -> int:
        return self._k.numel() * self._k.element_size() * 2
