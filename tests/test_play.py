"""The play session and the pygame front-end, headless (SDL's dummy video driver)."""

from __future__ import annotations

import numpy as np
import pytest

from play.pygame_app import PygameApp, WindowConfig, parse_key_script
from play.session import PlaySession


def test_key_script_parsing():
    steps = parse_key_script("up:2,none:1,down+space:3")
    assert steps == [{"up"}, {"up"}, set(), {"down", "space"}, {"down", "space"}, {"down", "space"}]
    for bad in ("up:x", "up:0", ""):
        with pytest.raises(ValueError, match="key script"):
            parse_key_script(bad)


def test_session_maps_keys_with_the_game_keymap(tiny_bundle):
    s = PlaySession(tiny_bundle, seed=0)
    assert s.action_for_keys(set()) == 0
    assert s.action_for_keys({"up"}) == 2 and s.action_for_keys({"w"}) == 2
    assert s.action_for_keys({"down"}) == 3 and s.action_for_keys({"s"}) == 3
    assert s.action_for_keys({"space"}) == 1
    assert s.action_for_keys({"up", "space"}) == 4
    assert s.action_for_keys({"x"}) == 0


def test_session_steps_resets_and_rejects_bad_actions(tiny_bundle):
    s = PlaySession(tiny_bundle, seed=0)
    first = s.frame.copy()
    r = s.step(2)
    assert r.frame.shape == (64, 64, 3) and r.frame.dtype == np.uint8
    assert s.step_count == 1 and r.latency_ms > 0
    s.reset(start=0)
    assert s.step_count == 0
    np.testing.assert_array_equal(s.frame, tiny_bundle.start_frames[0, -1].numpy())
    with pytest.raises(ValueError, match="99"):
        s.step(99)
    with pytest.raises(IndexError, match="start window"):
        s.reset(start=10_000)
    assert first.shape == (64, 64, 3)


def test_headless_window_plays_scripted_keys_and_saves_frames(tiny_bundle, tmp_path):
    session = PlaySession(tiny_bundle, seed=0)
    cfg = WindowConfig(scale=2, headless=True, steps=20, keys="up:4,down:4", save_frames=str(tmp_path / "frames"),
                       screenshot=str(tmp_path / "shot.png"))
    played = PygameApp(session, cfg).run()
    assert played == 20 and session.step_count == 20
    saved = sorted((tmp_path / "frames").glob("*.png"))
    assert len(saved) == 20
    import pygame

    img = pygame.image.load(str(tmp_path / "shot.png"))
    assert img.get_size() == (128, 128)


# -- the pygame front-end's modes: help, pause, side by side, latent codes, recording --------------

def _latent_bundle(bundle, *, with_lam: bool = False):
    """The tiny bundle re-labelled as conditioned on latent-action codes (one code per action id),
    or, ``with_lam``, with a tiny LAM and dynamics conditioned on its codes."""
    import dataclasses

    if not with_lam:
        return dataclasses.replace(bundle, conditioning="latent",
                                   action_meanings=[f"z{k}" for k in range(bundle.dynamics_config.num_actions)])
    import torch
    from conftest import perturb_
    from worldmodel.config import get_preset
    from worldmodel.dynamics import DynamicsModel
    from worldmodel.lam import LatentActionModel

    lam_cfg = get_preset("tiny").lam
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg).eval()
    dyn_cfg = dataclasses.replace(bundle.dynamics_config, num_actions=lam_cfg.num_codes)
    dynamics = perturb_(DynamicsModel(dyn_cfg)).eval()
    return dataclasses.replace(bundle, conditioning="latent", dynamics=dynamics, dynamics_config=dyn_cfg,
                               lam=lam, lam_config=lam_cfg,
                               action_meanings=[f"z{k}" for k in range(lam_cfg.num_codes)])


def _headless(**kw) -> WindowConfig:
    return WindowConfig(**{"scale": 1, "headless": True, **kw})


def test_key_script_names_the_command_keys():
    assert parse_key_script("up:1 sync pause:2 help reset quit") == [
        {"up"}, {"tab"}, {"p"}, {"p"}, {"h"}, {"r"}, {"escape"}]


def test_help_overlay_toggles_with_h_and_f1_and_lists_every_key(tiny_bundle):
    app = PygameApp(PlaySession(tiny_bundle, seed=0), _headless(scale=4))
    try:
        app._draw()
        plain = app.window_frame()
        assert not app.show_help
        assert app.press("h") and app.show_help
        app._draw()
        assert (app.window_frame() != plain).any()
        assert app.press("f1") and not app.show_help
        text = "\n".join(app.help_lines())
        for key in ("Up/W", "Down/S", "Space  FIRE", "Up/W+Space  RIGHTFIRE", "P ", "R ", "H / F1", "Esc"):
            assert key in text, key
        assert "Tab" not in text  # re-syncing exists in side-by-side mode only
        assert not app.press("escape")
    finally:
        app.close()


def test_pause_stops_stepping(tiny_bundle):
    session = PlaySession(tiny_bundle, seed=0)
    played = PygameApp(session, _headless(steps=10, keys="p:1 none:4 pause:1 up:4")).run()
    assert played == 5 and session.step_count == 5  # ticks 0-4 paused


def test_real_game_keeps_an_aligned_history_and_restarts_when_an_episode_ends(tmp_path):
    import envs
    from play.real_game import RealGame
    from play.recording import EpisodeRecorder
    from recorders.dataset import EpisodeDataset

    meta = dict(game="pong", frame_size=[64, 64], action_meanings=list("abcdef"))
    recorder = EpisodeRecorder(tmp_path / "real", meta)
    real = RealGame("pong", history=4, seed=3, max_episode_steps=8, recorder=recorder)
    env = envs.make("pong", max_episode_steps=8)
    expected = [env.reset(seed=3)[0]]
    actions = [2, 2, 3, 1, 0, 3]
    for a in actions:
        real.step(a)
        expected.append(env.step(a)[0])
    frames, acts = real.history()
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, np.stack(expected[-4:]))
    np.testing.assert_array_equal(acts, actions[-3:])  # acts[i] was taken after frames[i]
    real.step(0)
    r = real.step(0)
    assert r.truncated and real.episode == 2 and real.step_count == 0
    assert real.history()[0].shape == (1, 64, 64, 3) and real.history()[1].shape == (0,)
    real.close()
    env.close()
    ds = EpisodeDataset(tmp_path / "real")
    assert len(ds) == 1 and len(ds[0]) == 8 and ds[0].truncated[-1]  # the new episode has no step yet


def test_side_by_side_resync_puts_the_real_frames_in_the_dream(tiny_bundle, tmp_path):
    session = PlaySession(tiny_bundle, seed=0)
    # Ten steps, then at tick 10 P and Tab go down together: pause (nothing steps) and re-sync.
    app = PygameApp(session, _headless(side_by_side=True, steps=11, keys="up:5 down:5 p+sync:1",
                                       screenshot=str(tmp_path / "shot.png")))
    assert "Tab" in "\n".join(app.help_lines())
    played = app.run()
    assert played == 10 and app.real.step_count == 10 and session.step_count == 0
    np.testing.assert_array_equal(session.frame, app.real.frame)
    np.testing.assert_array_equal(session.sim.last_frames[0], app.real.frame)
    import pygame

    assert pygame.image.load(str(tmp_path / "shot.png")).get_size() == (128, 64)  # real | dream


def test_resync_needs_side_by_side(tiny_bundle):
    app = PygameApp(PlaySession(tiny_bundle, seed=0), _headless())
    try:
        app.resync()
        assert "side_by_side" in app.message
    finally:
        app.close()


def test_latent_checkpoints_are_played_with_digit_keys(tiny_bundle, tmp_path):
    from recorders.dataset import EpisodeDataset

    session = PlaySession(_latent_bundle(tiny_bundle), seed=0)
    # 3 goes down at tick 0; 9 is no code of this 6-code checkpoint; 5 goes down at tick 5.
    app = PygameApp(session, _headless(steps=6, keys="3:2 none:2 9:1 5:1", record="dream",
                                       record_out=str(tmp_path / "rec")))
    assert app.controls.latent and app.controls.status() == "code 0/6"
    assert app.run() == 6 and app.controls.code == 5
    ds = EpisodeDataset(tmp_path / "rec" / "dream")
    assert ds.metadata["conditioning"] == "latent" and len(ds.metadata["action_meanings"]) == 6
    np.testing.assert_array_equal(np.concatenate([ds[i].actions for i in range(len(ds))]), [3, 3, 3, 3, 3, 5])


def test_latent_code_controls_map_digits_and_keypad():
    from play.controls import LatentCodeControls

    c = LatentCodeControls(4)
    assert c.action({"up"}) == 0
    assert c.press("[2]") == "latent code 2" and c.action(set()) == 2
    assert "0-3" in c.press("7") and c.code == 2
    assert c.press("up") is None and c.code == 2


def test_latent_keys_are_refused_for_an_actions_checkpoint_and_the_reverse(tiny_bundle):
    with pytest.raises(ValueError, match="conditioning='actions'"):
        PygameApp(PlaySession(tiny_bundle, seed=0), _headless(latent_keys=True))
    latent = PlaySession(_latent_bundle(tiny_bundle), seed=0)
    with pytest.raises(ValueError, match="conditioning='latent'"):
        PygameApp(latent, _headless(latent_keys=False))
    with pytest.raises(ValueError, match="latent-action model"):
        PygameApp(latent, _headless(side_by_side=True))


def test_latent_side_by_side_resync_labels_the_real_frames_with_the_lam(tiny_bundle):
    session = PlaySession(_latent_bundle(tiny_bundle, with_lam=True), seed=0)
    app = PygameApp(session, _headless(side_by_side=True, steps=5, keys="up+2:4 pause+sync:1"))
    assert app.run() == 4 and app.controls.code == 2
    np.testing.assert_array_equal(session.frame, app.real.frame)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_recording_writes_datasets_and_a_video(tiny_bundle, tmp_path, suffix):
    if suffix == ".mp4":
        pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio
    from recorders.dataset import EpisodeDataset, validate_dataset

    session = PlaySession(tiny_bundle, seed=0)
    video = tmp_path / f"play{suffix}"
    app = PygameApp(session, _headless(side_by_side=True, steps=13, keys="up:4 reset:1 down:4 sync:1 up:3",
                                       record="both", record_out=str(tmp_path / "rec"), video=str(video)))
    assert app.run() == 13
    for side in ("dream", "real"):
        assert validate_dataset(tmp_path / "rec" / side) == [], side
    real = EpisodeDataset(tmp_path / "rec" / "real")
    assert len(real) == 1 and real.metadata["source"] == "real"
    ep = real[0]
    # R and Tab are no Pong keys: their ticks play NOOP in the real game.
    np.testing.assert_array_equal(ep.actions, [2, 2, 2, 2, 0, 3, 3, 3, 3, 0, 2, 2, 2])
    np.testing.assert_array_equal(ep.frames[-1], app.real.frame)
    assert ep.truncated[-1] and not ep.terminated.any()
    dream = EpisodeDataset(tmp_path / "rec" / "dream")
    assert len(dream) >= 3  # start, reset, re-sync: one episode each (more where the dream predicts an end)
    assert sum(len(dream[i]) for i in range(len(dream))) == 13
    assert dream[len(dream) - 1].truncated[-1]
    if suffix == ".gif":
        frames = imageio.mimread(video)
        count, shape = len(frames), frames[0].shape
    else:
        with imageio.get_reader(video, format="FFMPEG") as reader:  # its len() is inf: no list(reader)
            count, shape = reader.count_frames(), reader.get_data(0).shape
    assert count == 13 and shape[:2] == (64, 128)


def test_a_crash_mid_game_keeps_the_recorded_episodes(tiny_bundle, tmp_path):
    from recorders.dataset import EpisodeDataset

    app = PygameApp(PlaySession(tiny_bundle, seed=0), _headless(steps=20, keys="up:3 reset:1 up:10", record="dream",
                                                                record_out=str(tmp_path / "rec")))
    step, calls = app._step, []

    def failing_step():
        calls.append(1)
        if len(calls) > 6:
            raise KeyboardInterrupt
        step()

    app._step = failing_step
    with pytest.raises(KeyboardInterrupt):
        app.run()
    ds = EpisodeDataset(tmp_path / "rec" / "dream")
    assert sum(len(ds[i]) for i in range(len(ds))) == 6


def test_window_config_rejects_bad_recording_options(tmp_path):
    with pytest.raises(ValueError, match="'film'"):
        WindowConfig(record="film", record_out=str(tmp_path))
    with pytest.raises(ValueError, match="record_out"):
        WindowConfig(record="dream")
    with pytest.raises(ValueError, match="side_by_side"):
        WindowConfig(record="real", record_out=str(tmp_path))
    with pytest.raises(ValueError, match="avi"):
        WindowConfig(video=str(tmp_path / "x.avi"))
