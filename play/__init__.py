"""Front-ends that let people play dreams: the play session and its pygame window."""

from play.session import PlaySession, StepResult

__all__ = ["PlaySession", "StepResult"]
