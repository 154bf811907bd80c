"""Real games and dreams of them, with the Gymnasium face.

``envs.make(game)`` makes the real game with 64x64 uint8 frames. Importing this package
registers one ``worldmodel/Dream<Game>-v0`` id per shipped dream checkpoint, so
``gymnasium.make("worldmodel/DreamPong-v0")`` plays the shipped Pong dream and
``gymnasium.make_vec("worldmodel/DreamPong-v0", num_envs=N)`` N of them in one batch.
``DreamEnv`` and ``DreamVectorEnv`` are imported lazily (they need torch).
"""

from envs.games import FRAME_SIZE, GAMES, GameSpec, get_game
from envs.real import make
from envs.registration import dream_id, register_dreams

DREAM_IDS = register_dreams()

__all__ = ["DREAM_IDS", "FRAME_SIZE", "GAMES", "DreamEnv", "DreamVectorEnv", "GameSpec", "dream_id", "get_game", "make"]


def __getattr__(name: str):
    if name == "DreamEnv":
        from envs.dream_env import DreamEnv

        return DreamEnv
    if name == "DreamVectorEnv":
        from envs.dream_vector_env import DreamVectorEnv

        return DreamVectorEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
