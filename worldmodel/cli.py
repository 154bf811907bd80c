"""The one shape every ``python -m ...`` command of the project shares: a Hydra config, a run
function, and errors that end the command with a one-line message instead of a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


def hydra_command(module_file: str, config_name: str, run: Callable[[dict], object],
                  errors: tuple[type[BaseException], ...]) -> None:
    """Run ``run(config)`` under Hydra, with ``<module dir>/conf/<config_name>.yaml`` and the
    command line's overrides resolved into a plain ``dict``.

    Args:
        module_file: the calling module's ``__file__`` (its ``conf/`` holds the config).
        config_name: the YAML file's name without ``.yaml``.
        run: does the work.
        errors: exceptions that mean bad input; they exit with status 1 and ``error: <message>``.
    """
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(config_path=str(Path(module_file).resolve().parent / "conf"), config_name=config_name,
                version_base=None)
    def _main(cfg) -> None:
        try:
            run(OmegaConf.to_container(cfg, resolve=True))
        except errors as e:
            sys.exit(f"error: {e}")

    _main()
