"""Examples of the API's answers, shown in the OpenAPI document (``/schema``).

Kept apart from the routes because they are data. ``tests/test_service.py`` decodes every one as its
response type, and checks that the problem examples of the recommendations route are the service's
own answers to those requests, so an example cannot drift from what the service says.
"""

from __future__ import annotations

from typing import Any, Final

Answer = tuple[str, dict[str, Any]]
"""An example's summary and value."""

_PUBLISHED: Final = {"model_version": "3", "publish_version": 7, "generated_at": "2024-05-01T02:00:00Z"}
_RECS: Final = "/v1/users/17850/recommendations"

RECOMMENDATIONS: Final[list[Answer]] = [
    (
        "a known shopper who has just viewed item 22423",
        {
            "user_id": "17850",
            "source": "personalized",
            "degraded": False,
            "items": [
                {"item_id": "85123A", "rank": 1, "score": 0.912, "reason": "personalized", "category": "home"},
                {"item_id": "22720", "rank": 2, "score": 0.887, "reason": "because_you_viewed:22423",
                 "category": "kitchen"},
                {"item_id": "84879", "rank": 3, "score": 0.845, "reason": "personalized", "category": "home"},
            ],
            "recommendation_id": "3f2b0c9e4a5d4c7e8f1a2b3c4d5e6f70",
            "model_name": "tailor",
            **_PUBLISHED,
        },
    ),
    (
        "a shopper the model does not know, asking for a category (?category=kitchen)",
        {
            "user_id": "new-shopper",
            "source": "category",
            "degraded": False,
            "items": [
                {"item_id": "22423", "rank": 1, "score": 412.0, "reason": "popular_in_category:kitchen",
                 "category": "kitchen"},
                {"item_id": "85123A", "rank": 2, "score": 377.0, "reason": "popular", "category": "home"},
            ],
            "recommendation_id": "9a1e77c05d2b4f3c8e6a0b1d2c3e4f50",
            "model_name": "tailor",
            **_PUBLISHED,
        },
    ),
]  # fmt: skip

SIMILAR: Final[list[Answer]] = [
    (
        "two available similar items",
        {
            "item_id": "85123A",
            "items": [
                {"item_id": "21733", "rank": 1, "score": 0.734, "reason": "similar", "category": "home"},
                {"item_id": "84029E", "rank": 2, "score": 0.689, "reason": "similar", "category": "home"},
            ],
            **_PUBLISHED,
        },
    ),
    (
        "an item the model does not know yet: popular items of its category",
        {
            "item_id": "NEW-42",
            "items": [
                {"item_id": "22423", "rank": 1, "score": 412.0, "reason": "popular_in_category:kitchen",
                 "category": "kitchen"},
            ],
            **_PUBLISHED,
        },
    ),
]  # fmt: skip

EVENTS_ACCEPTED: Final[list[Answer]] = [
    ("the batch of two events", {"accepted": 2, "event_ids": ["1714557600000-0", "1714557600000-1"]}),
]


def _problem(status: int, title: str, detail: str, instance: str, field: str | None = None) -> dict[str, Any]:
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if field is not None:
        problem["errors"] = [{"field": field, "message": detail.removeprefix(f"{field}: ")}]
    return problem


PROBLEMS: Final = {
    400: _problem(400, "Invalid request", "k: Expected `int` <= 100", _RECS, "k"),
    401: _problem(401, "Unauthorized", "missing X-API-Key header", _RECS, "X-API-Key"),
    404: _problem(404, "Not found", "item 'nope' is not in published version 7", "/v1/items/nope/similar", "item_id"),
    503: _problem(
        503, "No recommendations published yet", "nothing has been published yet: run `tailor publish`", _RECS
    ),
}
