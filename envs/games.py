"""The game registry: which real Gymnasium games the project knows, and their key maps.

One :class:`GameSpec` per game fixes everything the rest of the project must agree on:
the Gymnasium id and its keyword arguments, the frame size, the action meanings and the
key map shared by the real game, the dream, the pygame window and the browser page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_SIZE = 64
"""Default frame height and width in pixels (the Atari-100k convention)."""


@dataclass(frozen=True)
class GameSpec:
    """A real game and the conventions the dream of it follows.

    Attributes:
        name: short name used everywhere (``"pong"``).
        env_id: Gymnasium id of the real game.
        env_kwargs: keyword arguments for ``gymnasium.make``.
        action_meanings: one name per discrete action, index = action id.
        keymap: key chord -> action id. A chord is key names joined by ``+``
            (``"up+space"``); the empty chord ``""`` is the action when no key is held.
        key_aliases: extra physical keys that stand for a logical key (``"w" -> "up"``).
        fps: frames per second the game is shown at (after frame skip).
        frame_skip: default emulator frames per step.
        is_ale: whether the env is an Arcade Learning Environment game (frame skip and
            sticky actions are its own options).
        from_pixels: whether observations come from ``env.render()`` instead of ``obs``.
        effective_actions: name -> the action ids that act the same on the screen (Pong's
            FIRE moves nothing once the ball is served, RIGHTFIRE moves like RIGHT); used to
            score latent actions. Empty: every action is its own group.
    """

    name: str
    env_id: str
    action_meanings: tuple[str, ...]
    keymap: dict[str, int]
    key_aliases: dict[str, str] = field(default_factory=dict)
    env_kwargs: dict = field(default_factory=dict)
    fps: int = 15
    frame_skip: int = 4
    is_ale: bool = True
    from_pixels: bool = False
    effective_actions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def action_for_keys(self, held: set[str] | frozenset[str]) -> int:
        """Map the set of held logical or physical key names to an action id.

        The chord with the most keys that are all held wins; aliases are resolved first.
        Keys that no chord uses are ignored, so holding an unrelated key changes nothing.

        Args:
            held: lower-case key names as pygame's ``key.name`` gives them (``"up"``, ``"w"``).

        Returns:
            The action id, in ``range(len(self.action_meanings))``.
        """
        logical = {self.key_aliases.get(k, k) for k in held}
        best, best_len = self.keymap.get("", 0), 0
        for chord, action in self.keymap.items():
            keys = set(chord.split("+")) if chord else set()
            if keys and keys <= logical and len(keys) > best_len:
                best, best_len = action, len(keys)
        return best

    @property
    def num_actions(self) -> int:
        return len(self.action_meanings)

    def effective_action_groups(self) -> tuple[list[str], np.ndarray]:
        """``(names, group_of)``: the effective actions' names and ``group_of (num_actions,) int64``,
        the index into ``names`` of each action id."""
        groups = self.effective_actions or {m: (i,) for i, m in enumerate(self.action_meanings)}
        group_of = np.full(self.num_actions, -1, np.int64)
        for g, ids in enumerate(groups.values()):
            group_of[list(ids)] = g
        if (group_of < 0).any():
            raise ValueError(f"{self.name}: effective_actions leaves actions {np.flatnonzero(group_of < 0).tolist()} out")
        return list(groups), group_of


_ALE_MEANINGS_PONG = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
_ALE_MEANINGS_BREAKOUT = ("NOOP", "FIRE", "RIGHT", "LEFT")

GAMES: dict[str, GameSpec] = {
    # In ALE Pong, RIGHT moves the player's (green, right-hand) paddle up and LEFT down.
    "pong": GameSpec(
        name="pong",
        env_id="ALE/Pong-v5",
        action_meanings=_ALE_MEANINGS_PONG,
        keymap={"": 0, "space": 1, "up": 2, "down": 3, "up+space": 4, "down+space": 5},
        key_aliases={"w": "up", "s": "down"},
        effective_actions={"stay": (0, 1), "up": (2, 4), "down": (3, 5)},
    ),
    "breakout": GameSpec(
        name="breakout",
        env_id="ALE/Breakout-v5",
        action_meanings=_ALE_MEANINGS_BREAKOUT,
        keymap={"": 0, "space": 1, "right": 2, "left": 3},
        key_aliases={"d": "right", "a": "left"},
        effective_actions={"stay": (0, 1), "right": (2,), "left": (3,)},
    ),
    "cartpole": GameSpec(
        name="cartpole",
        env_id="CartPole-v1",
        action_meanings=("LEFT", "RIGHT"),
        # CartPole has no no-op: with no key held the cart is pushed left.
        keymap={"": 0, "left": 0, "right": 1},
        key_aliases={"a": "left", "d": "right"},
        env_kwargs={"render_mode": "rgb_array"},
        fps=50,
        frame_skip=1,
        is_ale=False,
        from_pixels=True,
    ),
}


def get_game(name: str) -> GameSpec:
    """Look up a game by name.

    Raises:
        ValueError: the name is not in :data:`GAMES` (the message lists the known names).
    """
    try:
        return GAMES[name]
    except KeyError:
        raise ValueError(f"unknown game {name!r}; known games: {sorted(GAMES)}") from None
