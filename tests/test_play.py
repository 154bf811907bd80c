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
