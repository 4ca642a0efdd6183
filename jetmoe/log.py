"""Progress and warnings go through `logging` to stderr; stdout carries only results (tokens, tables, reports).

    log = logging.getLogger(__name__)            # every module: jetmoe.*, export.*, engines.*, validate.*
    for name in progress(names, "writing weights", unit="tensor"):   # long loops
        ...

The CLI calls `configure(verbosity)` once (-q: warnings only, default: progress, -v: debug). A library user who
never configures logging sees warnings only (Python's default), and no progress bars.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

ROOTS = ("jetmoe", "export", "engines", "validate")  # the package loggers
T = TypeVar("T")
_LOG_EVERY_S = 5.0  # without a terminal, a progress line at most this often


def configure(verbosity: int = 0) -> None:
    """verbosity -1: warnings only; 0: progress (INFO); 1: debug. One stderr handler on the package loggers."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else "%(name)s: %(message)s"))
    for root in ROOTS:
        logger = logging.getLogger(root)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test harness or a caller may replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def progress(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
             logger: logging.Logger | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield `items`, showing progress: a tqdm bar on a terminal, else an INFO line every few seconds.

    Silent unless `enabled` and `logger` (default: the `jetmoe` logger) is enabled for INFO.
    """
    logger = logger or logging.getLogger("jetmoe")
    if not enabled or not logger.isEnabledFor(logging.INFO):
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)
        return
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= _LOG_EVERY_S:
            last = now
            logger.info("%s: %d%s %s (%.0f s)", desc, count, f"/{total}" if total else "", unit, now - start)
    logger.debug("%s: %d %s in %.1f s", desc, count, unit, time.monotonic() - start)
