"""The real game played beside the dream with the same keys (the side-by-side mode).

The player sees where the dream departs from the game; :meth:`RealGame.history` holds the
game's latest frames and actions so the dream can be re-synced to it
(:meth:`play.session.PlaySession.reset_from`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from envs.games import FRAME_SIZE, get_game
from play.recording import EpisodeRecorder


@dataclass
class RealStep:
    """One step of the real game.

    Attributes:
        frame: ``(H, W, 3)`` uint8, the observation the step produced (an episode's last one
            when it ended; :attr:`RealGame.frame` is then the next episode's first).
        reward: the game's reward.
        terminated: the game ended.
        truncated: the episode was cut by a time limit.
    """

    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool


class RealGame:
    """The real game (``envs.make``), stepped one action at a time, restarting when an episode ends.

    Args:
        game: a name from :data:`envs.games.GAMES`.
        history: frames to keep for re-syncing, the dream's context (``PlaySession.context_frames``).
        seed: seed of the first episode; later ones continue the env's generator.
        size: frame height and width.
        max_episode_steps: cut episodes after this many steps (``None``: the game's own limit).
        recorder: where to write the episodes played, if anywhere (one dataset episode per
            game episode; the one in flight is written by :meth:`close`).

    Attributes:
        frame: ``(H, W, 3)`` uint8, the latest observation.
        episode: episodes started (1 after the first reset).
        step_count: steps in the current episode.
        score: sum of rewards in the current episode.

    Raises:
        ValueError: unknown game, or ``history < 1``.
    """

    def __init__(self, game: str, *, history: int, seed: int = 0, size: int = FRAME_SIZE,
                 max_episode_steps: int | None = None, recorder: EpisodeRecorder | None = None):
        import envs

        if history < 1:
            raise ValueError(f"history must be >= 1 frame, got {history}")
        self.spec = get_game(game)
        self.env = envs.make(self.spec, size=size, max_episode_steps=max_episode_steps)
        self.recorder = recorder
        self._frames: deque[np.ndarray] = deque(maxlen=history)
        self._actions: deque[int] = deque(maxlen=history - 1)
        self._seed: int | None = seed
        self.episode = 0
        self.frame = self.reset()

    def reset(self) -> np.ndarray:
        """Start a new episode (the history starts over with its first frame); returns that frame."""
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        self.frame = np.asarray(obs, np.uint8)
        self._frames.clear()
        self._actions.clear()
        self._frames.append(self.frame)
        self.episode += 1
        self.step_count, self.score = 0, 0.0
        if self.recorder is not None:
            self.recorder.start(self.frame, reason="new episode")
        return self.frame

    def action_for_keys(self, held: set[str]) -> int:
        """The game's action for the held key names (its key map)."""
        return self.spec.action_for_keys(held)

    def step(self, action: int) -> RealStep:
        """Play ``action``; when the episode ends, the next one starts at once.

        Raises:
            ValueError: the action is out of range.
        """
        if not 0 <= action < self.spec.num_actions:
            raise ValueError(f"action {action} out of range [0, {self.spec.num_actions})")
        obs, reward, terminated, truncated, _ = self.env.step(action)
        result = RealStep(np.asarray(obs, np.uint8), float(reward), bool(terminated), bool(truncated))
        self.frame = result.frame
        self._frames.append(self.frame)
        self._actions.append(int(action))                   # a deque of maxlen history-1: one fewer
        self.step_count += 1
        self.score += result.reward
        if self.recorder is not None:
            self.recorder.add(action, result.frame, result.reward, terminated=result.terminated,
                              truncated=result.truncated)
        if result.terminated or result.truncated:
            self.reset()
        return result

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """The current episode's latest frames and the actions between them.

        Returns:
            ``frames (T, H, W, 3) uint8`` (oldest first, ``1 <= T <= history``) and
            ``actions (T-1,) int64``, ``actions[i]`` taken after ``frames[i]``.
        """
        return np.stack(self._frames), np.asarray(self._actions, np.int64).reshape(-1)

    def close(self) -> None:
        """Write the episode in flight (if recording) and close the env."""
        if self.recorder is not None:
            self.recorder.flush(reason="stopped")
        self.env.close()
