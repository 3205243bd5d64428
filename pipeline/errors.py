"""One exception type for every problem a user can fix; the CLI prints it as one line and exits 1."""


class PipelineError(Exception):
    """A problem with the user's input, model or cache, stated in one line."""
