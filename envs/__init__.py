"""Real games and dreams of them, with the Gymnasium face.

``envs.make(game)`` makes the real game with 64x64 uint8 frames; importing this package
registers one ``worldmodel/Dream<Game>-v0`` id per shipped dream checkpoint.
"""

from envs.games import FRAME_SIZE, GAMES, GameSpec, get_game
from envs.real import make

__all__ = ["FRAME_SIZE", "GAMES", "GameSpec", "get_game", "make"]
