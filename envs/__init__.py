"""Real games and dreams of them, with the Gymnasium face.

``envs.make(game)`` makes the real game with 64x64 uint8 frames. Importing this package
registers one ``worldmodel/Dream<Game>-v0`` id per shipped dream checkpoint, so
``gymnasium.make("worldmodel/DreamPong-v0")`` plays the shipped Pong dream.
"""

from envs.games import FRAME_SIZE, GAMES, GameSpec, get_game
from envs.real import make
from envs.registration import dream_id, register_dreams

DREAM_IDS = register_dreams()

__all__ = ["DREAM_IDS", "FRAME_SIZE", "GAMES", "GameSpec", "dream_id", "get_game", "make"]
