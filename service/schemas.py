"""Request and response bodies of the HTTP API (msgspec Structs; they also feed the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

import msgspec
from msgspec import Meta

MAX_K: Final = 100
MAX_ID_LENGTH: Final = 128
MAX_BATCH: Final = 500
MAX_EXCLUDE: Final = 100
MAX_EVENT_TYPE_LENGTH: Final = 32

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, examples=["85123A"])]
UserId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, examples=["17850"])]
EventTypeName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_EVENT_TYPE_LENGTH,
        description="view, add_to_cart, purchase, or any other type of your store",
        examples=["view"],
    ),
]


class Source(StrEnum):
    """Which step of the serving chain produced the first (best) item of a response."""

    PERSONALIZED = "personalized"
    RECENT_VIEWS = "recent_views"
    CATEGORY = "category"
    SEGMENT = "segment"
    POPULAR = "popular"
    NONE = "none"


K = Annotated[int, Meta(ge=1, le=MAX_K, description=f"number of items (1-{MAX_K})", examples=[10])]


class RecommendationParams(msgspec.Struct, frozen=True, kw_only=True):
    """Path and query parameters of ``GET /v1/users/{user_id}/recommendations`` (see :mod:`service.params`)."""

    user_id: UserId
    k: K = 10
    category: (
        Annotated[
            str, Meta(max_length=MAX_ID_LENGTH, description="context category: its popular list is the first fallback")
        ]
        | None
    ) = None
    exclude: (
        Annotated[
            str,
            Meta(
                max_length=MAX_EXCLUDE * (MAX_ID_LENGTH + 1),
                description=f"comma-separated item ids to leave out (at most {MAX_EXCLUDE})",
                examples=["85123A,71053"],
            ),
        ]
        | None
    ) = None


class SimilarParams(msgspec.Struct, frozen=True, kw_only=True):
    """Path and query parameters of ``GET /v1/items/{item_id}/similar``."""

    item_id: Id
    k: K = 10


class RecommendedItem(msgspec.Struct, frozen=True, kw_only=True):
    """One recommended item. ``reason``: personalized, because_you_viewed:ITEM,
    popular_in_category:CAT, popular_in_segment:SEG or popular."""

    item_id: str
    rank: int
    score: float
    reason: str
    category: str | None = None


class RecommendationsOut(msgspec.Struct, frozen=True, kw_only=True):
    """Recommendations for one shopper.

    ``recommendation_id`` identifies this answer: send it back with the events it leads to.
    ``degraded`` is true when Redis was unreachable and the answer came from the in-memory copy of
    the global popular list.
    """

    user_id: str
    items: list[RecommendedItem]
    source: Source
    degraded: bool
    recommendation_id: str
    model_name: str
    model_version: str
    publish_version: int
    generated_at: datetime


class SimilarItem(msgspec.Struct, frozen=True, kw_only=True):
    """One similar item. ``reason``: similar (the model's list), or, for an item the model does not know,
    popular_in_category:CAT then popular."""

    item_id: str
    rank: int
    score: float
    reason: str
    category: str | None = None


class SimilarItemsOut(msgspec.Struct, frozen=True, kw_only=True):
    """Items similar to ``item_id`` (available ones only, never the item itself), best first."""

    item_id: str
    items: list[SimilarItem]
    model_version: str
    publish_version: int
    generated_at: datetime


class EventIn(msgspec.Struct, frozen=True, kw_only=True):
    """One shopper action. ``timestamp`` defaults to now (UTC); a naive timestamp is read as UTC."""

    user_id: UserId
    item_id: Id
    event_type: EventTypeName
    timestamp: datetime | None = None
    quantity: float | None = None
    price: float | None = None
    session_id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] | None = None
    recommendation_id: Annotated[str, Meta(max_length=64)] | None = None


class EventBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Up to 500 events in one request."""

    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BATCH)]


class EventsAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """Events stored in the event stream (``event_ids`` are the stream ids, in request order)."""

    accepted: int
    event_ids: list[str]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """Redis answers and a version is published."""

    status: str
    publish_version: int
    model_name: str
    model_version: str
    generated_at: datetime


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 7807 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None
