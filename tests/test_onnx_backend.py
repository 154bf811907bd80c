"""The onnxruntime backend: same dream as PyTorch, export cache, backend choice; and a step's
cost that does not grow with the episode (the bounded KV cache)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from play.session import prepare_backend
from worldmodel import Simulator, onnx_backend
from worldmodel.dynamics import interleaved_order
from worldmodel.onnx_backend import cached_step_graph, graph_path, onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(torch.device("cpu")),
                                reason="onnxruntime, onnx or onnxscript not installed")

#: Largest difference, in uint8 levels, between an onnx and a torch dream frame (float32 both;
#: the graphs' arithmetic order differs by rounding only).
FRAME_TOLERANCE = 2


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DREAMGAMES_CACHE", str(tmp_path_factory.mktemp("dreamgames-cache")))
    yield
    mp.undo()


def _start(bundle, batch):
    idx = np.arange(batch) % len(bundle.start_frames)
    return bundle.start_frames.numpy()[idx], bundle.start_actions.numpy()[idx]


def test_onnx_frames_match_torch(tiny_bundle, onnx_cache):
    # Compared without re-quantizing shown frames: rounding to uint8 turns a 1e-6 difference
    # that straddles a rounding tie into a whole level, which a random-weight model amplifies.
    bundle = dataclasses.replace(tiny_bundle, sampler=dataclasses.replace(tiny_bundle.sampler, quantize_frames=False))
    onnx = Simulator(bundle, batch_size=3, backend="onnx", seed=7)
    ref = Simulator(bundle, batch_size=3, backend="torch", seed=7, precision="float32")
    assert onnx.backend == "onnx" and ref.backend == "torch"
    # The pool's threads must not spin between runs (they took the cores from torch's work).
    opts = onnx._onnx.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for sim in (onnx, ref):
        sim.reset(*_start(tiny_bundle, 3))
    rng = np.random.default_rng(0)
    worst = 0
    for _ in range(12):                                   # past the ring's length: slots are reused
        a = rng.integers(tiny_bundle.num_actions, size=3)
        fo, ro, eo = onnx.step(a)
        ft, rt, et = ref.step(a)
        worst = max(worst, int(np.abs(fo.astype(np.int16) - ft).max()))
        np.testing.assert_array_equal(ro, rt)
        np.testing.assert_array_equal(eo, et)
    assert worst <= FRAME_TOLERANCE
    # The torch Simulator's copy keeps each head's key dimensions in its interleaved order.
    order = interleaved_order(tiny_bundle.dynamics.head_dim)
    torch.testing.assert_close(onnx.cache.k[..., order], ref.cache.k, atol=1e-3, rtol=0)
    # A subset reset goes through the same shared cache.
    for sim in (onnx, ref):
        sim.reset(*_start(tiny_bundle, 1), env_ids=[1])
    fo, _, _ = onnx.step(np.array([2, 3, 0]))
    ft, _, _ = ref.step(np.array([2, 3, 0]))
    assert int(np.abs(fo.astype(np.int16) - ft).max()) <= FRAME_TOLERANCE


def test_onnx_takes_event_codes_and_dreams_as_torch_does(tiny_bundle, onnx_cache):
    import onnxruntime as ort

    from tests.conftest import make_tiny_bundle
    from worldmodel.onnx_backend import StepGraph, example_inputs, graph_inputs

    frames, actions = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    bundle = make_tiny_bundle(frames, actions, seed=3, reward_clock=8, event_codes=4)   # tokens, not palette argmaxes
    assert graph_inputs(bundle.dynamics)[-2:] == ("since_reward", "events")
    # The graph's pass against the torch module's, for two sets of codes that change its output.
    session = ort.InferenceSession(str(cached_step_graph(bundle.dynamics, verbose=False)),
                                   providers=["CPUExecutionProvider"])
    graph = StepGraph(bundle.dynamics).eval()
    torch.manual_seed(0)
    inputs = example_inputs(bundle.dynamics, batch=2, frames=2)
    passes = []
    for codes in ([[0, 1], [2, 3]], [[3, -1], [1, 0]]):
        inputs["events"] = torch.tensor(codes)
        x0 = session.run(["x0"], {k: np.ascontiguousarray(v.numpy()) for k, v in inputs.items()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(x0, graph(**inputs)[0].numpy(), atol=1e-4)
        passes.append(x0)
    assert np.abs(passes[0] - passes[1]).max() > 1e-3
    # A dream: the prior's draws (in torch on both backends) and the frames agree.
    bundle = dataclasses.replace(bundle, sampler=dataclasses.replace(bundle.sampler, quantize_frames=False))
    onnx = Simulator(bundle, batch_size=3, backend="onnx", seed=7, event_temperature=1)
    ref = Simulator(bundle, batch_size=3, backend="torch", seed=7, precision="float32", event_temperature=1)
    for sim in (onnx, ref):
        sim.reset(*_start(bundle, 3))
    rng = np.random.default_rng(0)
    worst, drawn = 0, set()
    for _ in range(12):
        a = rng.integers(bundle.num_actions, size=3)
        fo, ro, _ = onnx.step(a)
        ft, rt, _ = ref.step(a)
        worst = max(worst, int(np.abs(fo.astype(np.int16) - ft).max()))
        np.testing.assert_array_equal(onnx.pending_event.numpy(), ref.pending_event.numpy())
        drawn.update(onnx.pending_event[:, 0].tolist())
    assert worst <= FRAME_TOLERANCE and len(drawn) > 1


def test_export_is_cached_and_auto_uses_it(tiny_bundle, onnx_cache, monkeypatch):
    path = cached_step_graph(tiny_bundle.dynamics, verbose=False)
    assert path == graph_path(tiny_bundle.dynamics) and path.stat().st_size > 0
    mtime = path.stat().st_mtime_ns
    assert cached_step_graph(tiny_bundle.dynamics, verbose=False).stat().st_mtime_ns == mtime
    # On a CPU without AMX "auto" runs the exported graph at small batches (faster there at
    # batch 1), torch at large ones and for bfloat16; with AMX, torch.
    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: False)
    assert Simulator(tiny_bundle, backend="auto").backend == "onnx"
    assert Simulator(tiny_bundle, batch_size=onnx_backend.AUTO_ONNX_MAX_BATCH + 1, backend="auto").backend == "torch"
    assert Simulator(tiny_bundle, backend="auto", precision="bfloat16").backend == "torch"
    assert prepare_backend(tiny_bundle) == "onnx"
    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: True)
    assert Simulator(tiny_bundle, backend="auto").backend == "torch"
    assert Simulator(tiny_bundle, backend="auto", precision="float32").backend == "onnx"
    # Other weights, another graph: "auto" does not export behind the caller's back.
    other = type(tiny_bundle.dynamics)(tiny_bundle.dynamics_config)
    assert graph_path(other) != path and not graph_path(other).exists()


def test_auto_falls_back_to_torch_without_an_exported_graph(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMGAMES_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: False)
    assert Simulator(tiny_bundle, backend="auto").backend == "torch"
    assert prepare_backend(tiny_bundle) == "torch"                 # no export behind the player's back on a CPU
    assert "worldmodel.export" in capsys.readouterr().out          # but a hint how to get the faster backend
    assert not any(tmp_path.rglob("*.onnx"))
