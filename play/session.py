"""A play session: one dream driven by one player, independent of any window or socket.

The pygame window and the websocket server are thin shells around :class:`PlaySession`:
they turn keys into actions, call :meth:`PlaySession.step` on a fixed tick and show the
frame it returns.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from worldmodel.bundle import ModelBundle
from worldmodel.simulator import Simulator


def prepare_backend(model: ModelBundle, backend: str = "auto", precision: str = "auto",
                    temperature: float | None = None) -> str:
    """The Simulator backend a front-end (one dream per Simulator) should use.

    ``"auto"`` becomes ``"onnx"`` where :func:`worldmodel.onnx_backend.auto_prefers_onnx`
    says so for one dream: for a model on a GPU where onnxruntime's CUDA provider and the
    exporter are installed (exporting this checkpoint's graph once, with a message, if it is
    not cached yet), and on a CPU without AMX if the graph is exported already
    (else torch, with a hint to export it: onnx measured faster at batch 1 there). Otherwise
    ``"torch"``, and always for colours drawn at a ``temperature`` above 0 (default: the
    bundle's; the onnx graph draws the most likely ones). ``"torch"`` and ``"onnx"`` are
    returned as given.

    Raises:
        ValueError: an unknown backend name, a bad temperature, or onnx with a temperature above 0.
    """
    from worldmodel.onnx_backend import (
        OnnxUnavailable,
        auto_prefers_onnx,
        cached_step_graph,
        onnx_available,
        runtime_available,
    )
    from worldmodel.simulator import resolve_backend, resolve_temperature, torch_only

    temperature = resolve_temperature(model, temperature)
    if backend != "auto" or torch_only(model, temperature):             # checks the name; sampled colours: torch
        return resolve_backend(model, 1, backend, precision, temperature=temperature)
    device = next(model.dynamics.parameters()).device
    if not auto_prefers_onnx(device, 1, precision):
        return "torch"
    if device.type == "cuda" and onnx_available(device):
        with contextlib.suppress(OnnxUnavailable):
            cached_step_graph(model.dynamics)                             # on a GPU, export on first use
    chosen = resolve_backend(model, 1, "auto", precision)
    if chosen == "torch" and device.type == "cpu" and runtime_available(device):
        print("hint: on this CPU the onnx backend is faster; export this checkpoint's graph once with "
              "`python -m worldmodel.export checkpoint=...`, or pass backend=onnx", flush=True)
    return chosen


@dataclass
class StepResult:
    """One dream frame and what came with it.

    Attributes:
        frame: ``(H, W, 3)`` uint8.
        reward: predicted reward (its sign) of the step.
        terminated: the reward and end model's verdict.
        latency_ms: wall time of the step (generation and decoding), in milliseconds.
    """

    frame: np.ndarray
    reward: float
    terminated: bool
    latency_ms: float


class PlaySession:
    """One dream being played.

    Args:
        model: the loaded checkpoint bundle.
        seed: seeds the choice of start windows and the sampling noise.
        sampling_steps: denoising steps per frame (default: the bundle's).
        temperature: colour sampling temperature (default: the bundle's; see
            :class:`~worldmodel.simulator.Simulator`).
        backend: Simulator backend.
        precision: the Simulator's arithmetic (``auto``, ``float32``, ``bfloat16``; see
            :class:`~worldmodel.simulator.Simulator`).

    Attributes:
        step_count: steps since the last reset.
        score: sum of predicted rewards since the last reset.
    """

    def __init__(self, model: ModelBundle, *, seed: int = 0, sampling_steps: int | None = None,
                 temperature: float | None = None, backend: str = "auto", precision: str = "auto"):
        self.model = model
        self.spec = model.game_spec
        self.rng = np.random.default_rng(seed)
        self.sim = Simulator(model, batch_size=1, backend=backend, seed=seed, sampling_steps=sampling_steps,
                             temperature=temperature, precision=precision)
        self._latencies: deque[float] = deque(maxlen=60)
        self._ticks: deque[float] = deque(maxlen=60)
        self.step_count = 0
        self.score = 0.0
        self.frame = self.reset()

    def reset(self, start: int | None = None) -> np.ndarray:
        """Restart the dream from a real start window (random unless ``start`` is given).

        Returns:
            ``(H, W, 3)`` uint8, the last real frame of the window.

        Raises:
            IndexError: ``start`` is not a valid start-window index.
        """
        k = len(self.model.start_frames)
        if start is None:
            start = int(self.rng.integers(k))
        elif not 0 <= start < k:
            raise IndexError(f"start window {start} out of range [0, {k})")
        frames = self.model.start_frames[start:start + 1].numpy()
        actions = self.model.start_actions[start:start + 1].numpy()
        self.frame = self.sim.reset(frames, actions)[0]
        self.step_count, self.score = 0, 0.0
        return self.frame

    def reset_from(self, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Restart the dream from given real frames, such as the real game's latest ones.

        Only the last :attr:`context_frames` frames reach the dream's context; older ones are
        ignored, as :meth:`worldmodel.Simulator.reset` does.

        Args:
            frames: ``(T, H, W, 3)`` uint8, ``T >= 1``, oldest first.
            actions: ``(T-1,)`` int64, the action (or latent code) taken after each frame but
                the last.

        Returns:
            ``(H, W, 3)`` uint8, the dream's latest frame: ``frames[-1]``.

        Raises:
            ValueError: wrong shapes or dtype, or an action out of range.
        """
        frames, actions = np.asarray(frames), np.asarray(actions)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
        self.frame = self.sim.reset(frames[None], actions[None])[0]
        self.step_count, self.score = 0, 0.0
        return self.frame

    @property
    def context_frames(self) -> int:
        """Real frames a reset can use: the dream's context window less the frame it generates."""
        return self.sim.cache.slots

    def action_for_keys(self, held: set[str]) -> int:
        """The game's action for the held key names (the bundle's key map)."""
        return self.spec.action_for_keys(held)

    def step(self, action: int) -> StepResult:
        """Advance the dream by one frame with ``action``.

        Raises:
            ValueError: the action is out of range.
        """
        t0 = time.perf_counter()
        frames, rewards, terminated = self.sim.step(np.array([action], np.int64))
        now = time.perf_counter()
        self._latencies.append((now - t0) * 1000)
        self._ticks.append(now)
        self.frame = frames[0]
        self.step_count += 1
        self.score += float(rewards[0])
        return StepResult(self.frame, float(rewards[0]), bool(terminated[0]), self._latencies[-1])

    @property
    def fps(self) -> float:
        """Frames per second over the last 60 steps (0 before two steps)."""
        if len(self._ticks) < 2:
            return 0.0
        return (len(self._ticks) - 1) / max(self._ticks[-1] - self._ticks[0], 1e-9)

    @property
    def latency_ms(self) -> float:
        """Median step latency over the last 60 steps, in milliseconds."""
        return float(np.median(self._latencies)) if self._latencies else 0.0
