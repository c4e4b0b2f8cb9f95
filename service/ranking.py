"""Serve-time rules as pure functions (no I/O), so each rule is tested on its own.

A response is built from *streams* of candidates in priority order — the user's precomputed list,
items similar to what they viewed recently, then the fallback lists (requested category, the user's
segment, global). Streams are walked in order, duplicates and blocked items (the caller's exclusions,
purchases) skipped, and the first ``k`` available items win (:func:`pick`).

This runs on every request, so streams are the published lists themselves (no object per candidate)
and :func:`pick` stops as soon as it has ``k`` items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import NamedTuple

from service.contract import ItemMeta, RecList
from service.schemas import Source

PERSONALIZED = "personalized"
POPULAR = "popular"
_UNKNOWN = ItemMeta(available=False)
"""Sentinel (compared by identity) for "no metadata loaded yet", unlike None: "not in the catalogue"."""


class Stream(NamedTuple):
    """Candidates of one step, best first; ``reasons`` is one reason for all of them, or one per item."""

    items: Sequence[str]
    scores: Sequence[float]
    reasons: str | Sequence[str]
    source: Source


class Chosen(NamedTuple):
    """An item picked for the response."""

    item_id: str
    score: float
    reason: str
    source: Source
    category: str | None


def from_list(rec: RecList | None, reason: str, source: Source) -> Stream:
    """The stream of one ranked list (empty if the list does not exist)."""
    if rec is None:
        return Stream((), (), reason, source)
    return Stream(rec.items, rec.scores, reason, source)


def because_you_viewed(seeds: Sequence[str], similar: Sequence[RecList | None]) -> Stream:
    """Round-robin merge of the similar-items lists of recently viewed items, most recent seed first.

    The seeds themselves are left out: "because you viewed X" never proposes X.
    """
    rows = [
        zip(rec.items, rec.scores, [f"because_you_viewed:{seed}"] * len(rec.items), strict=True)
        for seed, rec in zip(seeds, similar, strict=True)
        if rec is not None
    ]
    seed_set = set(seeds)
    merged = [c for row in zip_longest(*rows) for c in row if c is not None and c[0] not in seed_set]
    return Stream([c[0] for c in merged], [c[1] for c in merged], [c[2] for c in merged], Source.RECENT_VIEWS)


def pick(
    streams: Sequence[Stream], blocked: set[str], meta: Mapping[str, ItemMeta | None], k: int, lookahead: int
) -> tuple[list[Chosen], list[str]]:
    """The first ``k`` available candidates, each item once (its first, best-placed occurrence), blocked
    ones skipped; items whose metadata is None (not in the catalogue) are dropped.

    If an item's metadata is not in ``meta`` before ``k`` are found, the answer is incomplete: the
    second list then names that item and up to ``lookahead - 1`` further unknown candidates; load
    their metadata and call again. Otherwise the second list is empty.
    """
    seen = set(blocked)
    chosen: list[Chosen] = []
    missing: list[str] = []
    for items, scores, reasons, source in streams:
        one_reason = reasons if isinstance(reasons, str) else None
        for i, item in enumerate(items):
            if item in seen:
                continue
            seen.add(item)
            found = meta.get(item, _UNKNOWN)
            if found is _UNKNOWN:
                missing.append(item)
                if len(missing) >= lookahead:
                    return chosen, missing
            elif found is not None and found.available and not missing:
                chosen.append(Chosen(item, scores[i], one_reason or reasons[i], source, found.category))
                if len(chosen) >= k:
                    return chosen, []
    return chosen, missing


def first_allowed(stream: Stream, blocked: set[str], k: int) -> list[Chosen]:
    """The first ``k`` items of ``stream`` not blocked, each once, without metadata (the outage answer)."""
    seen = set(blocked)
    chosen: list[Chosen] = []
    for i, item in enumerate(stream.items):
        if item not in seen and len(chosen) < k:
            seen.add(item)
            reason = stream.reasons if isinstance(stream.reasons, str) else stream.reasons[i]
            chosen.append(Chosen(item, stream.scores[i], reason, stream.source, None))
    return chosen


def parse_exclude(raw: str | None) -> list[str]:
    """Comma-separated item ids, blanks ignored."""
    if not raw:
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]
