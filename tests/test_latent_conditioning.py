"""Dynamics conditioned on latent-action codes alone, played with the game's keys through a
key-to-code map fitted on a few labelled steps (issue 7)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import worldmodel
from worldmodel.bundle import CheckpointError
from worldmodel.latent_actions import fit_action_codes


def test_fit_action_codes_takes_each_actions_most_frequent_code():
    actions = np.array([0, 0, 0, 2, 2, 3, 3, 3, 3])
    codes = np.array([4, 4, 4, 7, 7, 2, 2, 2, 4])
    fitted = fit_action_codes(codes, actions, num_actions=6, num_codes=9)
    # Actions 1, 4 and 5 were never labelled: they get the code seen most often overall (4).
    np.testing.assert_array_equal(fitted, [4, 4, 7, 2, 4, 4])
    assert fitted.dtype == np.int64


@pytest.mark.parametrize("codes,actions,match", [
    ([], [], "at least one"),
    ([1, 2], [0], "as many"),
    ([9], [0], "code 9 out of range"),
    ([0], [6], "action 6 out of range"),
])
def test_fit_action_codes_names_bad_input(codes, actions, match):
    with pytest.raises(ValueError, match=match):
        fit_action_codes(np.array(codes, np.int64), np.array(actions, np.int64), num_actions=6, num_codes=9)


def test_lam_infers_a_batch_of_clips_as_it_infers_each():
    from worldmodel.config import get_preset
    from worldmodel.lam import LatentActionModel

    torch.manual_seed(0)
    lam = LatentActionModel(get_preset("tiny").lam).eval()
    lam.to_latent.weight.data.mul_(30)     # random weights that spread noise clips over the codes
    clips = torch.rand(3, 8, 3, 64, 64) * 2 - 1
    batch = lam.infer(clips)
    assert batch.shape == (3, 7) and batch.dtype == torch.int64
    for clip, codes in zip(clips, batch):
        torch.testing.assert_close(lam.infer(clip), codes)
    assert len(torch.unique(batch)) > 3


def _latent(bundle, codes):
    """The tiny bundle as a latent bundle with a key-to-code map (its dynamics take 6 ids either way)."""
    return dataclasses.replace(bundle, conditioning="latent", action_codes=codes)


def test_a_latent_bundle_steps_the_game_actions_through_its_map(tiny_bundle, tmp_path):
    codes = [5, 5, 0, 1, 0, 1]
    latent = _latent(tiny_bundle, codes)
    assert latent.control_actions == 6
    np.testing.assert_array_equal(latent.to_conditioning([2, 3, 0]), [0, 1, 5])
    with pytest.raises(ValueError, match="action 6 out of range"):
        latent.to_conditioning([6])
    # Without a map it is stepped with its codes; an actions bundle with its actions, unchanged.
    by_codes = _latent(tiny_bundle, None)
    np.testing.assert_array_equal(by_codes.to_conditioning([2, 3]), [2, 3])
    np.testing.assert_array_equal(tiny_bundle.to_conditioning([2, 3]), [2, 3])

    latent.save(tmp_path / "latent")
    loaded = worldmodel.load(tmp_path / "latent")
    assert loaded.conditioning == "latent" and loaded.action_codes == codes
    config = json.loads((tmp_path / "latent" / "config.json").read_text())
    for bad in ([0, 1], [0, 1, 2, 3, 4, 6], [0, 1, 2, 3, 4, "5"]):
        (tmp_path / "latent" / "config.json").write_text(json.dumps({**config, "action_codes": bad}))
        with pytest.raises(CheckpointError, match="action_codes"):
            worldmodel.load(tmp_path / "latent")


def test_the_dream_env_and_the_keys_use_the_map(tiny_bundle):
    from envs.dream_env import DreamEnv
    from play.controls import KeymapControls, LatentCodeControls, make_controls

    codes = [5, 5, 0, 1, 0, 1]
    latent = _latent(tiny_bundle, codes)
    controls = make_controls(latent, num_codes=6)
    assert isinstance(controls, KeymapControls)
    assert controls.action({"up"}) == 0 and controls.action({"down"}) == 1 and controls.action(set()) == 5
    assert isinstance(make_controls(latent, num_codes=6, latent_keys=True), LatentCodeControls)

    # The env with game action 2 (up) dreams exactly what the Simulator dreams with code 0.
    env, twin = DreamEnv(latent), DreamEnv(latent)
    env.reset(seed=3)
    twin.reset(seed=3)
    frames, _, _ = twin.sim.step(np.array([0]))
    np.testing.assert_array_equal(env.step(2)[0], frames[0])


def test_pipeline_trains_dynamics_on_latent_codes_alone(pipeline_run, tmp_path):
    """conditioning=latent: the dynamics learn from the LAM's codes, the bundle gets a key-to-code
    map from at most ``labelled_steps`` labelled steps, and the evaluation scores control both ways."""
    from recorders.dataset import EpisodeDataset
    from training.evaluate import controllability
    from training.pipeline import build_config, run
    from worldmodel.tokenizer import frames_to_tensor

    root, _, _ = pipeline_run
    shutil.copytree(root / "run" / "lam", tmp_path / "latent" / "lam")        # the LAM trained without labels
    cfg = build_config(dict(preset="tiny", out=str(tmp_path / "latent"), dataset=str(root / "data"),
                            heldout=str(root / "heldout"), progress=False, start_windows=2, conditioning="latent",
                            labelled_steps=20, stages=["dynamics", "evaluate"], budget={"dynamics": {"steps": 2}}))
    metrics = run(cfg)
    model = worldmodel.load(tmp_path / "latent" / "bundle")
    codes = model.lam_config.num_codes
    assert model.conditioning == "latent" and model.dynamics_config.num_actions == codes
    assert len(model.action_codes) == 6 and all(0 <= c < codes for c in model.action_codes)
    assert metrics["action_codes"] == {name: c for name, c in zip(model.action_meanings, model.action_codes)}
    # The start windows are labelled with the LAM's codes, not the recorded actions.
    np.testing.assert_array_equal(model.start_actions.numpy(),
                                  model.lam.infer(frames_to_tensor(model.start_frames)).numpy())
    held = EpisodeDataset(root / "heldout")
    result = controllability(model, [held[i] for i in range(len(held))], horizons=(1,), windows=2)
    assert set(result) == {"delta_psnr", "delta_psnr_keymap", "psnr_real_actions", "psnr_random_actions",
                           "psnr_keymap_actions"}
    assert all(np.isfinite(v[1]) for v in result.values())


def test_latent_conditioning_needs_a_latent_action_model(pipeline_run, tmp_path):
    from training.pipeline import build_config, run

    root, _, _ = pipeline_run
    with pytest.raises(ValueError, match="conditioning must be"):
        build_config(dict(preset="tiny", conditioning="codes"))
    with pytest.raises(ValueError, match="needs a latent-action model"):
        run(build_config(dict(preset="tiny", out=str(tmp_path / "nolam"), dataset=str(root / "data"),
                              heldout=str(root / "heldout"), progress=False, conditioning="latent",
                              stages=["dynamics"])))


def test_normalized_latent_spreads_codes_where_the_raw_one_sits_in_one_bin():
    """The collapse the first Pong LAM showed: a quantizer input that stays inside one rounding
    bin gives every transition the same code. Batch-normalising that input spreads it again."""
    from worldmodel.config import LAMConfig
    from worldmodel.lam import LatentActionModel

    torch.manual_seed(0)
    clips = torch.rand(64, 3, 3, 64, 64) * 2 - 1
    usage = {}
    for normalize in (False, True):
        lam = LatentActionModel(LAMConfig(history=1, channels=(8, 16, 16, 16), normalize_latent=normalize)).train()
        lam.to_latent.weight.data.mul_(0.1)       # a quantizer input with little spread, as after a collapse
        usage[normalize] = len(torch.unique(lam.encode(clips)[1]))
    assert usage[False] == 1 and usage[True] >= 6


def test_lam_config_checks_the_spatial_readout_grid():
    from worldmodel.config import LAMConfig

    with pytest.raises(ValueError, match="frame_size 48 divisible by 2 \\*\\* 5"):
        LAMConfig(frame_size=48, channels=(8, 8, 8, 8, 8))
    LAMConfig(frame_size=48, channels=(8, 8, 8, 8, 8), spatial_readout=False)


def test_a_bundle_from_before_the_lam_options_loads_its_lam_as_it_was_built(tmp_path):
    """A bundle whose config predates frame_differences, spatial_readout, normalize_latent and
    decoder_differences (the Pong bundle shipped until session 9) loads with the design it was
    trained with."""
    from worldmodel.bundle import LAM_BEFORE_V2
    from worldmodel.config import LAMConfig
    from worldmodel.lam import LatentActionModel

    model = worldmodel.load("pong")
    old = LAMConfig(history=1, fsq_levels=(3, 3), channels=(8, 8, 8, 8), **LAM_BEFORE_V2)
    model.lam_config, model.lam = old, LatentActionModel(old)
    path = model.save(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    for key in (*LAM_BEFORE_V2, "decoder_differences"):
        del config["lam"][key]
    (path / "config.json").write_text(json.dumps(config))
    loaded = worldmodel.load(path)
    assert {k: getattr(loaded.lam_config, k) for k in LAM_BEFORE_V2} == LAM_BEFORE_V2
    assert loaded.lam_config.decoder_differences is False
    frames = loaded.start_frames[0].numpy()
    assert worldmodel.infer_latent_actions(loaded, frames).shape == (len(frames) - 1,)


def test_latent_dynamics_take_only_the_label_free_parts_of_an_actions_bundle(pipeline_run, tmp_path, capsys):
    """Dynamics trained without labels must not inherit weights that learnt from them: from an
    actions bundle a latent run takes the LAM, trains the dynamics from scratch, and has no
    reward model (that one takes the game's actions)."""
    from training.pipeline import build_config, run

    root, _, _ = pipeline_run
    warm = worldmodel.load(root / "run" / "bundle")
    run(build_config(dict(preset="tiny", out=str(tmp_path / "latent"), dataset=str(root / "data"),
                          heldout=str(root / "heldout"), progress=False, conditioning="latent",
                          stages=["reward", "dynamics"], init_from=str(root / "run" / "bundle"))))
    out = capsys.readouterr().out
    assert "the reward stage is skipped" in out and "[dynamics] trained from scratch" in out
    model = worldmodel.load(tmp_path / "latent" / "bundle")
    assert model.conditioning == "latent" and model.reward_model is None
    for name, value in warm.lam.state_dict().items():
        torch.testing.assert_close(model.lam.state_dict()[name], value)
    # A few tiny steps from a warm start would leave the trunk next to the bundle's weights;
    # a fresh initialisation is as far from them as two random draws.
    name, theirs = max(((k, v) for k, v in warm.dynamics.state_dict().items() if v.ndim == 2),
                       key=lambda kv: kv[1].numel())
    mine = model.dynamics.state_dict()[name]
    assert mine.shape == theirs.shape
    assert (mine - theirs).norm() > 0.5 * theirs.norm(), name
