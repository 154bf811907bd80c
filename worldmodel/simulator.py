"""The Simulator: a batch of dreams stepped frame by frame with a bounded KV cache."""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.bundle import ModelBundle
from worldmodel.diffusion import add_noise, euler_step, sampling_schedule
from worldmodel.onnx_backend import OnnxStepper, graph_path, onnx_available
from worldmodel.tokenizer import frames_to_tensor, tensor_to_frames

BACKENDS = ("auto", "torch", "onnx")


class Simulator:
    """Runs ``batch_size`` dreams of one model in lock step.

    Each step denoises one new frame per dream in ``sampler.steps`` passes that attend to
    the KV cache of the past frames, then writes the finished frame into the cache once
    (at the sampler's context noise level). The cache is a ring of
    ``context_frames - 1`` frames, so a step costs the same at step 10 and step 10,000.

    Args:
        model: a loaded :class:`~worldmodel.bundle.ModelBundle`.
        batch_size: number of dreams B.
        backend: ``"torch"`` (PyTorch on the model's device), ``"onnx"`` (onnxruntime, the
            CPU or CUDA execution provider by the model's device, exporting the graph on first
            use; see :mod:`worldmodel.onnx_backend`) or ``"auto"``: onnx for a model on a GPU
            whose graph is already exported (``python -m worldmodel.export``), else torch (on
            the CPU torch measured faster at small batches). The chosen one is in :attr:`backend`.
        seed: seeds the sampling noise; the same seed and inputs give the same dream.
        sampling_steps: denoising steps per frame (default: the bundle's sampler).
        context_noise: noise level of frames written into the cache (default: the bundle's).

    Raises:
        ValueError: unknown backend, or a batch size below 1.
        worldmodel.onnx_backend.OnnxUnavailable: ``backend="onnx"`` where it cannot run.
    """

    def __init__(self, model: ModelBundle, batch_size: int = 1, backend: str = "auto", seed: int = 0, *,
                 sampling_steps: int | None = None, context_noise: float | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {BACKENDS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size = model, batch_size
        self.device = next(model.dynamics.parameters()).device
        self.backend, self._onnx = self._choose_backend(backend)
        self.steps = model.sampler.steps if sampling_steps is None else sampling_steps
        self.schedule = sampling_schedule(self.steps, model.sampler.noise_shift)
        self.context_noise = model.sampler.context_noise if context_noise is None else context_noise
        self.quantize = model.sampler.quantize_frames and model.tokenizer_config.kind == "patch"
        self.change_threshold = model.sampler.change_threshold
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.cache = model.dynamics.new_cache(batch_size, device=self.device)
        tc = model.tokenizer_config
        self.frame_shape = (tc.frame_size, tc.frame_size, 3)
        self.token_shape = (tc.tokens_per_frame, tc.token_dim)
        self.num_actions = model.dynamics_config.num_actions
        self.step_count = np.zeros(batch_size, np.int64)
        self.last_frames: np.ndarray | None = None
        # Tokens of each dream's latest frame as written into the cache: the next frame is
        # conditioned on them (frame stacking) besides attending to the cache.
        self.prev_tokens = torch.zeros((batch_size, 1, *self.token_shape), device=self.device)
        # The same frame's clean tokens: the previous-frame skip predicts a correction of them.
        self.prev_clean = torch.zeros_like(self.prev_tokens)
        self.prev_shown = torch.zeros((batch_size, 1, *self.frame_shape), dtype=torch.uint8, device=self.device)

    def _choose_backend(self, backend: str):
        if backend == "auto":
            # onnx on a GPU where this checkpoint's graph is exported already (exporting takes
            # seconds to a minute, which "auto" must not spend behind the caller's back). On
            # the CPU torch was the faster at batch 1 and 8 (python -m worldmodel.bench, README).
            ready = (self.device.type == "cuda" and onnx_available(self.device)
                     and graph_path(self.model.dynamics).exists())
            backend = "onnx" if ready else "torch"
        if backend == "torch":
            return "torch", None
        return "onnx", OnnxStepper(self.model.dynamics, self.device)

    def _pass(self, x, levels, acts, positions, *, write: bool):
        """One cached pass of the dynamics model over the new frame, by the chosen backend."""
        if self._onnx is not None:
            return self._onnx(x, levels, acts, positions, self.cache, write=write, prev_tokens=self.prev_tokens,
                              skip_tokens=self.prev_clean)
        return self.model.dynamics(x, levels, acts, positions, cache=self.cache, write=write,
                                   prev_tokens=self.prev_tokens, skip_tokens=self.prev_clean)

    # -- input checks at the boundary -------------------------------------------------------------
    def _check_actions(self, actions, shape: tuple[int, ...], what: str) -> torch.Tensor:
        a = np.asarray(actions)
        if a.shape != shape:
            raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
        bad = a[(a < 0) | (a >= self.num_actions)]
        if bad.size:
            raise ValueError(f"action {int(bad[0])} out of range [0, {self.num_actions})")
        return torch.as_tensor(a, dtype=torch.long, device=self.device)

    def _check_frames(self, frames, batch: int) -> torch.Tensor:
        f = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if f.dtype != np.uint8 or f.ndim != 5 or f.shape[0] != batch or f.shape[2:] != self.frame_shape:
            raise ValueError(f"frames must be uint8 ({batch}, T, {', '.join(map(str, self.frame_shape))}), "
                             f"got {f.dtype} {f.shape}")
        return torch.as_tensor(f, device=self.device)

    # -- the loop -------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, frames, actions, env_ids=None) -> np.ndarray:
        """Prime dreams with real frames.

        Args:
            frames: ``(B', T, H, W, 3)`` uint8 real frames, ``T >= 1``.
            actions: ``(B', T-1)`` int64, the action taken after each frame but the last.
            env_ids: which dreams to reset (``B'`` indices); ``None`` resets all (``B' = B``).

        Returns:
            ``(B, H, W, 3)`` uint8, the latest frame of every dream.

        Raises:
            ValueError: wrong frame shape or dtype, wrong action shape, action out of range.
        """
        ids = np.arange(self.batch_size) if env_ids is None else np.asarray(env_ids, np.int64).reshape(-1)
        if env_ids is not None:
            bad = ids[(ids < 0) | (ids >= self.batch_size)]
            if bad.size or len(np.unique(ids)) != len(ids):
                raise ValueError(f"env_ids must be distinct indices in [0, {self.batch_size}), got {ids.tolist()}")
        frames_t = self._check_frames(frames, len(ids))
        t = frames_t.shape[1]
        if t < 1:
            raise ValueError("frames must hold at least one frame per dream (T >= 1), got T = 0")
        acts = self._check_actions(actions, (len(ids), t - 1), "actions")
        keep = min(t, self.cache.slots)                       # older frames would fall out of the window
        frames_t, t0 = frames_t[:, t - keep:], t - keep
        prev = torch.full((len(ids), 1), -1, dtype=torch.long, device=self.device)
        cond = torch.cat([prev, acts], dim=1)[:, t0:]         # slot j is conditioned on a_{j-1}
        clean = self.model.tokenizer.encode(frames_to_tensor(frames_t))
        levels = torch.full(cond.shape, self.context_noise, device=self.device)
        tokens = self._noised(clean, levels)
        positions = torch.arange(t0, t, device=self.device).expand(len(ids), -1)
        if env_ids is None:
            self.cache.clear()
            self.model.dynamics(tokens, levels, cond, positions, cache=self.cache, write=True)
            self.prev_tokens = tokens[:, -1:].clone()
            self.prev_clean = clean[:, -1:].clone()
            self.prev_shown = frames_t[:, -1:].clone()
        else:
            ids_t = torch.as_tensor(ids, device=self.device)
            self._reset_subset(ids_t, tokens, levels, cond, positions)
            self.prev_tokens[ids_t] = tokens[:, -1:]
            self.prev_clean[ids_t] = clean[:, -1:]
            self.prev_shown[ids_t] = frames_t[:, -1:]
        if self.last_frames is None:
            self.last_frames = np.zeros((self.batch_size, *self.frame_shape), np.uint8)
        self.last_frames[ids] = frames_t[:, -1].cpu().numpy()
        self.step_count[ids] = 0
        return self.last_frames.copy()

    def _reset_subset(self, ids: torch.Tensor, tokens, levels, cond, positions) -> None:
        """Prime a subset of dreams in a scratch cache aligned with the shared ring, then copy it in."""
        scratch = self.model.dynamics.new_cache(len(ids), device=self.device)
        scratch.next_slot = self.cache.next_slot
        self.model.dynamics(tokens, levels, cond, positions, cache=scratch, write=True)
        # The shared ring advanced by one slot per step; the scratch ring by `keep` slots from
        # the same start. Rotate it so its newest frame sits just before the shared write slot.
        shift = (self.cache.next_slot - scratch.next_slot) % self.cache.slots
        n = self.cache.tokens_per_frame
        self.cache.k[:, ids] = torch.roll(scratch.k, shift * n, dims=3)
        self.cache.v[:, ids] = torch.roll(scratch.v, shift * n, dims=3)
        self.cache.frame_pos[ids] = torch.roll(scratch.frame_pos, shift, dims=1)

    def _noised(self, tokens: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if self.context_noise <= 0:
            return tokens
        return add_noise(tokens, levels, torch.randn(tokens.shape, generator=self.generator, device=self.device))

    @torch.inference_mode()
    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every dream by one frame.

        Args:
            actions: ``(B,)`` int64, the action each dream takes after its latest frame.

        Returns:
            ``frames (B, H, W, 3) uint8``, ``rewards (B,) float32`` (the predicted reward's
            sign), ``terminated (B,) bool``.

        Raises:
            RuntimeError: called before :meth:`reset`.
            ValueError: wrong shape or an action out of range.
        """
        if self.last_frames is None:
            raise RuntimeError("call reset(frames, actions) before step()")
        b = self.batch_size
        acts = self._check_actions(actions, (b,), "actions")[:, None]                 # (B, 1)
        positions = (self.cache.last_position() + 1)[:, None]                          # (B, 1)
        x = torch.randn((b, 1, *self.token_shape), generator=self.generator, device=self.device)
        for s, s_next in zip(self.schedule[:-1], self.schedule[1:]):
            levels = torch.full((b, 1), s, device=self.device)
            x0 = self._pass(x, levels, acts, positions, write=False).x0
            x = euler_step(x, x0, s, s_next)
        shown = tensor_to_frames(self.model.tokenizer.decode(x))                       # (B, 1, H, W, 3) uint8
        if self.quantize:
            if self.change_threshold:
                small = (shown.short() - self.prev_shown.short()).abs().amax(-1, keepdim=True) < self.change_threshold
                shown = torch.where(small, self.prev_shown, shown)
            x = self.model.tokenizer.encode(frames_to_tensor(shown))
            self.prev_shown = shown
        levels = torch.full((b, 1), self.context_noise, device=self.device)
        written = self._noised(x, levels)
        out = self._pass(written, levels, acts, positions, write=True)
        self.prev_tokens, self.prev_clean = written, x
        frames = shown[:, 0].cpu().numpy()
        rewards, terminated = out.reward_and_end()
        rewards = rewards[:, 0].cpu().numpy().astype(np.float32)
        terminated = terminated[:, 0].cpu().numpy()
        self.last_frames = frames
        self.step_count += 1
        return frames, rewards, terminated
