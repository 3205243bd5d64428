"""One exception type for every problem a user can fix; entry points print it as one line and exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's input, model or cache, stated in one line."""


def setup_logging() -> None:
    """Entry points send the library's messages (pipeline.*) to stderr, one plain line each."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main (a DVC stage, a benchmark), printing a PipelineError as one line with exit 1, not a traceback."""
    setup_logging()
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
