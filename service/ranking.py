"""Serve-time rules as pure functions (no I/O), so each rule is tested on its own.

A response is built from *streams* of candidates in priority order — the user's precomputed list,
items similar to what they viewed recently, then the fallback lists (requested category, the user's
segment, global). Streams are concatenated, duplicates and blocked items (the caller's exclusions,
purchases) dropped, and the first ``k`` available items win.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from service.contract import ItemMeta, RecList
from service.schemas import Source

PERSONALIZED = "personalized"
POPULAR = "popular"
_UNKNOWN = ItemMeta(available=False)
"""Sentinel (compared by identity) for "no metadata loaded yet", unlike None: "not in the catalogue"."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item proposed by one stream, with the reason shown to the caller."""

    item_id: str
    score: float
    reason: str
    source: Source


Chosen = tuple[Candidate, str | None]
"""A candidate picked for the response, with its category."""


def from_list(rec: RecList | None, reason: str, source: Source) -> Iterator[Candidate]:
    """Candidates of one ranked list (empty if the list does not exist), built lazily."""
    if rec is None:
        return iter(())
    return (Candidate(item, score, reason, source) for item, score in zip(rec.items, rec.scores, strict=True))


def because_you_viewed(seeds: Sequence[str], similar: Sequence[RecList | None]) -> Iterator[Candidate]:
    """Round-robin merge of the similar-items lists of recently viewed items, most recent seed first.

    The seeds themselves are left out: "because you viewed X" never proposes X.
    """
    reasons = [f"because_you_viewed:{seed}" for seed in seeds]
    streams = [from_list(rec, reason, Source.RECENT_VIEWS) for reason, rec in zip(reasons, similar, strict=True)]
    seed_set = set(seeds)
    merged = (c for row in zip_longest(*streams) for c in row if c is not None)
    return (c for c in merged if c.item_id not in seed_set)


def unique_allowed(streams: Iterable[Iterable[Candidate]], blocked: set[str]) -> Iterator[Candidate]:
    """All candidates in stream order, each item once (its first, best-placed occurrence), blocked ones dropped."""
    seen = set(blocked)
    for stream in streams:
        for candidate in stream:
            if candidate.item_id not in seen:
                seen.add(candidate.item_id)
                yield candidate


def take_available(
    candidates: Iterator[Candidate], meta: Mapping[str, ItemMeta | None], k: int, chosen: list[Chosen]
) -> Candidate | None:
    """Move available candidates, with their category, to ``chosen`` until it holds ``k``.

    Items known not to be in the catalogue (metadata None) are dropped. Stops at the first candidate
    whose metadata ``meta`` does not hold and returns it (the caller loads it and calls again), else None.
    """
    for candidate in candidates:
        item = meta.get(candidate.item_id, _UNKNOWN)
        if item is _UNKNOWN:
            return candidate
        if item is not None and item.available:
            chosen.append((candidate, item.category))
            if len(chosen) >= k:
                return None
    return None


def parse_exclude(raw: str | None) -> list[str]:
    """Comma-separated item ids, blanks ignored."""
    if not raw:
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]
