"""Object positions read out of Pong and Breakout frames by colour, for scripted play and evaluation.

Works on 64x64 frames made by area averaging from ALE's 210x160 screens, where the ball
(2x4 emulator pixels) becomes a faint blob of about one pixel and a paddle a short bar
(Pong: 4x16, upright; Breakout: 16x4, lying). Positions are in output pixels, rows counted
from the top, columns from the left. :func:`readout_for` gives the evaluation one game's
read-out (:class:`GameReadout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ALE Pong's palette (RGB).
BACKGROUND = np.array([144, 72, 17], np.float32)
PLAYER_GREEN = np.array([92, 186, 92], np.float32)
OPPONENT_ORANGE = np.array([213, 130, 74], np.float32)
BALL_WHITE = np.array([236, 236, 236], np.float32)

# Regions in 210x160 emulator coordinates, scaled to the frame size on use.
_PLAY_ROWS = (34, 194)          # between the top and bottom walls
_PLAYER_COLS = (140, 144)
_OPPONENT_COLS = (16, 20)
_PADDLE_EMU = (4, 16)           # paddle width, height


def _scaled(bounds: tuple[int, int], src: int, dst: int, pad: int = 0, inner: bool = False) -> slice:
    """Scale an emulator interval to output pixels: covering it, or (``inner``) inside it."""
    lo, hi = bounds[0] * dst / src, bounds[1] * dst / src
    lo, hi = (int(np.ceil(lo)), int(np.floor(hi))) if inner else (int(np.floor(lo)), int(np.ceil(hi)))
    lo, hi = lo - pad, hi + pad
    return slice(max(lo, 0), min(hi, dst))


def _mix_weight(frames: np.ndarray, colour: np.ndarray, background: np.ndarray = BACKGROUND) -> np.ndarray:
    """Per-pixel share of ``colour`` in a blend of it with ``background``, in [0, 1]."""
    direction = colour - background
    share = ((frames.astype(np.float32) - background) @ direction) / float(direction @ direction)
    residual = frames.astype(np.float32) - background - share[..., None] * direction
    share = np.where(np.linalg.norm(residual, axis=-1) < 40.0, share, 0.0)
    return np.clip(share, 0.0, 1.0)


def _centroid_rows(weight: np.ndarray, min_mass: float) -> np.ndarray:
    """Mass-weighted mean row of ``weight (..., H, W)``; NaN where the mass is below ``min_mass``."""
    rows = np.arange(weight.shape[-2], dtype=np.float32)[:, None]
    mass = weight.sum(axis=(-2, -1))
    y = (weight * rows).sum(axis=(-2, -1)) / np.maximum(mass, 1e-6)
    return np.where(mass >= min_mass, y, np.nan)


def _paddle_weight(frames: np.ndarray, player: bool) -> tuple[np.ndarray, int]:
    """Per-pixel paddle colour share in the paddle's columns between the walls, and the first row's index."""
    h, w = frames.shape[-3], frames.shape[-2]
    cols = _scaled(_PLAYER_COLS if player else _OPPONENT_COLS, 160, w, pad=1)
    rows = _scaled(_PLAY_ROWS, 210, h, inner=True)
    return _mix_weight(frames[..., rows, cols, :], PLAYER_GREEN if player else OPPONENT_ORANGE), rows.start


def paddle_y(frames: np.ndarray, *, player: bool = True) -> np.ndarray:
    """Vertical centre of the player's (green, right) or opponent's (orange, left) paddle.

    Args:
        frames: ``(..., H, W, 3)`` uint8 Pong frames.
        player: the green paddle (True) or the orange one (False).

    Returns:
        ``(...)`` float32 row of the paddle's centre in pixels; NaN where it is not visible.
    """
    weight, top = _paddle_weight(frames, player)
    y = _centroid_rows(weight, min_mass=_visible_mass(frames))
    return (y + top).astype(np.float32)


def _paddle_rows(frames: np.ndarray) -> float:
    """A paddle's height (16 emulator rows) in output rows at this frame size."""
    return _PADDLE_EMU[1] * frames.shape[-3] / 210


def _visible_mass(frames: np.ndarray) -> float:
    """The least colour mass of a visible paddle: a quarter of a paddle's height, one output pixel wide."""
    return 0.25 * _paddle_rows(frames)


def _paddle_mass(frames: np.ndarray) -> float:
    """Colour mass (pixels' colour share summed) of a whole paddle, 4x16 emulator pixels, at this frame size."""
    return _paddle_rows(frames) * _PADDLE_EMU[0] * frames.shape[-2] / 160


def paddle_is_bar(frames: np.ndarray, *, player: bool = True) -> np.ndarray:
    """Whether a paddle is drawn as a paddle: visible (:func:`paddle_y`), its colour within
    rows spanning at most 2.5 paddle heights, and at most twice a paddle's colour mass.

    A dream that smears a paddle along its column (a streak of its colour or of noise)
    still has the paddle's colour there, so :func:`paddle_y` alone would count it as
    visible. On real held-out frames the rule fails for under 0.2% of frames (ALE's reset
    screen, a ball passing the paddle's columns).

    Args:
        frames: ``(..., H, W, 3)`` uint8 Pong frames.
        player: the green paddle (True) or the orange one (False).

    Returns:
        ``(...)`` bool.
    """
    shown, shaped = _paddle_shown_and_shaped(frames, player)
    return shown & shaped


def _paddle_shown_and_shaped(frames: np.ndarray, player: bool) -> tuple[np.ndarray, np.ndarray]:
    weight, _ = _paddle_weight(frames, player)
    return _bar_shown_and_shaped(weight.sum(-1), visible=_visible_mass(frames), full=_paddle_mass(frames),
                                 length=_paddle_rows(frames))


def _bar_shown_and_shaped(line_mass: np.ndarray, *, visible: float, full: float,
                          length: float) -> tuple[np.ndarray, np.ndarray]:
    """``line_mass (..., L)``: a paddle's colour mass per line along its long axis -> ``(shown,
    shaped)``, each ``(...)`` bool. Shown: at least ``visible`` mass. Shaped (True where not
    shown): at most twice ``full``, within lines spanning at most 2.5 ``length``. A bar is both."""
    coloured = line_mass > 0.3
    index = np.arange(line_mass.shape[-1])
    first = np.where(coloured, index, line_mass.shape[-1]).min(-1)
    last = np.where(coloured, index, -1).max(-1)
    span = np.maximum(last - first + 1, 0)
    mass = line_mass.sum(-1)
    shown = mass >= visible
    return shown, ~shown | ((mass <= 2.0 * full) & (span <= 2.5 * length))


def ball_xy(frames: np.ndarray) -> np.ndarray:
    """Centre of the ball.

    The ball is looked for between the walls and between the paddles' columns, so a ball
    touching a paddle is reported as not visible.

    Args:
        frames: ``(..., H, W, 3)`` uint8 Pong frames.

    Returns:
        ``(..., 2)`` float32 ``(x, y)`` in pixels; NaN where no ball is visible.
    """
    h, w = frames.shape[-3], frames.shape[-2]
    rows = _scaled(_PLAY_ROWS, 210, h, inner=True)
    cols = slice(_scaled(_OPPONENT_COLS, 160, w, pad=1).stop, _scaled(_PLAYER_COLS, 160, w, pad=1).start)
    return _blob_xy(_mix_weight(frames[..., rows, cols, :], BALL_WHITE), rows.start, cols.start)


def _blob_xy(weight: np.ndarray, row0: int, col0: int) -> np.ndarray:
    """Centre ``(..., 2)`` float32 ``(x, y)`` of a ball's colour share ``weight (..., h, w)`` cut from
    the frame at ``(row0, col0)``; shares under 0.08 are ignored, NaN where less than 0.15 remains."""
    weight = np.where(weight > 0.08, weight, 0.0)
    mass = weight.sum(axis=(-2, -1))
    ys = np.arange(weight.shape[-2], dtype=np.float32)[:, None]
    xs = np.arange(weight.shape[-1], dtype=np.float32)[None, :]
    y = (weight * ys).sum(axis=(-2, -1)) / np.maximum(mass, 1e-6) + row0
    x = (weight * xs).sum(axis=(-2, -1)) / np.maximum(mass, 1e-6) + col0
    out = np.stack([x, y], axis=-1).astype(np.float32)
    return np.where((mass >= 0.15)[..., None], out, np.nan)


WALL_GREY = np.array([236, 236, 236], np.float32)
_WALL_ROWS = ((24, 34), (194, 210))


def pong_screen_parts(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Which checks of a sane Pong screen a frame passes: its parts shown, its paddles drawn as paddles.

    Args:
        frames: ``(..., H, W, 3)`` uint8 Pong frames.

    Returns:
        ``{"background", "walls", "player_paddle", "player_paddle_shape", "opponent_paddle",
        "opponent_paddle_shape"}`` -> ``(...)`` bool: the play field is mostly the brown
        background (>= 80% of its pixels within 40 of it), both walls' rows are grey, each
        paddle is shown, and where shown drawn as a paddle, not smeared along its column or
        drawn twice (both together: :func:`paddle_is_bar`). Shown and shape are apart because
        real play hides the opponent's paddle over the top wall after each point (about 11% of
        random play's frames), but never draws it twice.
    """
    h = frames.shape[-3]
    background = _mostly(frames[..., _scaled(_PLAY_ROWS, 210, h, inner=True), :, :], BACKGROUND)
    walls = np.ones(frames.shape[:-3], bool)
    for rows in _WALL_ROWS:
        walls &= _band_is(frames[..., _scaled(rows, 210, h, inner=True), :, :], WALL_GREY)
    parts = {"background": background, "walls": walls}
    for name, player in (("player_paddle", True), ("opponent_paddle", False)):
        parts[name], parts[f"{name}_shape"] = _paddle_shown_and_shaped(frames, player)
    return parts


def _mostly(region: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``region (..., h, w, 3)`` -> ``(...)`` bool: at least 80% of its pixels within 40 of ``colour``."""
    return (np.linalg.norm(region.astype(np.float32) - colour, axis=-1) < 40.0).mean(axis=(-2, -1)) >= 0.8


def _band_is(region: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``region (..., h, w, 3)`` -> ``(...)`` bool: its mean colour is within 40 of ``colour``."""
    return np.linalg.norm(region.astype(np.float32).mean(axis=(-3, -2)) - colour, axis=-1) < 40.0


# -- Breakout ---------------------------------------------------------------------------------
# ALE Breakout's palette (RGB): the paddle, the ball and the top row of bricks share one red.
BREAKOUT_BLACK = np.array([0, 0, 0], np.float32)
BREAKOUT_RED = np.array([200, 72, 72], np.float32)
BREAKOUT_GREY = np.array([142, 142, 142], np.float32)

# Regions in 210x160 emulator coordinates.
_BO_FIELD_COLS = (8, 152)        # between the side walls
_BO_TOP_WALL_ROWS = (17, 32)
_BO_SIDE_WALLS = ((0, 8), (152, 160))
_BO_BRICK_ROWS = (57, 93)
_BO_PADDLE_ROWS = (189, 193)
_BO_PADDLE_EMU = (16, 4)         # width (8 once the ball has reached the top wall), height


def _breakout_paddle_weight(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Red share in the paddle's rows between the side walls, and the first column's index."""
    h, w = frames.shape[-3], frames.shape[-2]
    rows = _scaled(_BO_PADDLE_ROWS, 210, h)
    cols = _scaled(_BO_FIELD_COLS, 160, w, inner=True)   # the walls' foot beside the paddle is red too
    return _mix_weight(frames[..., rows, cols, :], BREAKOUT_RED, BREAKOUT_BLACK), cols.start


def _breakout_paddle_sizes(frames: np.ndarray) -> tuple[float, float, float]:
    """A whole (wide) paddle's colour mass, the least visible mass (a quarter of a narrow
    paddle), and the wide paddle's width in output columns, at this frame size."""
    h, w = frames.shape[-3], frames.shape[-2]
    width = _BO_PADDLE_EMU[0] * w / 160
    full = width * _BO_PADDLE_EMU[1] * h / 210
    return full, full / 8, width


def _breakout_paddle_columns(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The paddle's red mass per column (the largest run of red columns in its rows; the ball
    passes those rows when it is missed), the red mass outside that run, and the first column.

    Returns:
        ``paddle (..., cols)``, ``rest (...)``, the index of the first column.
    """
    weight, left = _breakout_paddle_weight(frames)
    col_mass = weight.sum(-2)
    lead, cols = col_mass.shape[:-1], col_mass.shape[-1]
    flat = col_mass.reshape(-1, cols)
    coloured = flat > 0.1
    starts = coloured & ~np.pad(coloured, ((0, 0), (1, 0)))[:, :-1]
    run = np.where(coloured, np.cumsum(starts, axis=1), 0)                # 0: no colour, 1, 2, ...: runs
    run_mass = np.zeros((len(flat), cols + 1))
    np.add.at(run_mass, (np.repeat(np.arange(len(flat)), cols), run.ravel()), flat.ravel())
    run_mass[:, 0] = 0.0
    paddle = np.where((run == run_mass.argmax(-1)[:, None]) & coloured, flat, 0.0)
    rest = flat.sum(-1) - paddle.sum(-1)
    return paddle.reshape(*lead, cols), rest.reshape(lead), left


def breakout_paddle_x(frames: np.ndarray) -> np.ndarray:
    """Horizontal centre of Breakout's paddle (the largest run of red columns in its rows).

    Args:
        frames: ``(..., H, W, 3)`` uint8 Breakout frames.

    Returns:
        ``(...)`` float32 column of the paddle's centre in pixels; NaN where it is not visible.
    """
    paddle, _, left = _breakout_paddle_columns(frames)
    mass = paddle.sum(-1)
    x = (paddle * np.arange(paddle.shape[-1], dtype=np.float32)).sum(-1) / np.maximum(mass, 1e-6) + left
    return np.where(mass >= _breakout_paddle_sizes(frames)[1], x, np.nan).astype(np.float32)


BALL_MASS = 1.25
"""A ball's colour mass at 64x64 (2x4 emulator pixels make about one output pixel), with a margin."""


def breakout_paddle_is_bar(frames: np.ndarray) -> np.ndarray:
    """Whether Breakout's paddle is drawn as a paddle: its largest run of red columns is
    visible, has at most twice a wide paddle's colour mass and spans at most 2.5 paddle widths
    (:func:`paddle_is_bar`'s rule), and at most a ball's mass (:data:`BALL_MASS`) is red
    elsewhere in the paddle's rows.

    Args:
        frames: ``(..., H, W, 3)`` uint8 Breakout frames.

    Returns:
        ``(...)`` bool.
    """
    shown, shaped = _breakout_paddle_shown_and_shaped(frames)
    return shown & shaped


def _breakout_paddle_shown_and_shaped(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    paddle, rest, _ = _breakout_paddle_columns(frames)
    full, visible, width = _breakout_paddle_sizes(frames)
    shown, shaped = _bar_shown_and_shaped(paddle, visible=visible, full=full, length=width)
    return shown, ~shown | (shaped & (rest <= BALL_MASS))


def breakout_ball_xy(frames: np.ndarray) -> np.ndarray:
    """Centre of Breakout's ball, looked for between the side walls, below the bricks and above
    the paddle's rows (a ball among the bricks or at the paddle is reported as not visible).

    Args:
        frames: ``(..., H, W, 3)`` uint8 Breakout frames.

    Returns:
        ``(..., 2)`` float32 ``(x, y)`` in pixels; NaN where no ball is visible.
    """
    h, w = frames.shape[-3], frames.shape[-2]
    rows = slice(_scaled(_BO_BRICK_ROWS, 210, h).stop, _scaled(_BO_PADDLE_ROWS, 210, h).start)
    cols = _scaled(_BO_FIELD_COLS, 160, w, inner=True)
    weight = _mix_weight(frames[..., rows, cols, :], BREAKOUT_RED, BREAKOUT_BLACK)
    return _blob_xy(weight, rows.start, cols.start)


def breakout_screen_parts(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Which checks of a sane Breakout screen a frame passes (the bricks may be gone in play).

    Args:
        frames: ``(..., H, W, 3)`` uint8 Breakout frames.

    Returns:
        ``{"background", "walls", "player_paddle", "player_paddle_shape"}`` -> ``(...)`` bool:
        the field between the bricks and the paddle is mostly black, the top and both side
        walls are grey, the paddle is shown, and where shown drawn as a paddle (both together:
        :func:`breakout_paddle_is_bar`).
    """
    h, w = frames.shape[-3], frames.shape[-2]
    rows = slice(_scaled(_BO_BRICK_ROWS, 210, h).stop, _scaled(_BO_PADDLE_ROWS, 210, h).start)
    background = _mostly(frames[..., rows, _scaled(_BO_FIELD_COLS, 160, w, inner=True), :], BREAKOUT_BLACK)
    walls = _band_is(frames[..., _scaled(_BO_TOP_WALL_ROWS, 210, h, inner=True), :, :], BREAKOUT_GREY)
    side_rows = slice(_scaled(_BO_TOP_WALL_ROWS, 210, h).stop, rows.stop)
    for cols in _BO_SIDE_WALLS:
        walls &= _band_is(frames[..., side_rows, _scaled(cols, 160, w, inner=True), :], BREAKOUT_GREY)
    shown, shaped = _breakout_paddle_shown_and_shaped(frames)
    return {"background": background, "walls": walls, "player_paddle": shown, "player_paddle_shape": shaped}


# -- per game ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GameReadout:
    """What the evaluation reads out of one game's frames.

    Attributes:
        ball_xy: ``(..., H, W, 3)`` uint8 -> ``(..., 2)`` float32 ball centre ``(x, y)``, NaN if unseen.
        paddle: frames -> ``(...)`` float32 position of the player's paddle along the axis it
            moves on (Pong: its row; Breakout: its column), NaN if unseen.
        paddle_is_bar: frames -> ``(...)`` bool, the player's paddle is drawn as a paddle.
        screen_parts: frames -> ``{check: (...) bool}``, the checks of a sane screen a frame
            passes: each part shown (``<part>``) and, where shown, drawn right (``<part>_shape``).
        towards_lower, towards_higher: the actions that move the player's paddle towards a
            lower and a higher position (Pong: UP 2 and DOWN 3; Breakout: LEFT 3 and RIGHT 2).
    """

    ball_xy: Callable[[np.ndarray], np.ndarray]
    paddle: Callable[[np.ndarray], np.ndarray]
    paddle_is_bar: Callable[[np.ndarray], np.ndarray]
    screen_parts: Callable[[np.ndarray], dict[str, np.ndarray]]
    towards_lower: int
    towards_higher: int


READOUTS = {
    "pong": GameReadout(ball_xy, paddle_y, paddle_is_bar, pong_screen_parts, towards_lower=2, towards_higher=3),
    "breakout": GameReadout(breakout_ball_xy, breakout_paddle_x, breakout_paddle_is_bar, breakout_screen_parts,
                            towards_lower=3, towards_higher=2),
}


def readout_for(game: str) -> GameReadout | None:
    """The read-out of ``game`` (see :data:`READOUTS`), or None for a game without one."""
    return READOUTS.get(game)
