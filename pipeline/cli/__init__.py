"""`kd`: every pipeline step without DVC; the same library functions the DVC stages call.

Errors print one line and exit 1; library messages go to stderr through `logging`.
"""

from __future__ import annotations

import typer

from pipeline.cli import cache, classify, judge, lm

app = typer.Typer(help="Offline knowledge distillation from LLM teachers.", no_args_is_help=True, add_completion=False)
for commands in (lm.app, judge.app, cache.app):
    app.registered_commands += commands.registered_commands
app.add_typer(classify.app, name="classify")
