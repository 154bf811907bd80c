"""Training: Hydra entry points, the stage loops, the pipeline and the evaluation."""
