"""Export a checkpoint's dynamics model to ONNX for the onnxruntime backend.

Run it with Hydra::

    python -m worldmodel.export checkpoint=pong                  # into the cache
    python -m worldmodel.export checkpoint=runs/x/bundle out=dynamics.onnx

The graph goes into the cache (:func:`worldmodel.onnx_backend.cache_dir`), where
``Simulator(backend="auto")`` finds it; ``out`` copies it somewhere else as well. The graph's
inputs and outputs are listed in :mod:`worldmodel.onnx_backend`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def export(checkpoint: str, out: str | None = None) -> Path:
    """Export (or find in the cache) the graph of ``checkpoint``; returns its cached path.

    Raises:
        worldmodel.CheckpointError: unreadable checkpoint.
        worldmodel.onnx_backend.OnnxUnavailable: onnx or onnxscript missing.
    """
    from worldmodel.bundle import load
    from worldmodel.onnx_backend import cached_step_graph

    model = load(checkpoint)
    t0 = time.perf_counter()
    path = cached_step_graph(model.dynamics)
    print(f"graph: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        print(f"copied to {out}")
    return path


def main() -> None:
    """Hydra entry point (see the module docstring)."""
    from worldmodel.bundle import CheckpointError
    from worldmodel.cli import hydra_command
    from worldmodel.onnx_backend import OnnxUnavailable

    hydra_command(__file__, "export", lambda cfg: export(str(cfg["checkpoint"]), cfg["out"]),
                  (CheckpointError, OnnxUnavailable))


if __name__ == "__main__":
    main()
