"""Errors the service raises on purpose; each maps to one HTTP status and an RFC 7807 problem body.

    ServiceError              500  base class (a bug if it escapes as itself)
    ├── InvalidInputError          400  a request field is invalid; ``field`` names it
    ├── Unauthorized          401  missing or unknown ``X-API-Key``
    ├── NotFoundError              404  unknown item (Redis is fine, the item is not in the active version)
    └── UnavailableError           503  cannot answer right now
        ├── StoreUnavailableError  503  Redis unreachable (and, for reads, nothing usable in memory)
        └── NotPublishedError      503  Redis is fine but nothing has been published yet

:mod:`service.problems` turns these (and Litestar's own validation/HTTP errors) into responses.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base class: ``status`` and ``title`` say what the client sees, ``detail`` says why.

    ``field`` names the offending input and ``reason`` what is wrong with it (default: ``detail``).
    """

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.reason = reason or detail


class InvalidInputError(ServiceError):
    status = 400
    title = "Invalid request"

    @classmethod
    def at(cls, field: str, reason: str) -> InvalidInputError:
        """``field: reason`` as the detail, and the field named for clients that read ``errors``."""
        return cls(f"{field}: {reason}", field=field, reason=reason)


class UnauthorizedError(ServiceError):
    status = 401
    title = "Unauthorized"


class NotFoundError(ServiceError):
    status = 404
    title = "Not found"


class UnavailableError(ServiceError):
    status = 503
    title = "Service unavailable"


class StoreUnavailableError(UnavailableError):
    title = "Recommendation store unavailable"


class NotPublishedError(UnavailableError):
    title = "No recommendations published yet"
