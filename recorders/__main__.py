"""``python -m recorders key=value ...``: record real games into a dataset (Hydra entry point).

Examples::

    python -m recorders game=pong episodes=50 policy=mixed out=data/pong
    # killed? the same command again records only the missing episodes; append=true adds more
    python -m recorders game=breakout policy=random num_envs=4
    python -m recorders game=pong policy=human          # play by keyboard, Esc stops
"""

from __future__ import annotations

import dataclasses
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from recorders.collect import RecordConfig, record
from recorders.dataset import DatasetError


@hydra.main(config_path="conf", config_name="record", version_base=None)
def main(cfg: DictConfig) -> None:
    fields = {f.name for f in dataclasses.fields(RecordConfig)}
    values = OmegaConf.to_container(cfg, resolve=True)
    unknown = set(values) - fields
    if unknown:
        sys.exit(f"error: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    try:
        writer = record(RecordConfig(**values))
    except (ValueError, DatasetError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("stopped; finished episodes are kept", file=sys.stderr)
        return
    if writer.episodes_written == 0:
        print(f"nothing to record: {writer.root} already holds {writer.episodes_before} episodes "
              f"(append=true records more)")
        return
    print(f"wrote {writer.episodes_written} episodes, {writer.frames_written} frames to {writer.root}")


if __name__ == "__main__":
    main()
