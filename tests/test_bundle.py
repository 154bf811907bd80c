"""Checkpoint bundles: save/load round trip, clear errors for broken bundles, no pickles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import worldmodel
from worldmodel import CheckpointError, Simulator


@pytest.fixture(scope="module")
def saved(tiny_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "pong"
    assert tiny_bundle.save(path) == path
    return path


@pytest.fixture()
def bundle_copy(saved, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _dyn_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, cfg.context_frames, cfg.tokens_per_frame, cfg.token_dim, generator=g)
    levels = torch.rand(2, cfg.context_frames, generator=g)
    actions = torch.randint(0, cfg.num_actions, (2, cfg.context_frames), generator=g)
    return tokens, levels, actions


def test_round_trip(tiny_bundle, saved):
    loaded = worldmodel.load(saved)
    assert loaded.game == "pong" and loaded.action_meanings == tiny_bundle.action_meanings
    assert loaded.keymap == tiny_bundle.keymap and loaded.key_aliases == tiny_bundle.key_aliases
    assert loaded.fps == tiny_bundle.fps and loaded.conditioning == "actions"
    assert loaded.dynamics_config == tiny_bundle.dynamics_config
    assert loaded.tokenizer_config == tiny_bundle.tokenizer_config
    assert loaded.sampler == tiny_bundle.sampler
    assert loaded.info == tiny_bundle.info
    assert loaded.lam is None and loaded.lam_config is None
    assert not loaded.dynamics.training
    assert torch.equal(loaded.start_frames, tiny_bundle.start_frames)
    assert loaded.start_frames.dtype == torch.uint8 and loaded.start_actions.dtype == torch.int64
    assert torch.equal(loaded.start_actions, tiny_bundle.start_actions)
    for (k1, v1), (k2, v2) in zip(tiny_bundle.dynamics.state_dict().items(), loaded.dynamics.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    inputs = _dyn_inputs(loaded.dynamics_config)
    with torch.no_grad():
        a, b = tiny_bundle.dynamics(*inputs), loaded.dynamics(*inputs)
    assert torch.equal(a, b)
    assert loaded.reward_config == tiny_bundle.reward_config
    for (k1, v1), (k2, v2) in zip(tiny_bundle.reward_model.state_dict().items(),
                                  loaded.reward_model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_round_trip_same_dream(tiny_bundle, saved):
    loaded = worldmodel.load(str(saved))
    dreams = []
    for model in (tiny_bundle, loaded):
        sim = Simulator(model, batch_size=1, seed=4)
        sim.reset(model.start_frames[:1].numpy(), model.start_actions[:1].numpy())
        dreams.append(np.stack([sim.step([a])[0] for a in (2, 2, 3, 0, 1)]))
    np.testing.assert_array_equal(dreams[0], dreams[1])


def test_half_precision_weights_load_as_float32(tiny_bundle, tmp_path):
    from safetensors import safe_open

    tiny_bundle.save(tmp_path / "half", weights_dtype=torch.float16)
    for name in ("dynamics", "reward"):
        with safe_open(str(tmp_path / "half" / f"{name}.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, name
    assert (tmp_path / "half" / "dynamics.safetensors").stat().st_size < 0.6 * (
        tiny_bundle.save(tmp_path / "full") / "dynamics.safetensors").stat().st_size
    loaded = worldmodel.load(tmp_path / "half")
    for (k, mine), theirs in zip(tiny_bundle.dynamics.state_dict().items(), loaded.dynamics.state_dict().values()):
        assert theirs.dtype == mine.dtype, k
        torch.testing.assert_close(theirs, mine.half().to(mine.dtype), rtol=0, atol=0, msg=k)
    assert torch.equal(loaded.start_frames, tiny_bundle.start_frames)


def test_game_spec_groups_the_registered_games_effective_actions(tiny_bundle):
    """Scoring latent actions against Pong's stay / up / down needs the registered game's groups;
    a bundle whose actions differ from the registered game's gets none."""
    import dataclasses

    assert worldmodel.load("pong").game_spec.effective_action_groups()[0] == ["stay", "up", "down"]
    other = dataclasses.replace(tiny_bundle, action_meanings=["A", "B", "C", "D", "E", "F"])
    assert other.game_spec.effective_action_groups()[0] == ["A", "B", "C", "D", "E", "F"]


def test_no_pickles_in_bundle(saved):
    files = sorted(p.name for p in saved.iterdir())
    assert "config.json" in files and "dynamics.safetensors" in files and "start_frames.safetensors" in files
    assert all(name.endswith((".json", ".safetensors")) for name in files), files
    assert "tokenizer.safetensors" not in files          # the patch tokenizer has no weights
    for p in saved.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x02" and not head.startswith(b"PK"), f"{p.name} looks like a pickle / torch zip"
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["format"] == "dreamgame-bundle" and cfg["version"] == 1 and cfg["game"] == "pong"
    assert cfg["dynamics"]["num_actions"] == 6


def test_load_missing_dir(tmp_path):
    missing = tmp_path / "no_such_bundle"
    with pytest.raises(CheckpointError, match="no_such_bundle"):
        worldmodel.load(missing)
    with pytest.raises(CheckpointError, match="definitely_not_shipped"):
        worldmodel.load("definitely_not_shipped")


def test_load_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        worldmodel.load(tmp_path / "empty")


def test_corrupt_dynamics_weights(bundle_copy):
    target = bundle_copy / "dynamics.safetensors"
    target.write_bytes(b"\x00\xffgarbage" * 100)
    with pytest.raises(CheckpointError) as err:
        worldmodel.load(bundle_copy)
    assert str(target) in str(err.value)


def test_truncated_dynamics_weights(bundle_copy):
    target = bundle_copy / "dynamics.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        worldmodel.load(bundle_copy)
    assert str(target) in str(err.value)


def test_missing_dynamics_weights(bundle_copy):
    (bundle_copy / "dynamics.safetensors").unlink()
    with pytest.raises(CheckpointError, match="dynamics.safetensors"):
        worldmodel.load(bundle_copy)


def test_corrupt_start_frames(bundle_copy):
    (bundle_copy / "start_frames.safetensors").write_bytes(b"nonsense")
    with pytest.raises(CheckpointError, match="start_frames.safetensors"):
        worldmodel.load(bundle_copy)


def test_garbage_config(bundle_copy):
    (bundle_copy / "config.json").write_text("{this is : not json")
    with pytest.raises(CheckpointError, match="config.json"):
        worldmodel.load(bundle_copy)


def test_config_of_another_format(bundle_copy):
    cfg = json.loads((bundle_copy / "config.json").read_text())
    cfg["format"] = "something-else"
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="something-else"):
        worldmodel.load(bundle_copy)


def test_config_with_bad_model_settings(bundle_copy):
    cfg = json.loads((bundle_copy / "config.json").read_text())
    cfg["dynamics"]["no_such_field"] = 1
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json"):
        worldmodel.load(bundle_copy)


def test_weights_that_do_not_fit_the_config(bundle_copy):
    cfg = json.loads((bundle_copy / "config.json").read_text())
    cfg["dynamics"]["width"] = 128
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="dynamics.safetensors"):
        worldmodel.load(bundle_copy)


# -- malformed files that once escaped as raw exceptions ----------------------------------------

def test_binary_garbage_config(bundle_copy):
    (bundle_copy / "config.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="config.json"):
        worldmodel.load(bundle_copy)


def test_config_that_is_not_an_object(bundle_copy):
    (bundle_copy / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="config.json"):
        worldmodel.load(bundle_copy)


def test_start_frames_without_frames(bundle_copy):
    from safetensors.torch import save_file

    save_file({"actions": torch.zeros(1, 2, dtype=torch.int64)}, str(bundle_copy / "start_frames.safetensors"))
    with pytest.raises(CheckpointError, match="start_frames.safetensors"):
        worldmodel.load(bundle_copy)
