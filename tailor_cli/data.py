"""``tailor data ...``: loading, validation and the synthetic store."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
