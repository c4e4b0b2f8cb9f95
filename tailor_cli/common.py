"""Helpers shared by CLI commands: settings, console, error reporting."""

from __future__ import annotations

from rich.console import Console

from features.settings import Settings

console = Console(stderr=True)


def load_settings() -> Settings:
    """Build settings from the environment (the only place the CLI reads it)."""
    return Settings()
