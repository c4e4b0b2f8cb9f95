"""ASGI entrypoint for servers: ``uvicorn --factory service.asgi:create_app``.

The factory reads :class:`~features.settings.Settings` from the environment when the server calls
it (once per worker), never at import time.
"""

from __future__ import annotations

from service.app import create_app

__all__ = ["create_app"]
