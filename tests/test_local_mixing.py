"""Local token mixing in the dynamics (``DynamicsConfig.local_mixing``, CPVT's positional encoding
generator): it reads the 3x3 neighbourhood of a token within its own frame, starts as the model
without it, warm-starts from a bundle without it, and runs the same through onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_bundle, random_dynamics, warm_start_dynamics
from worldmodel import Simulator
from worldmodel.config import DynamicsConfig
from worldmodel.dynamics import DynamicsModel, LocalMixing

CFG = DynamicsConfig(width=32, depth=2, heads=2, context_frames=3, num_actions=3, token_dim=12, tokens_per_frame=16)


def test_a_token_reads_its_3x3_neighbourhood_in_its_own_frame_only():
    mix = LocalMixing(8, grid=4)
    torch.nn.init.normal_(mix.conv.weight)
    x = torch.randn(1, 2, 16, 8)                         # 2 frames of a 4x4 token grid
    changed = x.clone()
    changed[0, 1, 5] += 1.0                              # frame 1, row 1, column 1
    with torch.no_grad():
        moved = (mix(changed) - mix(x)).abs().amax(-1)   # (1, 2, 16)
    assert not moved[0, 0].any()                         # the other frame is untouched
    rows, cols = np.divmod(np.arange(16), 4)
    near = (np.abs(rows - 1) <= 1) & (np.abs(cols - 1) <= 1)
    assert (moved[0, 1].numpy() > 0).tolist() == near.tolist()


def test_it_starts_as_the_model_without_it_and_warm_starts_from_one(capsys):
    torch.manual_seed(0)
    plain = random_dynamics(CFG)
    mixed = DynamicsModel(dataclasses.replace(CFG, local_mixing=True))
    assert all(not b.local.conv.weight.any() for b in mixed.blocks)
    assert warm_start_dynamics(mixed, plain)
    assert "blocks.0.local.conv.weight" in capsys.readouterr().out
    tokens, levels = torch.randn(2, 3, 16, 12), torch.rand(2, 3)
    actions = torch.randint(0, 3, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(mixed(tokens, levels, actions), plain(tokens, levels, actions))
        torch.nn.init.normal_(mixed.blocks[0].local.conv.weight)
        assert (mixed(tokens, levels, actions) - plain(tokens, levels, actions)).abs().max() > 1e-3
    # The other way would drop trained layers: refused, naming the field.
    with pytest.raises(ValueError, match="differs in local_mixing"):
        warm_start_dynamics(plain, mixed)


def test_it_needs_a_square_grid_of_tokens():
    with pytest.raises(ValueError, match="tokens_per_frame 12"):
        dataclasses.replace(CFG, tokens_per_frame=12, local_mixing=True)


def test_onnx_frames_match_torch_with_local_mixing(tiny_bundle, tmp_path, monkeypatch):
    from worldmodel.onnx_backend import onnx_available

    if not onnx_available(torch.device("cpu")):
        pytest.skip("onnxruntime, onnx or onnxscript not installed")
    monkeypatch.setenv("DREAMGAMES_CACHE", str(tmp_path))
    frames, actions = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    bundle = make_tiny_bundle(frames, actions, seed=4, local_mixing=True)
    bundle = dataclasses.replace(bundle, sampler=dataclasses.replace(bundle.sampler, quantize_frames=False))
    sims = [Simulator(bundle, batch_size=2, backend="onnx", seed=7),
            Simulator(bundle, batch_size=2, backend="torch", seed=7, precision="float32")]
    for sim in sims:
        sim.reset(frames, actions)
    rng = np.random.default_rng(0)
    for _ in range(6):
        a = rng.integers(bundle.num_actions, size=2)
        fo, ft = (sim.step(a)[0] for sim in sims)
        assert int(np.abs(fo.astype(np.int16) - ft).max()) <= 2   # test_onnx_backend's FRAME_TOLERANCE
