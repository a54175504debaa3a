"""The pipeline's console output: every module logs through its own `logging.getLogger(__name__)`; the command
lines (`python -m distill`, and each module's own `main`) call `configure` once, which sets the format and level."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str | int = "INFO") -> None:
    """Timestamped lines naming the module, on standard error, at `level` (a name such as "INFO" or a number);
    the libraries' own loggers stay at WARNING."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(stream=sys.stderr, format=FORMAT, datefmt="%H:%M:%S", level=logging.WARNING, force=True)
    logging.getLogger("distill").setLevel(level)
