"""One exception type for every problem a user can fix; entry points print it as one line and exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's input, model or cache, stated in one line."""


class _LineFormatter(logging.Formatter):
    """One plain line per message; warnings say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def setup_logging() -> None:
    """Entry points send the library's messages (the `pipeline` loggers, INFO and up) to stderr, one line each.

    Only the `pipeline` logger is configured: other libraries' logging and the root logger are left as they are.
    """
    logger = logging.getLogger("pipeline")
    for handler in [h for h in logger.handlers if getattr(h, "kd_pipeline", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr: a test runner may have replaced it
    handler.setFormatter(_LineFormatter("%(message)s"))
    handler.kd_pipeline = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main (a DVC stage, a benchmark), printing a PipelineError as one line with exit 1, not a traceback."""
    setup_logging()
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
