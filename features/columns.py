"""Column names and standard values of Tailor's data contracts, in one place.

Every module refers to these constants instead of string literals, so a rename is one edit and a
typo is an AttributeError instead of a silently missing column.

Events (one row per shopper action):
    required: ``user_id``, ``item_id``, ``event_type``, ``timestamp``
    optional: ``quantity``, ``price``, ``session_id``
Catalogue (one row per item): ``item_id``, ``category``, ``brand``, ``price``, ``available`` + free attributes.
Users (one row per shopper): ``user_id`` + optional ``segment``, ``region``.

Types after loading: ids are strings (``pl.Utf8``), ``timestamp`` is ``pl.Datetime("us")`` in UTC
(naive), ``quantity`` is ``pl.Float64``, ``price`` is ``pl.Float64``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Columns:
    """Column names used across events, catalogue, users and matrices."""

    USER: Final = "user_id"
    ITEM: Final = "item_id"
    EVENT: Final = "event_type"
    TIMESTAMP: Final = "timestamp"
    QUANTITY: Final = "quantity"
    PRICE: Final = "price"
    SESSION: Final = "session_id"
    WEIGHT: Final = "weight"
    CATEGORY: Final = "category"
    BRAND: Final = "brand"
    AVAILABLE: Final = "available"
    SEGMENT: Final = "segment"
    REGION: Final = "region"
    SCORE: Final = "score"
    RANK: Final = "rank"


class EventType(StrEnum):
    """The standard event types. Other types are allowed and weighted by configuration."""

    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


EVENT_REQUIRED: Final = (Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP)
EVENT_OPTIONAL: Final = (Columns.QUANTITY, Columns.PRICE, Columns.SESSION)
CATALOGUE_REQUIRED: Final = (Columns.ITEM, Columns.CATEGORY, Columns.BRAND, Columns.PRICE, Columns.AVAILABLE)
USERS_REQUIRED: Final = (Columns.USER,)
USERS_OPTIONAL: Final = (Columns.SEGMENT, Columns.REGION)

# Default weight of each standard event type in the interaction matrix. Purchases carry the most
# signal; views are plentiful but weak. Unknown types weigh DEFAULT_OTHER_WEIGHT unless configured.
DEFAULT_EVENT_WEIGHTS: Final[dict[str, float]] = {
    EventType.VIEW: 1.0,
    EventType.ADD_TO_CART: 4.0,
    EventType.PURCHASE: 10.0,
}
DEFAULT_OTHER_WEIGHT: Final = 1.0
