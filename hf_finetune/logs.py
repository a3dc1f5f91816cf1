"""How the pipeline reports: ``<step>: <message>`` lines on stdout, errors on stderr.

Every module takes its logger from ``logger``; nothing else configures logging.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER = "pipeline"


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes, not when the
    handler was made: a test's capture, or a step run inside main's process, replaces them."""

    def __init__(self, error: bool) -> None:
        super().__init__()
        self.error = error
        self.addFilter(lambda record: (record.levelno >= logging.WARNING) == error)

    @property
    def stream(self) -> Any:
        return sys.stderr if self.error else sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _StepFormat(logging.Formatter):
    """``<step>: <message>``, and ``<step>: error: <message>`` for errors: the pipeline's one format."""

    def format(self, record: logging.LogRecord) -> str:
        step = record.name.removeprefix(f"{LOGGER}.")
        kind = "error: " if record.levelno >= logging.ERROR else ""
        return f"{step}: {kind}{record.getMessage()}"


_root = logging.getLogger(LOGGER)
if not _root.handlers:
    for _error in (False, True):
        _handler = _Console(_error)
        _handler.setFormatter(_StepFormat())
        _root.addHandler(_handler)
    _root.setLevel(logging.INFO)
    _root.propagate = False


def logger(step: str) -> logging.Logger:
    """How a step reports: ``<step>: <message>`` lines on stdout; errors on stderr."""
    return logging.getLogger(f"{LOGGER}.{step}")
