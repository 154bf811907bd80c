"""The frame contract: area resize keeps small objects, the real envs give 64x64 uint8 frames,
and the Pong readout finds paddles and ball."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.readout import BACKGROUND, BALL_WHITE, OPPONENT_ORANGE, PLAYER_GREEN, ball_xy, paddle_y
from envs.wrappers import area_resize, area_resize_matrix

H_IN, W_IN, OUT = 210, 160, 64


def _one_pixel_frames(positions, bg: int, fg: int) -> np.ndarray:
    frames = np.full((len(positions), H_IN, W_IN, 3), bg, np.uint8)
    for i, (r, c) in enumerate(positions):
        frames[i, r, c] = fg
    return frames


def _expected_centre(r: int, c: int) -> tuple[float, float]:
    """Centre of input pixel (r, c) in output pixel coordinates (pixel i spans [i-0.5, i+0.5))."""
    return (r + 0.5) * OUT / H_IN - 0.5, (c + 0.5) * OUT / W_IN - 0.5


# Every row (with varied columns) and every column (with varied rows).
_POSITIONS = [(r, (r * 7) % W_IN) for r in range(H_IN)] + [((c * 11) % H_IN, c) for c in range(W_IN)]


@pytest.mark.parametrize("chunk", range(0, len(_POSITIONS), 64))
def test_area_resize_keeps_one_pixel_object(chunk):
    bg, fg = 20, 255
    positions = _POSITIONS[chunk:chunk + 64]
    out = area_resize(_one_pixel_frames(positions, bg, fg), OUT, OUT)
    assert out.shape == (len(positions), OUT, OUT, 3) and out.dtype == np.uint8
    # The smallest share one input pixel can keep in some output pixel is
    # (0.5 / (210/64)) * (0.5 / (160/64)) ~ 3.05%: ~7 levels of the 235 contrast.
    min_peak = 0.025 * (fg - bg)
    ys, xs = np.mgrid[0:OUT, 0:OUT]
    for (r, c), o in zip(positions, out):
        w = o[..., 0].astype(np.float64) - bg
        assert (o[..., 0] == o[..., 1]).all() and (o[..., 1] == o[..., 2]).all()
        assert w.min() >= 0, f"({r}, {c}): output darker than the background"
        assert w.max() >= min_peak, f"object at ({r}, {c}) faded to {w.max()} levels over the background"
        # Only the output pixels whose area covers the input pixel are touched.
        assert (w > 0).sum() <= 4, f"object at ({r}, {c}) spread over {(w > 0).sum()} pixels"
        cy, cx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
        ey, ex = _expected_centre(r, c)
        assert abs(cy - ey) <= 0.5 and abs(cx - ex) <= 0.5, \
            f"({r}, {c}): centre ({cy:.2f}, {cx:.2f}) vs ({ey:.2f}, {ex:.2f})"


def test_area_resize_batched_equals_single_and_uniform_is_kept():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, H_IN, W_IN, 3), dtype=np.uint8)
    batched = area_resize(frames, OUT, OUT)
    for f, b in zip(frames, batched):
        np.testing.assert_array_equal(area_resize(f, OUT, OUT), b)
    flat = np.full((H_IN, W_IN, 3), 123, np.uint8)
    np.testing.assert_array_equal(area_resize(flat, OUT, OUT), np.full((OUT, OUT, 3), 123, np.uint8))
    # Mean brightness is preserved by area averaging (up to rounding).
    assert abs(batched.astype(np.float64).mean() - frames.astype(np.float64).mean()) < 0.5


def test_area_resize_rejects_bad_frames():
    with pytest.raises(ValueError, match="float32"):
        area_resize(np.zeros((H_IN, W_IN, 3), np.float32), OUT, OUT)
    with pytest.raises(ValueError, match=r"\(210, 160\)"):
        area_resize(np.zeros((H_IN, W_IN), np.uint8), OUT, OUT)


@pytest.mark.parametrize("n_in,n_out", [(210, 64), (160, 64), (64, 64), (7, 3), (400, 84), (10, 1)])
def test_area_resize_matrix_rows_sum_to_one(n_in, n_out):
    m = area_resize_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and m.dtype == np.float32
    assert (m >= 0).all()
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    # Each input pixel is covered exactly once in total (columns carry n_out / n_in each).
    np.testing.assert_allclose(m.sum(axis=0), n_out / n_in, atol=1e-6)


def test_area_resize_matrix_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match="in_size=0"):
        area_resize_matrix(0, 64)


@pytest.fixture(scope="module")
def pong_env():
    env = envs.make("pong")
    yield env
    env.close()


def test_make_pong_spaces(pong_env):
    space = pong_env.observation_space
    assert isinstance(space, gym.spaces.Box)
    assert space.shape == (64, 64, 3) and space.dtype == np.uint8
    assert (space.low == 0).all() and (space.high == 255).all()
    assert isinstance(pong_env.action_space, gym.spaces.Discrete) and pong_env.action_space.n == 6
    assert pong_env.get_wrapper_attr("game_spec").name == "pong"
    obs, _ = pong_env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and space.contains(obs)
    obs, reward, term, trunc, _ = pong_env.step(2)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert isinstance(float(reward), float)


def test_make_unknown_game_names_it():
    with pytest.raises(ValueError, match="no_such_game"):
        envs.make("no_such_game")
    with pytest.raises(ValueError, match="no_such_game"):
        envs.get_game("no_such_game")


def test_make_rejects_bad_options():
    with pytest.raises(ValueError, match="frame_skip"):
        envs.make("pong", frame_skip=0)
    with pytest.raises(ValueError, match="sticky_actions"):
        envs.make("pong", sticky_actions=1.5)


def test_readout_on_real_frames(pong_trajectory):
    frames, _ = pong_trajectory
    py = paddle_y(frames)
    assert py.shape == (len(frames),) and py.dtype == np.float32
    assert np.isfinite(py).all(), "the player's paddle is always on screen"
    assert ((py >= 0) & (py < 64)).all()
    oy = paddle_y(frames, player=False)
    assert np.isfinite(oy[-5:]).all() and ((oy[np.isfinite(oy)] >= 0) & (oy[np.isfinite(oy)] < 64)).all()
    ball = ball_xy(frames)
    assert ball.shape == (len(frames), 2) and ball.dtype == np.float32
    seen = np.isfinite(ball).all(axis=1)
    assert seen[-5:].all(), "the ball is in play by the end of the trajectory"
    assert (np.isfinite(ball).all(axis=1) == np.isfinite(ball).any(axis=1)).all()
    assert ((ball[seen] >= 0) & (ball[seen] < 64)).all()
    assert np.ptp(ball[seen][:, 0]) > 1.0, "the ball moves"
    # Batched and single-frame readouts agree.
    np.testing.assert_array_equal(ball_xy(frames[-1]), ball[-1])
    np.testing.assert_array_equal(paddle_y(frames[-1]), py[-1])


def test_readout_positions_on_synthetic_frames():
    bg = BACKGROUND.astype(np.uint8)
    for top, by, bx in [(40, 60, 50), (100, 120, 80), (170, 180, 110)]:
        f = np.empty((H_IN, W_IN, 3), np.uint8)
        f[:] = bg
        f[top:top + 16, 140:144] = PLAYER_GREEN.astype(np.uint8)
        f[top + 4:top + 20, 16:20] = OPPONENT_ORANGE.astype(np.uint8)
        f[by:by + 4, bx:bx + 2] = BALL_WHITE.astype(np.uint8)
        o = area_resize(f, OUT, OUT)
        assert abs(paddle_y(o) - ((top + 8) * OUT / H_IN - 0.5)) < 0.5
        assert abs(paddle_y(o, player=False) - ((top + 12) * OUT / H_IN - 0.5)) < 0.5
        x, y = ball_xy(o)
        assert abs(x - ((bx + 1) * OUT / W_IN - 0.5)) < 0.5
        assert abs(y - ((by + 2) * OUT / H_IN - 0.5)) < 0.5
    empty = np.empty((OUT, OUT, 3), np.uint8)
    empty[:] = bg
    assert np.isnan(paddle_y(empty)) and np.isnan(ball_xy(empty)).all()


# -- Breakout ---------------------------------------------------------------------------------
def _breakout_screen(paddle_left: int | None, ball: tuple[int, int] | None, *, paddle_width: int = 16) -> np.ndarray:
    """A 210x160 Breakout screen: black field, grey walls, bricks, the paddle and the ball."""
    from envs.readout import BREAKOUT_GREY, BREAKOUT_RED

    f = np.zeros((H_IN, W_IN, 3), np.uint8)
    f[17:32] = BREAKOUT_GREY.astype(np.uint8)
    f[32:189, :8] = f[32:189, 152:] = BREAKOUT_GREY.astype(np.uint8)
    f[189:195, 152:] = BREAKOUT_RED.astype(np.uint8)          # the right wall's foot is red, as in ALE
    for i, colour in enumerate([(200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72),
                                (66, 72, 200)]):
        f[57 + 6 * i:63 + 6 * i, 8:152] = colour
    if paddle_left is not None:
        f[189:193, paddle_left:paddle_left + paddle_width] = BREAKOUT_RED.astype(np.uint8)
    if ball is not None:
        f[ball[0]:ball[0] + 4, ball[1]:ball[1] + 2] = BREAKOUT_RED.astype(np.uint8)
    return area_resize(f, OUT, OUT)


def test_breakout_readout_positions_on_synthetic_frames():
    from envs.readout import breakout_ball_xy, breakout_paddle_is_bar, breakout_paddle_x, breakout_screen_parts

    for left, (by, bx) in [(8, (100, 20)), (70, (150, 80)), (136, (180, 140))]:
        o = _breakout_screen(left, (by, bx))
        assert abs(breakout_paddle_x(o) - ((left + 8) * OUT / W_IN - 0.5)) < 0.5
        x, y = breakout_ball_xy(o)
        assert abs(x - ((bx + 1) * OUT / W_IN - 0.5)) < 0.5 and abs(y - ((by + 2) * OUT / H_IN - 0.5)) < 0.5
        assert breakout_paddle_is_bar(o)
        assert all(v for v in breakout_screen_parts(o).values())
    # The narrow paddle (after the ball reaches the top wall) is a paddle too.
    assert breakout_paddle_is_bar(_breakout_screen(60, None, paddle_width=8))
    # A ball passing the paddle's rows moves neither the paddle's read-out nor breaks it.
    alone, passing = _breakout_screen(70, None), _breakout_screen(70, (189, 20))
    assert breakout_paddle_x(passing) == pytest.approx(breakout_paddle_x(alone), abs=1e-4)
    assert breakout_paddle_is_bar(passing) and np.isnan(breakout_ball_xy(passing)).all()
    # No paddle: not visible; a red streak across the paddle's rows: visible but no paddle.
    none = _breakout_screen(None, None)
    assert np.isnan(breakout_paddle_x(none)) and not breakout_paddle_is_bar(none)
    assert not breakout_screen_parts(none)["player_paddle"]
    streak = _breakout_screen(8, None, paddle_width=144)
    assert np.isfinite(breakout_paddle_x(streak)) and not breakout_paddle_is_bar(streak)
    twice = np.maximum(_breakout_screen(10, None), _breakout_screen(120, None))
    assert not breakout_paddle_is_bar(twice)
    # A field painted over, and walls gone, are missing screen parts.
    painted = _breakout_screen(70, None)
    painted[30:56, 4:60] = (90, 90, 90)
    no_walls = _breakout_screen(70, None)
    no_walls[:, :3] = 0
    assert not breakout_screen_parts(painted)["background"] and not breakout_screen_parts(no_walls)["walls"]


def test_breakout_readout_on_real_frames():
    from envs.readout import breakout_ball_xy, breakout_paddle_x, readout_for

    env = envs.make("breakout")
    try:
        obs, _ = env.reset(seed=3)
        rng = np.random.default_rng(3)
        frames = [obs]
        for _ in range(120):
            obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            frames.append(obs)
            if term or trunc:
                break
    finally:
        env.close()
    frames = np.stack(frames)
    readout = readout_for("breakout")
    px = breakout_paddle_x(frames)
    assert np.isfinite(px).all() and ((px > 3) & (px < 60)).all() and np.ptp(px) > 2.0, "the paddle is seen moving"
    assert readout.paddle_is_bar(frames).all()
    for part, ok in readout.screen_parts(frames).items():
        assert ok.all(), part
    ball = breakout_ball_xy(frames)
    seen = np.isfinite(ball[:, 0])
    assert seen.any() and ((ball[seen] >= 0) & (ball[seen] < 64)).all()
    assert readout_for("cartpole") is None
