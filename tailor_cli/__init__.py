"""The ``tailor`` command line: one command group per pipeline stage.

Heavy libraries (mlflow, implicit, litestar) are imported inside commands, so ``tailor --help``
stays fast and nothing happens at import time.
"""

from __future__ import annotations

import os

import typer

from tailor_cli import data, models, serving

app = typer.Typer(
    name="tailor",
    help=(
        "Tailor: recommendations for online stores.\n\n"
        "Stages: [bold]data[/] (load, validate, synthesize events) → [bold]train / tune / runs / promote / export[/] "
        "(models tracked in MLflow) → [bold]publish[/] (champion to Redis) → [bold]serve[/] (HTTP API)."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data", help="Load, validate and synthesize store events.", rich_help_panel="Data")
models.register(app)
serving.register(app)


def main() -> None:
    """Console-script entrypoint."""
    # Tailor is about first-party data used with consent: MLflow's usage telemetry stays off
    # unless the operator turns it on explicitly.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    app()
