"""The real games, wrapped to the project's frame contract."""

from __future__ import annotations

import gymnasium as gym

from envs.games import FRAME_SIZE, GameSpec, get_game
from envs.wrappers import AreaResizeObservation


def make(
    game: str | GameSpec,
    *,
    frame_skip: int | None = None,
    sticky_actions: float = 0.0,
    size: int = FRAME_SIZE,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Make a real game whose observations are the frames the models use.

    Args:
        game: a name from :data:`envs.games.GAMES` (``"pong"``, ``"breakout"``, ``"cartpole"``).
        frame_skip: emulator frames per step, ALE games only (``None``: the game's default, 4).
        sticky_actions: ALE's ``repeat_action_probability`` (0 = deterministic).
        size: frame height and width in pixels.
        max_episode_steps: truncate episodes after this many steps (``None``: the game's own).
        render_mode: passed to the env for ALE games (``"rgb_array"`` or ``"human"``).

    Returns:
        A ``gymnasium.Env`` with ``Box(0, 255, (size, size, 3), uint8)`` observations and
        ``Discrete(n)`` actions in the order of ``spec.action_meanings``; ``env.unwrapped``
        is the real game, ``env.get_wrapper_attr("game_spec")`` its :class:`GameSpec`.

    Raises:
        ValueError: unknown game, or a frame skip below 1, or a sticky-action probability
            outside [0, 1].
    """
    spec = get_game(game) if isinstance(game, str) else game
    frame_skip = spec.frame_skip if frame_skip is None else frame_skip
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    if not 0.0 <= sticky_actions <= 1.0:
        raise ValueError(f"sticky_actions must be in [0, 1], got {sticky_actions}")
    if spec.is_ale:
        import ale_py

        gym.register_envs(ale_py)
        env = gym.make(
            spec.env_id,
            frameskip=frame_skip,
            repeat_action_probability=sticky_actions,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
            **spec.env_kwargs,
        )
    else:
        env = gym.make(spec.env_id, max_episode_steps=max_episode_steps, **spec.env_kwargs)
        if frame_skip != 1:
            raise ValueError(f"frame_skip applies to ALE games only; {spec.name} needs frame_skip=1, got {frame_skip}")
        env = gym.wrappers.AddRenderObservation(env, render_only=True)
    env = AreaResizeObservation(env, size, size)
    env = _GameSpecAttribute(env, spec)
    return env


class _GameSpecAttribute(gym.Wrapper):
    """Carries the :class:`GameSpec` so that ``env.get_wrapper_attr("game_spec")`` finds it."""

    def __init__(self, env: gym.Env, spec: GameSpec):
        super().__init__(env)
        self.game_spec = spec
        n = env.action_space.n
        if n != spec.num_actions:
            raise ValueError(f"{spec.env_id} has {n} actions but the registry lists {spec.action_meanings}")
