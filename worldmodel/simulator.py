"""The Simulator: a batch of dreams stepped frame by frame with a bounded KV cache."""

from __future__ import annotations

import copy

import numpy as np
import torch

from recorders.dataset import NO_REWARD_SEEN, frames_since_reward
from worldmodel.bundle import ModelBundle
from worldmodel.device import fast_bfloat16
from worldmodel.diffusion import add_noise, euler_step, gumbel_max, sample_palette_colours, sampling_schedule
from worldmodel.dynamics import DynamicsModel
from worldmodel.onnx_backend import OnnxStepper, auto_prefers_onnx, graph_path, runtime_available
from worldmodel.tokenizer import frames_to_tensor, tensor_to_frames

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Simulator:
    """Runs ``batch_size`` dreams of one model in lock step.

    Each step denoises one new frame per dream in ``sampler.steps`` passes that attend to
    the KV cache of the past frames. The frame shown last is written into the cache (at the
    sampler's context noise level) by the first of those passes, which carries it beside the
    new frame: one pass per sampling step, none extra for the cache. The cache is a ring of
    ``context_frames - 1`` frames, so a step costs the same at step 10 and step 10,000.
    Rewards and episode ends come from the bundle's reward model
    (:mod:`worldmodel.reward_model`; a bfloat16 copy at ``precision="bfloat16"``) on the frame
    shown last and the new one; a dynamics
    model with a reward clock (``DynamicsConfig.reward_clock``) is conditioned on how many
    frames ago the reward model last saw a non-zero reward. A dynamics model with event codes
    (``DynamicsConfig.event_codes``) draws each new frame's code from its learned prior before
    the frame, from the two frames before it, the action and the clock; primed frames get the
    code their posterior reads from the real frames.

    Args:
        model: a loaded :class:`~worldmodel.bundle.ModelBundle`.
        batch_size: number of dreams B.
        backend: ``"torch"`` (PyTorch on the model's device), ``"onnx"`` (onnxruntime, the
            CPU or CUDA execution provider by the model's device, exporting the graph on first
            use; see :mod:`worldmodel.onnx_backend`) or ``"auto"``: onnx where the model's
            graph is already exported (``python -m worldmodel.export``) and
            :func:`~worldmodel.onnx_backend.auto_prefers_onnx` says so (a GPU; a CPU without
            AMX at batch sizes up to 8, where onnx measured faster at batch 1 and torch at
            batch 64), else torch. The chosen one is in :attr:`backend`.
        seed: seeds the sampling noise; the same seed and inputs give the same dream.
        sampling_steps: denoising steps per frame (default: the bundle's sampler).
        context_noise: noise level of frames written into the cache (default: the bundle's).
        precision: the torch backend's arithmetic for the dynamics and reward models:
            ``"float32"``, ``"bfloat16"`` (bfloat16 copies of both models and a bfloat16 KV
            cache; the palette and the frames stay float32) or ``"auto"``: bfloat16 where the
            device multiplies it natively (:func:`worldmodel.device.fast_bfloat16`: a CPU with
            AMX or AVX512-BF16, a CUDA GPU from Ampere on) and the backend is torch, else
            float32. The models are trained under bfloat16 autocast where it is native.
            The choice is in :attr:`precision`; ``"bfloat16"`` with ``backend="auto"`` picks torch.
        temperature: colour sampling temperature of a palette model (default: the bundle's
            sampler; 0 = each pixel's most likely colour; see
            :attr:`~worldmodel.config.SamplerConfig.temperature`). Above 0 it runs on the torch
            backend, which ``backend="auto"`` then picks; the noise comes from ``seed``
            (:func:`resolve_temperature`).
        event_temperature: a model with event codes draws each frame's code from its prior at
            this temperature (default: the bundle's sampler; 0 = the most likely code), in torch
            on either backend (the onnx graph takes the drawn codes as an input).

    Raises:
        ValueError: unknown backend or precision, bfloat16 or a temperature asked of the onnx
            backend, a temperature for a model without a palette or below 0,
            an event temperature below 0, or a batch size below 1.
        worldmodel.onnx_backend.OnnxUnavailable: ``backend="onnx"`` where it cannot run.
    """

    def __init__(self, model: ModelBundle, batch_size: int = 1, backend: str = "auto", seed: int = 0, *,
                 sampling_steps: int | None = None, context_noise: float | None = None, precision: str = "auto",
                 temperature: float | None = None, event_temperature: float | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size = model, batch_size
        self.device = next(model.dynamics.parameters()).device
        check_precision(precision)
        self.temperature = resolve_temperature(model, temperature)
        self.event_temperature = resolve_event_temperature(model, event_temperature)
        self.backend = resolve_backend(model, batch_size, backend, precision, temperature=self.temperature)
        self._onnx = OnnxStepper(model.dynamics, self.device) if self.backend == "onnx" else None
        self.precision = resolve_precision(precision, self.device, self.backend)
        dtype = PRECISIONS[self.precision]
        # The torch model primes the cache on either backend; the onnx graph reads keys in the
        # checkpoint's order of dimensions, so it gets the model itself (float32).
        self.dynamics = model.dynamics if self._onnx else _inference_copy(model.dynamics, dtype)
        reward = model.reward_model
        self.reward_model = reward if reward is None or dtype == torch.float32 else copy.deepcopy(reward).to(dtype)
        self.steps = model.sampler.steps if sampling_steps is None else sampling_steps
        self.schedule = sampling_schedule(self.steps, model.sampler.noise_shift)
        self.context_noise = model.sampler.context_noise if context_noise is None else context_noise
        self.quantize = model.sampler.quantize_frames and model.tokenizer_config.kind == "patch"
        self.change_threshold = model.sampler.change_threshold
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # The onnx graph takes the ring as an input: no room behind it, so it stays one contiguous block.
        self.cache = self.dynamics.new_cache(batch_size, device=self.device, dtype=dtype,
                                             pass_frames=0 if self._onnx else 2)
        tc = model.tokenizer_config
        self.frame_shape = (tc.frame_size, tc.frame_size, 3)
        self.token_shape = (tc.tokens_per_frame, tc.token_dim)
        self.num_actions = model.dynamics_config.num_actions
        self.step_count = np.zeros(batch_size, np.int64)
        self._primed = False                  # reset() has run
        # Each dream's latest frame is "pending": shown, but its keys and values are not in the
        # cache yet. The next step's first pass commits it to the cache and denoises the new
        # frame together (DynamicsModel.forward), one pass where two would do the same work.
        tokens = torch.zeros((batch_size, 1, *self.token_shape), device=self.device)
        self.pending_tokens = tokens          # as written into the cache (at the context noise level)
        self.pending_clean = tokens.clone()   # clean: the previous-frame skip corrects these
        self.pending_prev = tokens.clone()    # the frame before it, as written (frame stacking)
        self.pending_prev_clean = tokens.clone()   # and clean: an event prior reads it
        self.pending_action = torch.full((batch_size, 1), -1, dtype=torch.long, device=self.device)
        # The event code the pending frame was made with (-1: none), for a model with event codes.
        self.evented = bool(model.dynamics_config.event_codes)
        self.pending_event = self.pending_action.clone()
        self.pending_position = torch.zeros((batch_size, 1), dtype=torch.long, device=self.device)
        self.pending_shown = torch.zeros((batch_size, 1, *self.frame_shape), dtype=torch.uint8, device=self.device)
        # The reward clock: frames since the last non-zero reward, of the pending frame
        # (``since``) and of the frame before it (``pending_since``, what the pending frame was
        # made with); only a model with a reward clock reads them.
        self.clocked = bool(model.dynamics_config.reward_clock)
        self.since = torch.full((batch_size, 1), NO_REWARD_SEEN, dtype=torch.long, device=self.device)
        self.pending_since = self.since.clone()

    @property
    def last_frames(self) -> np.ndarray | None:
        """``(B, H, W, 3)`` uint8: each dream's latest frame (None before :meth:`reset`)."""
        return self.pending_shown[:, 0].cpu().numpy() if self._primed else None

    @property
    def positions(self) -> np.ndarray:
        """``(B,)`` int64: the absolute frame index of each dream's latest frame."""
        return self.pending_position[:, 0].cpu().numpy()

    def _pass(self, tokens, levels, actions, positions, *, write: int, prev_tokens, skip_tokens, since_reward,
              events):
        """One cached pass of the dynamics model, by the chosen backend: the last frame's prediction."""
        inputs = dict(cache=self.cache, write=write, prev_tokens=prev_tokens, skip_tokens=skip_tokens, predict=1,
                      since_reward=since_reward, events=events)
        if self.temperature == 0:
            run = self._onnx if self._onnx is not None else self.dynamics
            return run(tokens, levels, actions, positions, **inputs)
        # Sampled colours: the torch backend (resolve_backend), which returns the scores.
        scores = self.dynamics(tokens, levels, actions, positions, logits=True, **inputs)   # (B, 1, N, P, K)
        colours = sample_palette_colours(scores, self.temperature, self.generator)         # (B, 1, N, P)
        return self.dynamics.colour_tokens(colours, tokens.dtype)

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
    def reset(self, frames, actions, env_ids=None, *, rewards=None, since_reward=None) -> np.ndarray:
        """Prime dreams with real frames.

        Args:
            frames: ``(B', T, H, W, 3)`` uint8 real frames, ``T >= 1``.
            actions: ``(B', T-1)`` int64, the action taken after each frame but the last.
            env_ids: which dreams to reset (``B'`` indices); ``None`` resets all (``B' = B``).
            rewards: ``(B', T-1)`` the rewards of those transitions (default none), and
            since_reward: ``(B',)`` int64, how many frames before the first frame the last
                non-zero reward landed (default: none seen). Only a model with a reward clock
                reads them; they set its clock as the frames' episode had it.

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
        clock = self._primed_clock(len(ids), t, rewards, since_reward)   # (B', T + 1): slot k made with clock[k]
        keep = min(t, self.cache.slots + 1)                   # cached frames + the pending one
        before = frames_t[:, t - keep - 1:t - keep] if t > keep else None   # the frame before the kept ones
        frames_t, t0 = frames_t[:, t - keep:], t - keep
        prev = torch.full((len(ids), 1), -1, dtype=torch.long, device=self.device)
        cond = torch.cat([prev, acts], dim=1)[:, t0:]         # slot j is conditioned on a_{j-1}
        clean = self.model.tokenizer.encode(frames_to_tensor(frames_t))
        levels = torch.full(cond.shape, self.context_noise, device=self.device)
        tokens = self._noised(clean, levels)
        positions = torch.arange(t0, t, device=self.device).expand(len(ids), -1)
        cache = self.cache if env_ids is None else self.dynamics.new_cache(len(ids), device=self.device,
                                                                            dtype=self.cache.k.dtype)
        if env_ids is None:
            cache.clear()
        else:
            cache.next_slot = self.cache.next_slot
        events = self._primed_events(before, clean, cond, clock[:, t0:t]) if self.evented else None
        if keep > 1:                                          # all but the newest frame go into the cache
            self.dynamics(tokens[:, :-1], levels[:, :-1], cond[:, :-1], positions[:, :-1], cache=cache,
                          write=keep - 1, since_reward=clock[:, t0:t - 1],
                          **({"events": events[:, :-1]} if self.evented else {}))
        if env_ids is not None:
            self._copy_into_ring(torch.as_tensor(ids, device=self.device), cache)
        ids_t = slice(None) if env_ids is None else torch.as_tensor(ids, device=self.device)
        self.pending_tokens[ids_t] = tokens[:, -1:]
        self.pending_clean[ids_t] = clean[:, -1:]
        self.pending_prev[ids_t] = tokens[:, -2:-1] if keep > 1 else 0.0
        self.pending_prev_clean[ids_t] = clean[:, -2:-1] if keep > 1 else 0.0
        if self.evented:
            self.pending_event[ids_t] = events[:, -1:]
        self.pending_action[ids_t] = cond[:, -1:]
        self.pending_position[ids_t] = positions[:, -1:]
        self.pending_shown[ids_t] = frames_t[:, -1:]
        self.pending_since[ids_t] = clock[:, -2:-1]
        self.since[ids_t] = clock[:, -1:]
        self._primed = True
        self.step_count[ids] = 0
        return self.last_frames

    def _primed_events(self, before: torch.Tensor | None, clean: torch.Tensor, cond: torch.Tensor,
                       clock: torch.Tensor) -> torch.Tensor:
        """``(B', T')`` int64: the event code of each primed frame, the most likely one by the posterior
        from the frame before it (``before (B', 1, H, W, 3)`` uint8 for the first, or None: none
        known, code -1), for ``clean (B', T', N, D)`` tokens, ``cond`` and ``clock (B', T')``."""
        first = (torch.zeros_like(clean[:, :1]) if before is None
                 else self.model.tokenizer.encode(frames_to_tensor(before)))
        previous = torch.cat([first, clean[:, :-1]], dim=1)
        codes = self.dynamics.event_scores("posterior", previous, clean, cond,
                                           clock if self.clocked else None).argmax(-1)
        if before is None:
            codes[:, 0] = -1
        return codes

    def _primed_clock(self, batch: int, t: int, rewards, since_reward) -> torch.Tensor:
        """``(B', T + 1)`` int64: the reward clock each primed frame was made with (slot ``k``:
        the clock of frame ``k - 1``, "none seen" for the first), then the last frame's own."""
        r = np.zeros((batch, t - 1)) if rewards is None else np.asarray(rewards, dtype=np.float64)
        if r.shape != (batch, t - 1):
            raise ValueError(f"rewards must have shape {(batch, t - 1)}, got {r.shape}")
        first = np.full(batch, NO_REWARD_SEEN) if since_reward is None else np.asarray(since_reward)
        if first.shape != (batch,) or (first.size and not np.issubdtype(first.dtype, np.integer)) or (first < 0).any():
            raise ValueError(f"since_reward must be {batch} integers >= 0, got {since_reward!r}")
        clock = np.concatenate([np.full((batch, 1), NO_REWARD_SEEN), frames_since_reward(r, first)], axis=1)
        return torch.as_tensor(clock, device=self.device)

    def _copy_into_ring(self, ids: torch.Tensor, scratch) -> None:
        """Copy a subset's scratch cache, primed from the shared ring's write slot, into the ring.

        The shared ring advanced by one slot per step; the scratch ring by the primed frames
        from the same start. Rotate it so its newest frame sits just before the shared write slot.
        """
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
        if not self._primed:
            raise RuntimeError("call reset(frames, actions) before step()")
        b = self.batch_size
        acts = self._check_actions(actions, (b,), "actions")[:, None]                 # (B, 1)
        positions = self.pending_position + 1                                          # (B, 1)
        ctx = torch.full((b, 1), self.context_noise, device=self.device)
        x = torch.randn((b, 1, *self.token_shape), generator=self.generator, device=self.device)
        event = self._drawn_events(acts) if self.evented else None                    # (B, 1)
        for i, (s, s_next) in enumerate(zip(self.schedule[:-1], self.schedule[1:])):
            level = torch.full((b, 1), s, device=self.device)
            if i == 0:   # commit the pending frame and denoise the new one in the same pass
                x0 = self._pass(torch.cat([self.pending_tokens, x], dim=1), torch.cat([ctx, level], dim=1),
                                torch.cat([self.pending_action, acts], dim=1),
                                torch.cat([self.pending_position, positions], dim=1), write=1,
                                prev_tokens=self.pending_prev, skip_tokens=self.pending_clean,
                                since_reward=torch.cat([self.pending_since, self.since], dim=1) if self.clocked else None,
                                events=torch.cat([self.pending_event, event], dim=1) if self.evented else None)
            else:
                x0 = self._pass(x, level, acts, positions, write=0, prev_tokens=self.pending_tokens,
                                skip_tokens=self.pending_clean, since_reward=self.since if self.clocked else None,
                                events=event)
            x = euler_step(x, x0, s, s_next)
        shown = tensor_to_frames(self.model.tokenizer.decode(x))                       # (B, 1, H, W, 3) uint8
        if self.quantize:
            if self.change_threshold:
                small = (shown.short() - self.pending_shown.short()).abs().amax(-1, keepdim=True) < self.change_threshold
                shown = torch.where(small, self.pending_shown, shown)
            x = self.model.tokenizer.encode(frames_to_tensor(shown))
        rewards, terminated = self._reward_and_end(shown[:, 0], acts[:, 0])
        self.pending_prev, self.pending_prev_clean = self.pending_tokens, self.pending_clean
        self.pending_tokens, self.pending_clean = self._noised(x, ctx), x
        if self.evented:
            self.pending_event = event
        self.pending_action, self.pending_position, self.pending_shown = acts.clone(), positions, shown
        if self.clocked:
            hit = torch.as_tensor(rewards != 0, device=self.device)[:, None]
            self.pending_since, self.since = self.since, torch.where(hit, 0, (self.since + 1).clamp(max=NO_REWARD_SEEN))
        self.step_count += 1
        return shown[:, 0].cpu().numpy(), rewards, terminated

    def _drawn_events(self, actions: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` int64: each dream's event code for its next frame, drawn from the prior at
        ``event_temperature`` given the pending frame and the one before it, ``actions (B, 1)``
        and the clock."""
        scores = self.dynamics.event_scores("prior", self.pending_prev_clean, self.pending_clean, actions,
                                            self.since if self.clocked else None)
        return gumbel_max(scores, self.event_temperature, self.generator)

    def _reward_and_end(self, shown: torch.Tensor, actions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The reward model's verdict on ``pending -> shown``: rewards ``(B,)`` float32, terminated ``(B,)`` bool
        (zeros and False for a bundle without a reward model)."""
        if self.reward_model is None:
            return np.zeros(self.batch_size, np.float32), np.zeros(self.batch_size, bool)
        rewards, terminated = self.reward_model.predict(self.pending_shown[:, 0], shown, actions)
        return rewards.cpu().numpy().astype(np.float32), terminated.cpu().numpy()


def resolve_temperature(model: ModelBundle, temperature: float | None = None) -> float:
    """The colour sampling temperature a :class:`Simulator` runs: ``temperature``, or the bundle's.

    Raises:
        ValueError: a temperature below 0, or above 0 for a model without a palette.
    """
    t = model.sampler.temperature if temperature is None else float(temperature)
    if not t >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if t > 0 and not model.dynamics_config.palette_size:
        raise ValueError(f"temperature={t} needs a palette model (palette_size > 0); this dynamics model "
                         "predicts tokens")
    return t


def resolve_event_temperature(model: ModelBundle, event_temperature: float | None = None) -> float:
    """The temperature a :class:`Simulator` draws event codes at: ``event_temperature``, or the bundle's.

    Raises:
        ValueError: a temperature below 0.
    """
    t = model.sampler.event_temperature if event_temperature is None else float(event_temperature)
    if not t >= 0:
        raise ValueError(f"event_temperature must be >= 0, got {event_temperature!r}")
    return t


def torch_only(model: ModelBundle, temperature: float = 0.0) -> str | None:
    """Why ``model`` at colour sampling ``temperature`` cannot run on the onnx graph, or None if it can:
    the graph draws each pixel's most likely colour."""
    if temperature > 0:
        return (f"temperature={temperature} runs on the torch backend only; the onnx graph draws each pixel's most "
                "likely colour")
    return None


def resolve_backend(model: ModelBundle, batch_size: int, backend: str = "auto", precision: str = "auto", *,
                    temperature: float = 0.0) -> str:
    """The backend a :class:`Simulator` of ``batch_size`` dreams with these settings runs.

    ``"torch"`` and ``"onnx"`` are returned as given; ``"auto"`` is torch for a colour
    sampling ``temperature`` above 0 (the onnx graph draws the most likely colours), else onnx
    where :func:`~worldmodel.onnx_backend.auto_prefers_onnx` says so, onnxruntime is installed and
    the model's graph is exported already (exporting takes seconds to a minute, which "auto"
    must not spend behind the caller's back), else torch.

    Raises:
        ValueError: an unknown backend, or onnx with a temperature above 0.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {BACKENDS}")
    reason = torch_only(model, temperature)
    if backend == "onnx" and reason:
        raise ValueError(reason)
    if backend != "auto":
        return backend
    if reason:
        return "torch"
    device = next(model.dynamics.parameters()).device
    ready = (auto_prefers_onnx(device, batch_size, precision) and runtime_available(device)
             and graph_path(model.dynamics).exists())
    return "onnx" if ready else "torch"


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is a Simulator setting (``auto``, ``float32``, ``bfloat16``).

    Raises:
        ValueError: an unknown precision, named.
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"unknown precision {precision!r}; available: auto, {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> str:
    """The Simulator's arithmetic for a ``precision`` setting (see :class:`Simulator`).

    Raises:
        ValueError: an unknown precision, or bfloat16 asked of the onnx backend.
    """
    check_precision(precision)
    if precision == "bfloat16" and backend == "onnx":
        raise ValueError("precision='bfloat16' runs on the torch backend only; the onnx graph is float32")
    if precision == "auto":
        return "bfloat16" if backend == "torch" and fast_bfloat16(torch.device(device)) else "float32"
    return precision


def _inference_copy(dynamics: DynamicsModel, dtype: torch.dtype) -> DynamicsModel:
    """The Simulator's copy of ``dynamics``: in ``dtype``, with its palette (the colours it
    draws) and copy bias (a score added in float32) kept float32, and its rotary pairs
    interleaved (:meth:`~worldmodel.dynamics.DynamicsModel.interleave_rotary`: the same
    scores up to rounding, faster). The bundle's own model is left as it is."""
    cast = copy.deepcopy(dynamics).to(dtype)
    if getattr(dynamics, "palette", None) is not None:
        cast.palette = dynamics.palette.clone()
        cast.copy_bias.data = dynamics.copy_bias.data.clone()
    return cast.interleave_rotary()
