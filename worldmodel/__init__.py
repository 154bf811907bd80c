"""World models of games: tokenizer, latent-action model, dynamics, and the Simulator.

Quick use::

    import worldmodel
    model = worldmodel.load("pong")                       # the shipped checkpoint
    sim = worldmodel.Simulator(model, batch_size=1, seed=0)
    frame = sim.reset(model.start_frames[:1].numpy(), model.start_actions[:1].numpy())
    frames, rewards, terminated = sim.step([2])           # action 2 = RIGHT = paddle up
"""

from worldmodel.bundle import CheckpointError, ModelBundle, available, load
from worldmodel.latent_actions import infer_latent_actions
from worldmodel.simulator import Simulator

__all__ = ["CheckpointError", "ModelBundle", "Simulator", "available", "infer_latent_actions", "load"]
