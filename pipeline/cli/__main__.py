"""`python -m pipeline.cli`: the `kd` app, for environments without the console script."""

from pipeline.cli import app

app()
