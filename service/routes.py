"""HTTP endpoints. Handlers only parse and delegate to :class:`~service.engine.Engine`.

Open: ``/health``, ``/ready``, ``/metrics``, ``/schema``. Everything under ``/v1`` needs an
``X-API-Key`` header holding one of ``Settings.api_keys``.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Final

import msgspec
from litestar import Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, Parameter

from service.engine import Engine, Query
from service.errors import InvalidInputError, UnauthorizedError
from service.metrics import CONTENT_TYPE, Metrics
from service.problems import msgspec_error
from service.schemas import (
    MAX_EXCLUDE,
    MAX_ID_LENGTH,
    MAX_K,
    EventBatch,
    EventIn,
    EventsAccepted,
    Health,
    Problem,
    Ready,
    RecommendationsOut,
    SimilarItemsOut,
)

API_KEY_HEADER: Final = "X-API-Key"


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=Problem, description=description, media_type="application/problem+json")


_ERRORS: Final = {
    400: _problem("Invalid input; `errors` names the field"),
    401: _problem("Missing or unknown X-API-Key"),
    503: _problem("Redis unreachable (and nothing usable in memory) or nothing published yet"),
}

K = Annotated[int, Parameter(ge=1, le=MAX_K, description=f"number of items (1-{MAX_K})", examples=[Example(value=10)])]
PathId = Annotated[str, Parameter(min_length=1, max_length=MAX_ID_LENGTH)]


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of ``/v1``: the X-API-Key header must hold a configured key (constant-time compare).

    ``async`` on purpose: Litestar runs a sync guard in a worker thread, a thread hop on every request.
    """
    given = connection.headers.get(API_KEY_HEADER)
    if not given:
        raise UnauthorizedError(f"missing {API_KEY_HEADER} header", field=API_KEY_HEADER)
    keys: frozenset[str] = connection.app.state.api_keys
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise UnauthorizedError(f"unknown {API_KEY_HEADER}", field=API_KEY_HEADER)


def _engine(state: State) -> Engine:
    """The app's engine (set by the lifespan). Read from ``state`` rather than injected as a dependency:
    Litestar resolves a dependency through its own signature model on every request (~10% of the
    recommendations CPU)."""
    engine: Engine = state.engine
    return engine


@get(
    "/users/{user_id:str}/recommendations",
    summary="Recommendations for a shopper",
    responses=_ERRORS,
    tags=["recommendations"],
)
async def recommendations(
    state: State,
    user_id: Annotated[str, Parameter(min_length=1, max_length=MAX_ID_LENGTH, examples=[Example(value="17850")])],
    k: K = 10,
    category: Annotated[
        str | None,
        Parameter(max_length=MAX_ID_LENGTH, description="context category: its popular list is the first fallback"),
    ] = None,
    exclude: Annotated[
        str | None,
        Parameter(
            max_length=MAX_EXCLUDE * (MAX_ID_LENGTH + 1),
            description=f"comma-separated item ids to leave out (at most {MAX_EXCLUDE})",
            examples=[Example(value="85123A,71053")],
        ),
    ] = None,
) -> RecommendationsOut:
    """Top-k items for the shopper: their precomputed list, items similar to what they just viewed, then
    popular items (requested category, their segment, global) to fill up to k. UnavailableError, excluded
    and purchased items are never returned."""
    return await _engine(state).recommend(Query.parse(user_id, k, category, exclude))


@get(
    "/items/{item_id:str}/similar",
    summary="Items similar to an item",
    responses={**_ERRORS, 404: _problem("The item is not in the published version")},
    tags=["recommendations"],
)
async def similar_items(state: State, item_id: PathId, k: K = 10) -> SimilarItemsOut:
    """The item's precomputed similar items that are available, best first."""
    return await _engine(state).similar(item_id, k)


_SINGLE = {"user_id": "17850", "item_id": "85123A", "event_type": "view"}
_BATCH = {
    "events": [
        {**_SINGLE, "timestamp": "2024-05-01T10:00:00Z", "recommendation_id": "3f2b0c9e4a5d4c7e8f1a2b3c4d5e6f70"},
        {"user_id": "17850", "item_id": "85123A", "event_type": "purchase", "quantity": 2, "price": 2.55},
    ]
}


@post("/events", status_code=202, summary="Record shopper events", responses=_ERRORS, tags=["events"])
async def post_events(
    state: State,
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
    return await _engine(state).record(parse_events(data))


def parse_events(data: dict[str, Any] | None) -> list[EventIn]:
    """One event or ``{"events": [...]}``, validated; InvalidInputError names the offending field."""
    if data is None:
        raise InvalidInputError.at("body", 'is required: one event, or {"events": [...]}')
    try:
        if "events" in data:
            return msgspec.convert(data, EventBatch).events
        return [msgspec.convert(data, EventIn)]
    except msgspec.ValidationError as exc:
        raise msgspec_error(exc) from exc


@get("/health", summary="Liveness (no Redis call)", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


@get("/ready", summary="Readiness: Redis reachable and a version published", responses=_ERRORS, tags=["operations"])
async def ready(state: State) -> Ready:
    return await _engine(state).ready()


@get("/metrics", include_in_schema=False, media_type=CONTENT_TYPE)
async def metrics(state: State) -> Response[bytes]:
    registry: Metrics = state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)


def api_router() -> Router:
    """The authenticated ``/v1`` API."""
    return Router(
        path="/v1",
        route_handlers=[recommendations, similar_items, post_events],
        guards=[require_api_key],
        security=[{"apiKey": []}],
    )


OPEN_HANDLERS: Final = [health, ready, metrics]
