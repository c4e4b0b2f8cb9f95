"""HTTP endpoints. Handlers only parse and delegate to :class:`~service.engine.Engine`, which Litestar
injects (with the metrics) from the app's :class:`~service.app.Services`.

Open: ``/health``, ``/ready``, ``/metrics``, ``/schema``. Everything under ``/v1`` needs an
``X-API-Key`` header holding one of ``Settings.api_keys``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import UTC
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, SkipValidation
from litestar.types import ASGIApp, Receive, Scope, Send

from service import examples
from service.engine import Engine, Query
from service.errors import InvalidInputError, UnauthorizedError
from service.metrics import CONTENT_TYPE, Metrics
from service.params import documented, parse_params
from service.problems import msgspec_error
from service.schemas import (
    EventBatch,
    EventIn,
    EventsAccepted,
    Health,
    Problem,
    Ready,
    RecommendationParams,
    RecommendationsOut,
    SimilarItemsOut,
    SimilarParams,
)

API_KEY_HEADER: Final = "X-API-Key"
_API_KEY_NAME: Final = API_KEY_HEADER.lower().encode()  # ASGI header names are lower-case bytes


def _problem(description: str, example: dict[str, Any]) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type="application/problem+json",
        examples=[Example(summary=example["title"], value=example)],
    )


def _answer(data: type, description: str, answers: Iterable[examples.Answer]) -> ResponseSpec:
    return ResponseSpec(
        data_container=data,
        description=description,
        examples=[Example(summary=summary, value=value) for summary, value in answers],
    )


_ERRORS: Final = {
    400: _problem("Invalid input; `errors` names the field", examples.PROBLEMS[400]),
    401: _problem("Missing or unknown X-API-Key", examples.PROBLEMS[401]),
    503: _problem("Redis unreachable (and nothing usable in memory) or nothing published yet", examples.PROBLEMS[503]),
}


class RequireApiKey(ASGIMiddleware):
    """The ``/v1`` API's key check: the X-API-Key header must hold one of ``keys`` (constant-time compare).

    A middleware, not a Litestar guard: Litestar hands every guard call a ``copy()`` of the route
    handler, which cost 6.5 % of the service's CPU at a fixed 3,000 recommendations/s (py-spy), more than
    the check itself. The header is read straight from the ASGI scope.
    """

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)  # none under /v1 yet: a future one is checked too

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(key.encode() for key in keys)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        given = next((value for name, value in scope["headers"] if name == _API_KEY_NAME), b"")
        if not given:
            raise UnauthorizedError(f"missing {API_KEY_HEADER} header", field=API_KEY_HEADER)
        if not any(hmac.compare_digest(given, key) for key in self.keys):
            raise UnauthorizedError(f"unknown {API_KEY_HEADER}", field=API_KEY_HEADER)
        await next_app(scope, receive, send)


Req = Request[Any, Any, Any]
EngineDep = NamedDependency[SkipValidation[Engine]]
"""The app's engine, injected (``Services.provide_engine``); not validated: it is the object the app made."""
MetricsDep = NamedDependency[SkipValidation[Metrics]]


@get(
    "/users/{user_id:str}/recommendations",
    summary="Recommendations for a shopper",
    responses={200: _answer(RecommendationsOut, "Up to k items, best first", examples.RECOMMENDATIONS), **_ERRORS},
    tags=["recommendations"],
    operation_class=documented(RecommendationParams),
)
async def recommendations(request: Req, engine: EngineDep) -> RecommendationsOut:
    """Top-k items for the shopper: their precomputed list, items similar to what they just viewed, then
    popular items (requested category, their segment, global) to fill up to k. Unavailable, excluded
    and purchased items are never returned."""
    return await engine.recommend(Query.parse(parse_params(request, RecommendationParams)))


@get(
    "/items/{item_id:str}/similar",
    summary="Items similar to an item",
    responses={
        200: _answer(SimilarItemsOut, "Up to k available similar items, best first", examples.SIMILAR),
        **_ERRORS,
        404: _problem("The item is not in the published version", examples.PROBLEMS[404]),
    },
    tags=["recommendations"],
    operation_class=documented(SimilarParams),
)
async def similar_items(request: Req, engine: EngineDep) -> SimilarItemsOut:
    """The item's precomputed similar items that are available, best first."""
    query = parse_params(request, SimilarParams)
    return await engine.similar(query.item_id, query.k)


_SINGLE = {"user_id": "17850", "item_id": "85123A", "event_type": "view"}
_BATCH = {
    "events": [
        {**_SINGLE, "timestamp": "2024-05-01T10:00:00Z", "recommendation_id": "3f2b0c9e4a5d4c7e8f1a2b3c4d5e6f70"},
        {"user_id": "17850", "item_id": "85123A", "event_type": "purchase", "quantity": 2, "price": 2.55},
    ]
}


@post(
    "/events",
    status_code=202,
    summary="Record shopper events",
    responses={
        202: _answer(EventsAccepted, "Stored in the event stream", examples.EVENTS_ACCEPTED),
        **_ERRORS,
    },
    tags=["events"],
)
async def post_events(
    engine: EngineDep,
    data: Annotated[
        dict[str, Any] | None,
        Body(
            title="One event, or a batch",
            description=(
                "Either one event object (user_id, item_id, event_type, optional timestamp, quantity, price, "
                'session_id, recommendation_id) or {"events": [...]} with up to 500 of them.'
            ),
            examples=[Example(summary="one event", value=_SINGLE), Example(summary="a batch", value=_BATCH)],
        ),
    ] = None,
) -> EventsAccepted:
    """Append events to the event stream and update the shopper's real-time state before answering 202.
    A purchase removes the item from the shopper's next recommendations; views of a new shopper make
    their next recommendations personal. 503 when Redis is unreachable (nothing is stored)."""
    return await engine.record(parse_events(data))


def parse_events(data: dict[str, Any] | None) -> list[EventIn]:
    """One event or ``{"events": [...]}``, validated; InvalidInputError names the offending field."""
    if data is None:
        raise InvalidInputError.at("body", 'is required: one event, or {"events": [...]}')
    try:
        batch = "events" in data
        events = msgspec.convert(data, EventBatch).events if batch else [msgspec.convert(data, EventIn)]
    except msgspec.ValidationError as exc:
        raise msgspec_error(exc) from exc
    for i, event in enumerate(events):
        if event.timestamp is not None and event.timestamp.tzinfo is not None:
            try:  # stored in UTC: an offset can carry a timestamp past year 1 or 9999
                event.timestamp.astimezone(UTC)
            except OverflowError:
                field = f"events[{i}].timestamp" if batch else "timestamp"
                raise InvalidInputError.at(field, "is out of range once converted to UTC (years 1 to 9999)") from None
    return events


@get("/health", summary="Liveness (no Redis call)", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


@get("/ready", summary="Readiness: Redis reachable and a version published", responses=_ERRORS, tags=["operations"])
async def ready(engine: EngineDep) -> Ready:
    return await engine.ready()


@get("/metrics", include_in_schema=False, media_type=CONTENT_TYPE)
async def metrics(metrics: MetricsDep) -> Response[bytes]:
    return Response(metrics.render(), media_type=CONTENT_TYPE)


def api_router(api_keys: Iterable[str]) -> Router:
    """The ``/v1`` API, open to requests carrying one of ``api_keys``."""
    return Router(
        path="/v1",
        route_handlers=[recommendations, similar_items, post_events],
        middleware=[RequireApiKey(api_keys)],
        security=[{"apiKey": []}],
    )


OPEN_HANDLERS: Final = [health, ready, metrics]
