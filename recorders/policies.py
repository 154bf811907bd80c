"""Policies that play real games while the recorder writes episodes.

Every policy acts on a batch: ``policy(obs (B, H, W, 3) uint8) -> actions (B,) int64``, and
is told when a sub-environment starts a new episode through ``episode_start(i)``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from envs.games import GameSpec
from envs.readout import ball_xy, breakout_ball_xy, breakout_paddle_x, paddle_y


class Policy(Protocol):
    name: str

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...

    def episode_start(self, index: int) -> None: ...


class RandomRepeatPolicy:
    """Uniformly random actions, each held for a random number of steps.

    Holding actions gives the long presses a player makes (a paddle that travels the
    whole screen), which single-step random actions almost never produce.

    Args:
        num_envs: batch size.
        num_actions: size of the Discrete action space.
        max_repeat: each action is held for ``1..max_repeat`` steps, uniformly.
        seed: seed of the policy's generator.
    """

    name = "random"

    def __init__(self, num_envs: int, num_actions: int, *, max_repeat: int = 8, seed: int = 0):
        if max_repeat < 1:
            raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
        self.num_actions, self.max_repeat = num_actions, max_repeat
        self.rng = np.random.default_rng(seed)
        self._action = np.zeros(num_envs, np.int64)
        self._left = np.zeros(num_envs, np.int64)

    def episode_start(self, index: int) -> None:
        self._left[index] = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        renew = self._left <= 0
        n = int(renew.sum())
        self._action[renew] = self.rng.integers(self.num_actions, size=n)
        self._left[renew] = self.rng.integers(1, self.max_repeat + 1, size=n)
        self._left -= 1
        return self._action.copy()


def _towards(diff: np.ndarray, lower: int, higher: int, stay: int) -> np.ndarray:
    """``(B,)`` actions that move a paddle by ``diff`` pixels (target - position): ``lower``
    below -1, ``higher`` above +1, ``stay`` within the dead zone."""
    return np.where(diff < -1.0, lower, np.where(diff > 1.0, higher, stay)).astype(np.int64)


class _RandomBursts:
    """Bursts of random actions (a distracted player): a burst starts with probability
    ``epsilon / 4`` per step and holds one random action for 1-7 steps."""

    def __init__(self, num_envs: int, num_actions: int, epsilon: float, rng: np.random.Generator):
        self.num_actions, self.epsilon, self.rng = num_actions, epsilon, rng
        self._action = np.zeros(num_envs, np.int64)
        self._left = np.zeros(num_envs, np.int64)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        """Overwrite ``actions (B,)`` in place where a burst runs; returns them."""
        start = (self._left <= 0) & (self.rng.random(len(actions)) < self.epsilon / 4)
        self._action[start] = self.rng.integers(self.num_actions, size=int(start.sum()))
        self._left[start] = self.rng.integers(1, 8, size=int(start.sum()))
        busy = self._left > 0
        actions[busy] = self._action[busy]
        self._left[busy] -= 1
        return actions


class ScriptedPongPolicy:
    """A Pong player that tracks the ball, imperfectly.

    It moves its paddle towards the ball's row (or the centre when no ball is seen), with a
    random aiming offset drawn per episode, a dead zone, and a share of random actions,
    so that it wins some points and misses others.

    Args:
        num_envs: batch size.
        epsilon: probability of a random action at each step.
        seed: seed of the policy's generator.
    """

    name = "scripted_pong"
    UP, DOWN, NOOP, FIRE = 2, 3, 0, 1

    def __init__(self, num_envs: int, *, epsilon: float = 0.15, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self._offset = self.rng.normal(0.0, 2.0, size=num_envs)
        self._bursts = _RandomBursts(num_envs, 6, epsilon, self.rng)

    def episode_start(self, index: int) -> None:
        self._offset[index] = self.rng.normal(0.0, 2.0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        paddle = paddle_y(obs)
        ball = ball_xy(obs)
        target = np.where(np.isnan(ball[:, 1]), obs.shape[1] / 2, ball[:, 1]) + self._offset
        return self._bursts(_towards(np.nan_to_num(target - paddle), self.UP, self.DOWN, self.NOOP))


class ScriptedBreakoutPolicy:
    """A Breakout player that follows the ball, imperfectly.

    It launches the ball (FIRE) when none is seen, and moves its paddle towards the ball's
    column (its last seen column while the ball is among the bricks), with a random aiming
    offset drawn per episode, a dead zone, and bursts of random actions, so that it breaks
    bricks and misses sometimes. Random play breaks few bricks (7.7 per 1,000 steps on the
    README's held-out set), so the brick-breaking transitions a reward model learns from are rare.

    Args:
        num_envs: batch size.
        epsilon: about the probability of a random action at each step.
        seed: seed of the policy's generator.
    """

    name = "scripted_breakout"
    NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3

    def __init__(self, num_envs: int, *, epsilon: float = 0.15, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self._offset = self.rng.normal(0.0, 1.5, size=num_envs)
        self._target = np.full(num_envs, np.nan)
        self._bursts = _RandomBursts(num_envs, 4, epsilon, self.rng)

    def episode_start(self, index: int) -> None:
        self._offset[index] = self.rng.normal(0.0, 1.5)
        self._target[index] = np.nan

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        paddle = breakout_paddle_x(obs)
        ball = breakout_ball_xy(obs)[:, 0]
        seen = ~np.isnan(ball)
        self._target = np.where(seen, ball + self._offset, self._target)
        actions = _towards(np.nan_to_num(self._target - paddle), self.LEFT, self.RIGHT, self.NOOP)
        actions[~seen & (self.rng.random(len(actions)) < 0.5)] = self.FIRE
        return self._bursts(actions)


SCRIPTED = {"pong": ScriptedPongPolicy, "breakout": ScriptedBreakoutPolicy}
"""The scripted player of each game that has one."""


class CallablePolicy:
    """Wraps any per-observation ``policy(obs (H, W, 3)) -> action`` for batched recording."""

    def __init__(self, fn: Callable[[np.ndarray], int], *, name: str = "callable"):
        self.fn, self.name = fn, name

    def episode_start(self, index: int) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.array([int(self.fn(o)) for o in obs], np.int64)


class MixedPolicy:
    """Gives each episode one of several policies, chosen at random per episode.

    Args:
        policies: the policies to mix (each built for the same batch size).
        weights: their probabilities (normalised).
        seed: seed of the choice.
    """

    def __init__(self, policies: list[Policy], weights: list[float] | None = None, *, num_envs: int, seed: int = 0):
        self.policies = policies
        w = np.ones(len(policies)) if weights is None else np.asarray(weights, np.float64)
        self.p = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self.name = "mixed(" + ",".join(p.name for p in policies) + ")"
        self.choice = self.rng.choice(len(policies), size=num_envs, p=self.p)

    def episode_start(self, index: int) -> None:
        self.choice[index] = self.rng.choice(len(self.policies), p=self.p)
        for p in self.policies:
            p.episode_start(index)

    def current_name(self, index: int) -> str:
        return self.policies[self.choice[index]].name

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = np.zeros(len(obs), np.int64)
        for k, p in enumerate(self.policies):
            a = p(obs)  # every policy advances its state, so switching keeps them consistent
            out[self.choice == k] = a[self.choice == k]
        return out


class KeyboardPolicy:
    """A human at the keyboard, through a pygame window showing the game (batch size 1).

    Keys map to actions through the game's key map (:meth:`GameSpec.action_for_keys`).
    Esc or closing the window raises ``KeyboardInterrupt`` so that the recorder stops after
    writing the episodes already finished.

    Args:
        spec: the game.
        scale: window scale factor over the frame size.
    """

    name = "human"

    def __init__(self, spec: GameSpec, *, scale: int = 8):
        import pygame

        self.pygame, self.spec, self.scale = pygame, spec, scale
        pygame.display.init()
        self.screen = None
        self.held: set[str] = set()
        self.clock = pygame.time.Clock()

    def episode_start(self, index: int) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        pg = self.pygame
        if len(obs) != 1:
            raise ValueError(f"keyboard recording plays one env at a time, got a batch of {len(obs)}")
        frame = obs[0]
        if self.screen is None:
            self.screen = pg.display.set_mode((frame.shape[1] * self.scale, frame.shape[0] * self.scale))
            pg.display.set_caption(f"recording {self.spec.name} (Esc stops)")
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                raise KeyboardInterrupt
            if event.type == pg.KEYDOWN:
                self.held.add(pg.key.name(event.key))
            elif event.type == pg.KEYUP:
                self.held.discard(pg.key.name(event.key))
        surf = pg.surfarray.make_surface(frame.swapaxes(0, 1))
        self.screen.blit(pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        pg.display.flip()
        self.clock.tick(self.spec.fps)
        return np.array([self.spec.action_for_keys(self.held)], np.int64)
