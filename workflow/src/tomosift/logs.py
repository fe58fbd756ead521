"""Logging for workflow scripts: everything a job prints goes to its Snakemake log."""

from __future__ import annotations

import logging
import os
import sys


def log_to_file(path: str | os.PathLike) -> logging.Logger:
    """Send stderr (tracebacks, progress bars) and the ``tomosift`` logger to ``path``."""
    handle = open(path, "w", buffering=1)
    sys.stderr = handle
    logging.basicConfig(
        stream=handle, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
        force=True,
    )
    return logging.getLogger("tomosift")
