"""The onnxruntime backend of the Simulator: one cached pass of the dynamics model as an ONNX graph.

The graph is the dynamics model's cached forward pass over ``F`` new frames
(:meth:`worldmodel.dynamics.DynamicsModel.forward`; the Simulator runs it with ``F = 2``,
the pending frame and the new one, then ``F = 1`` for further sampling steps), with the
cache as explicit inputs and the new frames' keys and values as outputs:

=================  =============================================  ==========
input              shape                                          dtype
=================  =============================================  ==========
``tokens``         ``(B, F, N, D_tok)`` noisy tokens of the frames float32
``level``          ``(B, F)`` their noise levels                    float32
``action``         ``(B, F)`` the actions that produced them        int64
``position``       ``(B, F)`` their absolute frame indices          int64
``prev_tokens``    ``(B, 1, N, D_tok)`` the frame before, as fed    float32
``skip_tokens``    ``(B, 1, N, D_tok)`` the last frame's previous  float32
``past_k``         ``(depth, B, heads, S*N, head_dim)`` cached keys float32
``past_v``         same, cached values                              float32
``past_frames``    ``(B, S*N)`` frame index per cached token, -1    int64
``since_reward``   ``(B, F)`` their reward clocks (only a model     int64
                   with ``reward_clock``)
``events``         ``(B, F)`` their event codes, -1 for none (only  int64
                   a model with ``event_codes``; the Simulator
                   draws them from the prior, in torch)
=================  =============================================  ==========

outputs: ``x0 (B, 1, N, D_tok)`` (the last frame's prediction: the others are passed only to
be committed to the cache), ``new_k`` / ``new_v (depth, B, heads, F*N, head_dim)``.
The ring buffer itself (:class:`worldmodel.kv_cache.KVCache`) stays outside the graph:
the Simulator writes the first frame's ``new_k``/``new_v`` into the slot it commits. The
batch and frame axes are dynamic.

Inputs and outputs are bound with onnxruntime's IOBinding to the torch tensors the
Simulator already holds (CPU memory, or GPU memory with the CUDA execution provider), so
frames and caches are not copied between steps.

Graphs are exported with ``torch.onnx.export(dynamo=True)`` at opset 23 and cached under
``$DREAMGAMES_CACHE`` (default ``~/.cache/dreamgames``), keyed by a hash of the weights and
config, so only the first use of a checkpoint pays for the export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldmodel.device import cpu_has_amx
from worldmodel.dynamics import DynamicsModel

OPSET = 23
INPUTS = ("tokens", "level", "action", "position", "prev_tokens", "skip_tokens", "past_k", "past_v", "past_frames")
OUTPUTS = ("x0", "new_k", "new_v")
GRAPH_VERSION = 3
"""Bumped when the exported computation changes (2: the last frame's prediction only, exact GELU;
3: the last block computes only the predicted frame),
so that graphs cached by an earlier version are not reused."""


def graph_inputs(dynamics: DynamicsModel) -> tuple[str, ...]:
    """The graph's input names for ``dynamics``: :data:`INPUTS`, then ``since_reward`` for a model
    with a reward clock and ``events`` for a model with event codes."""
    return (INPUTS + (("since_reward",) if dynamics.cfg.reward_clock else ())
            + (("events",) if dynamics.cfg.event_codes else ()))


class OnnxUnavailable(RuntimeError):
    """onnxruntime, or the exporter's packages (onnx, onnxscript), cannot be used here."""


class _GraphCache:
    """Stands in for :class:`~worldmodel.kv_cache.KVCache` while tracing: the past keys and
    values are graph inputs, and the keys and values of every new frame become graph outputs."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, past_frames: torch.Tensor, slots: int):
        self.k, self.v, self._frames, self.slots = past_k, past_v, past_frames, slots
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def token_frames(self) -> torch.Tensor:
        return self._frames

    def keys_and_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.new_k.append(k)
        self.new_v.append(v)

    def commit(self, positions: torch.Tensor) -> None:
        pass


class StepGraph(nn.Module):
    """The exported module: a cached pass of ``dynamics`` over ``F`` frames (see the module docstring)."""

    def __init__(self, dynamics: DynamicsModel):
        super().__init__()
        self.dynamics = dynamics

    def forward(self, tokens, level, action, position, prev_tokens, skip_tokens, past_k, past_v, past_frames,
                since_reward=None, events=None):
        slots = self.dynamics.cfg.context_frames - 1
        cache = _GraphCache(past_k, past_v, past_frames, slots)
        # write=slots asks for the keys and values of all F (<= slots) frames; the caller stores the ones it commits.
        x0 = self.dynamics(tokens, level, action, position, cache=cache, write=slots, prev_tokens=prev_tokens,
                           skip_tokens=skip_tokens, predict=1, since_reward=since_reward, events=events)
        return x0, torch.stack(cache.new_k), torch.stack(cache.new_v)


def example_inputs(dynamics: DynamicsModel, batch: int = 2, frames: int = 2) -> dict[str, torch.Tensor]:
    """The graph's inputs by name (:func:`graph_inputs`), of their shapes and dtypes for ``batch``
    dreams and ``frames`` new frames (random values)."""
    c = dynamics.cfg
    s, n, d, h, hd = c.context_frames - 1, c.tokens_per_frame, c.token_dim, c.heads, dynamics.head_dim
    f = frames
    clock = (torch.randint(0, c.reward_clock + 1, (batch, f)),) if c.reward_clock else ()
    events = (torch.randint(-1, c.event_codes, (batch, f)),) if c.event_codes else ()
    values = (torch.randn(batch, f, n, d), torch.rand(batch, f), torch.zeros(batch, f, dtype=torch.long),
              torch.arange(s, s + f).expand(batch, f), torch.randn(batch, 1, n, d), torch.randn(batch, 1, n, d),
              torch.randn(c.depth, batch, h, s * n, hd), torch.randn(c.depth, batch, h, s * n, hd),
              torch.arange(s).repeat_interleave(n).expand(batch, s * n), *clock, *events)
    return dict(zip(graph_inputs(dynamics), values, strict=True))


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$DREAMGAMES_CACHE/onnx`` or ``~/.cache/dreamgames/onnx``."""
    root = os.environ.get("DREAMGAMES_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                      "dreamgames")
    return Path(root) / "onnx"


def graph_key(dynamics: DynamicsModel) -> str:
    """A hash of the dynamics model's config, weights and the export settings."""
    h = hashlib.sha256(json.dumps({"cfg": dynamics.cfg.__dict__, "opset": OPSET, "torch": torch.__version__,
                                   "inputs": INPUTS, "outputs": OUTPUTS, "graph": GRAPH_VERSION},
                                  sort_keys=True, default=str).encode())
    for name, t in sorted(dynamics.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def export_step_graph(dynamics: DynamicsModel, path: str | Path) -> Path:
    """Export :class:`StepGraph` of ``dynamics`` (float32, on the CPU) to ``path``.

    Written to a temporary name and renamed, so an interrupted export leaves nothing behind.

    Raises:
        OnnxUnavailable: the exporter's packages are missing.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise OnnxUnavailable(f"exporting ONNX needs the onnx and onnxscript packages ({e})") from None
    import copy
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = StepGraph(copy.deepcopy(dynamics).float().cpu()).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    frames = torch.export.Dim("frames", min=1, max=dynamics.cfg.context_frames - 1)
    names = graph_inputs(dynamics)
    dynamic = {name: {1 if name in ("past_k", "past_v") else 0: batch} for name in names}
    for name in ("tokens", "level", "action", "position", "since_reward", "events"):
        if name in dynamic:
            dynamic[name][1] = frames
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # By name: a model may have events without a clock, so the optional inputs are keywords.
            torch.onnx.export(graph, (), str(tmp), kwargs=example_inputs(graph.dynamics), dynamo=True,
                              opset_version=OPSET,
                              input_names=list(names), output_names=list(OUTPUTS), dynamic_shapes=dynamic,
                              external_data=False, verbose=False)
        os.replace(tmp, path)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path


def graph_path(dynamics: DynamicsModel) -> Path:
    """Where the exported graph of ``dynamics`` is cached (it may not exist yet)."""
    return cache_dir() / f"dynamics-{graph_key(dynamics)}.onnx"


def cached_step_graph(dynamics: DynamicsModel, *, verbose: bool = True) -> Path:
    """The exported graph of ``dynamics``, exported now if it is not in :func:`cache_dir` yet."""
    path = graph_path(dynamics)
    if not path.exists():
        t0 = time.perf_counter()
        if verbose:
            print(f"exporting the dynamics model to ONNX (once per checkpoint) -> {path}", flush=True)
        export_step_graph(dynamics, path)
        if verbose:
            print(f"exported in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise OnnxUnavailable(f"onnxruntime is not installed ({e})") from None
    return ort


def runtime_available(device: torch.device) -> bool:
    """Whether onnxruntime with the execution provider for ``device`` is installed (enough to
    run a graph that is already exported; exporting needs :func:`onnx_available`)."""
    try:
        ort = _ort()
    except OnnxUnavailable:
        return False
    wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    return wanted in ort.get_available_providers()


def onnx_available(device: torch.device) -> bool:
    """Whether the onnxruntime backend can run a model on ``device`` here (runtime and exporter present)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return runtime_available(device)


AUTO_ONNX_MAX_BATCH = 8
"""On a CPU without AMX, ``backend="auto"`` runs onnx up to this batch size: there it measured
faster than torch at batch 1; at batch 8 as fast on a CPU without bfloat16 and 7% slower on one
with AVX512-BF16; slower at batch 64 (README)."""


def auto_prefers_onnx(device: torch.device, batch_size: int, precision: str = "auto") -> bool:
    """Whether ``backend="auto"`` would run onnx for ``batch_size`` dreams on ``device`` at
    ``precision``, once the graph is exported: on a GPU always; on a CPU without AMX up to
    :data:`AUTO_ONNX_MAX_BATCH` dreams (with AVX512-BF16 alone, as on an AMD EPYC, torch's
    bfloat16 was slower than onnx's float32 at batch 1); never for ``precision="bfloat16"``
    (the graph is float32), nor on a CPU with AMX at ``"auto"``, where torch's bfloat16 was
    faster at every batch size."""
    if precision == "bfloat16":
        return False
    if device.type == "cuda":
        return True
    return batch_size <= AUTO_ONNX_MAX_BATCH and (precision == "float32" or not cpu_has_amx())


class OnnxStepper:
    """Runs :class:`StepGraph` with onnxruntime on the Simulator's torch tensors.

    Args:
        dynamics: the (torch) dynamics model; its graph is exported or taken from the cache.
        device: where the Simulator's tensors live: CPU (CPU execution provider) or CUDA
            (CUDA execution provider; tensors stay on the GPU through IOBinding).
        threads: intra-op threads of the CPU provider (default: torch's thread count); they do
            not spin between runs.

    Raises:
        OnnxUnavailable: onnxruntime, the exporter, or the execution provider is missing.
    """

    def __init__(self, dynamics: DynamicsModel, device: torch.device, *, threads: int | None = None,
                 verbose: bool = True):
        ort = _ort()
        self.device = torch.device(device)
        provider = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise OnnxUnavailable(f"onnxruntime has no {provider} here (it has {ort.get_available_providers()})")
        self.path = cached_step_graph(dynamics, verbose=verbose)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # The pool's threads sleep when a run ends instead of spinning: the Simulator's torch
        # work between runs (noising, decoding) has its own threads, and spinning ones took the
        # cores from it (the README's Speed section has the measurement).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options = [{"device_id": self.device.index or 0}] if provider == "CUDAExecutionProvider" else [{}]
        self.session = ort.InferenceSession(str(self.path), opts, providers=[provider], provider_options=options)
        self.provider = provider
        self._ort_device = "cuda" if self.device.type == "cuda" else "cpu"
        self._device_id = self.device.index or 0
        cfg = dynamics.cfg
        self._out_shapes = {"x0": lambda b, f: (b, 1, cfg.tokens_per_frame, cfg.token_dim),
                            "new_k": lambda b, f: (cfg.depth, b, cfg.heads, f * cfg.tokens_per_frame, dynamics.head_dim),
                            "new_v": lambda b, f: (cfg.depth, b, cfg.heads, f * cfg.tokens_per_frame, dynamics.head_dim)}
        self._outputs: dict[tuple[int, int], dict[str, torch.Tensor]] = {}   # by (batch, frames)
        self._inputs, self._clock_cap, self._evented = graph_inputs(dynamics), cfg.reward_clock, bool(cfg.event_codes)

    def _bind(self, binding, name: str, t: torch.Tensor, output: bool = False) -> None:
        np_type = {torch.float32: np.float32, torch.int64: np.int64, torch.bool: np.bool_}[t.dtype]
        bind = binding.bind_output if output else binding.bind_input
        bind(name, self._ort_device, self._device_id, np_type, list(t.shape), t.data_ptr())

    def __call__(self, tokens, levels, actions, positions, *, cache, write: int, prev_tokens,
                 skip_tokens, predict: int = 1, since_reward: torch.Tensor | None = None,
                 events: torch.Tensor | None = None) -> torch.Tensor:
        """One pass, like ``dynamics(..., cache=cache, write=write, predict=1)``: returns the last
        frame's ``x0 (B, 1, N, D_tok)`` and commits the first ``write`` frames to ``cache``.

        Raises:
            ValueError: ``predict`` is not 1 (the graph predicts the last frame only).
        """
        if predict != 1:
            raise ValueError(f"the onnx graph predicts the last frame only (predict=1), got predict={predict}")
        b, f = tokens.shape[:2]
        inputs = (tokens, levels, actions, positions, prev_tokens, skip_tokens, cache.k, cache.v, cache.token_frames())
        if self._clock_cap:                     # the reward clock; the graph caps it
            inputs += (torch.full_like(actions, self._clock_cap) if since_reward is None else since_reward,)
        if self._evented:                       # -1: no code, as the torch model reads None
            inputs += (torch.full_like(actions, -1) if events is None else events,)
        out = self._outputs.get((b, f))
        if out is None:
            out = self._outputs[(b, f)] = {name: torch.empty(shape(b, f), device=self.device)
                                           for name, shape in self._out_shapes.items()}
        binding = self.session.io_binding()
        bound = [t.contiguous() for t in inputs]          # referenced here until the run is over
        for name, t in zip(self._inputs, bound):
            self._bind(binding, name, t)
        for name, t in out.items():
            self._bind(binding, name, t, output=True)
        self.session.run_with_iobinding(binding)
        if write:
            n = cache.tokens_per_frame
            cache.write(None, out["new_k"][:, :, :, :write * n], out["new_v"][:, :, :, :write * n])
            cache.commit(positions[:, :write])
        return out["x0"].clone()
