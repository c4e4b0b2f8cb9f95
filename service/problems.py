"""The one exception handler: every error becomes an RFC 7807 ``application/problem+json`` body.

* :class:`~service.errors.ServiceError` subclasses carry their own status, title and field;
* Litestar's validation errors (bad query/path parameters, malformed JSON) become 400s naming the
  field; its other HTTP errors (404 unknown route, 405) keep their status;
* anything else is a bug: logged with its traceback, answered with a bare 500.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from service.errors import InvalidInputError, ServiceError
from service.schemas import FieldProblem, Problem

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE: Final = "about:blank"  # RFC 7807: the title is the HTTP status phrase or our error's title
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$")
_MISSING_FIELD = re.compile(r"missing required field `(?P<name>[^`]+)`")
log = logging.getLogger("tailor.service")


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Litestar exception handler for ``Exception``: the problem body for ``exc``."""
    problem = to_problem(exc, request.url.path)
    if problem.status >= 500 and not isinstance(exc, ServiceError):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(content=problem, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE)


def to_problem(exc: Exception, instance: str) -> Problem:
    """The problem details describing ``exc`` (no internals leak into 500 bodies)."""
    if isinstance(exc, ServiceError):
        errors = [FieldProblem(field=exc.field, message=exc.reason)] if exc.field else None
        return Problem(
            type=PROBLEM_TYPE, title=exc.title, status=exc.status, detail=exc.detail, instance=instance, errors=errors
        )
    if isinstance(exc, ValidationException):
        return _validation_problem(exc, instance)
    decode_error = _cause(exc, msgspec.DecodeError)
    if isinstance(exc, HTTPException) and decode_error is not None:
        return to_problem(InvalidInputError.at("body", f"not valid JSON ({decode_error})"), instance)
    if isinstance(exc, HTTPException):  # e.g. malformed JSON (400), unknown route (404), wrong method (405)
        status = exc.status_code
        title = InvalidInputError.title if status == 400 else HTTPStatus(status).phrase
        return Problem(type=PROBLEM_TYPE, title=title, status=status, detail=str(exc.detail), instance=instance)
    return Problem(
        type=PROBLEM_TYPE, title="Internal server error", status=500, detail="unexpected error", instance=instance
    )


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s ``raise ... from`` chain."""
    current: BaseException | None = exc
    while current is not None and not isinstance(current, kind):
        current = current.__cause__
    return current


def _validation_problem(exc: ValidationException, instance: str) -> Problem:
    errors = [_field_problem(item) for item in exc.extra or [] if isinstance(item, dict)]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or str(exc.detail)
    return Problem(
        type=PROBLEM_TYPE,
        title=InvalidInputError.title,
        status=400,
        detail=detail,
        instance=instance,
        errors=errors or None,
    )


def _field_problem(item: dict[str, Any]) -> FieldProblem:
    key, message = str(item.get("key", "")), str(item.get("message", ""))
    if message == repr(key):  # Litestar's message for a missing required body
        message = "is required"
    return FieldProblem(field=key or "request", message=message)


def msgspec_error(exc: Exception, root: str = "body") -> InvalidInputError:
    """A msgspec ValidationError as InvalidInputError naming the field, e.g. ``events[3].user_id``."""
    match = _MSGSPEC_PATH.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = (match.group("path") if match else None) or ""
    missing = _MISSING_FIELD.search(message)
    if missing:
        path = f"{path}.{missing.group('name')}" if path else missing.group("name")
    return InvalidInputError.at(path or root, message)
