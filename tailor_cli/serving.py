"""``tailor publish / serve / redis``: the champion to Redis, and the HTTP service."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the serving commands to the root app."""
