"""Serve-time rules as pure functions (no I/O), so each rule is tested on its own.

A response is built from *streams* of candidates in priority order — the user's precomputed list,
items similar to what they viewed recently, then the fallback lists (requested category, the user's
segment, global). Streams are walked in order, duplicates and blocked items (the caller's exclusions,
purchases) skipped, and the first ``k`` available items win (:func:`pick`).

This runs on every request, so streams wrap the published lists themselves, candidates are built
lazily as plain tuples, and :func:`pick` stops as soon as it has ``k`` items.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, repeat, zip_longest
from typing import NamedTuple, TypeVar

from msgspec import UNSET

from service.contract import ItemMeta, RecList
from service.schemas import RecommendedItem, SimilarItem, Source

PERSONALIZED = "personalized"
POPULAR = "popular"
SIMILAR = "similar"
_UNKNOWN = ItemMeta(available=False)
"""Sentinel (compared by identity) for "no metadata loaded yet", unlike None: "not in the catalogue"."""


class Stream(NamedTuple):
    """Candidates of one step, best first: the round-robin merge of ``lanes`` (one lane for a plain list),
    each lane with its reason; items in ``skip`` are left out of this stream."""

    lanes: tuple[RecList, ...]
    reasons: tuple[str, ...]
    source: Source
    skip: frozenset[str] = frozenset()


Item = TypeVar("Item", RecommendedItem, SimilarItem)
"""What :func:`pick` builds for each item it picks: the response's own item type, so each returned item
is built once, on the spot (the two have the same fields)."""


def from_list(rec: RecList | None, reason: str, source: Source) -> Stream:
    """The stream of one ranked list (empty if the list does not exist)."""
    return Stream((rec,), (reason,), source) if rec is not None else Stream((), (), source)


def because_you_viewed(seeds: Sequence[str], similar: Sequence[RecList | None]) -> Stream:
    """Round-robin merge of the similar-items lists of recently viewed items, most recent seed first.

    The seeds themselves are left out: "because you viewed X" never proposes X.
    """
    lanes = [(rec, f"because_you_viewed:{seed}") for seed, rec in zip(seeds, similar, strict=True) if rec is not None]
    return Stream(tuple(rec for rec, _ in lanes), tuple(r for _, r in lanes), Source.RECENT_VIEWS, frozenset(seeds))


def candidates(stream: Stream) -> Iterator[tuple[str, float, str]]:
    """``(item, score, reason)`` of a stream in order, built lazily (a request reads only a few): a list's
    encoded rest (past its first :data:`~service.contract.HEAD_SIZE` entries) is decoded only if reached."""
    if len(stream.lanes) == 1 and not stream.skip:  # a plain list, the common case
        return _lane(stream.lanes[0], stream.reasons[0])
    lanes = [_lane(rec, reason) for rec, reason in zip(stream.lanes, stream.reasons, strict=True)]
    merged = (c for row in zip_longest(*lanes) for c in row if c is not None)
    return (c for c in merged if c[0] not in stream.skip) if stream.skip else merged


def _lane(rec: RecList, reason: str) -> Iterator[tuple[str, float, str]]:
    head = zip(rec.items, rec.scores, repeat(reason))
    return head if rec.rest is UNSET else chain(head, _rest(rec, reason))


def _rest(rec: RecList, reason: str) -> Iterator[tuple[str, float, str]]:
    """A generator: nothing is decoded until the first entry past the head is asked for."""
    tail = rec.tail()
    if tail is not None:
        yield from zip(tail.items, tail.scores, repeat(reason))


def pick(
    streams: Sequence[Stream],
    blocked: set[str],
    meta: Mapping[str, ItemMeta | None],
    k: int,
    lookahead: int,
    item: type[Item],
) -> tuple[list[Item], Source, list[str]]:
    """The first ``k`` available candidates as ``item``s ranked from 1, each item once (its first,
    best-placed occurrence), blocked ones skipped; items whose metadata is None (not in the catalogue) are
    dropped. Also returns the source of the first one (the step that answered; NONE if nothing).

    If an item's metadata is not in ``meta`` before ``k`` are found, the answer is incomplete: the
    third value then names that item and up to ``lookahead - 1`` further unknown candidates; load
    their metadata and call again. Otherwise it is empty.
    """
    seen = set(blocked)
    see, known = seen.add, meta.get  # bound once: the loop runs ~10 times per request
    picked: list[Item] = []
    first = Source.NONE
    missing: list[str] = []
    for stream in streams:
        source = stream.source
        for item_id, score, reason in candidates(stream):
            if item_id in seen:
                continue
            see(item_id)
            found = known(item_id, _UNKNOWN)
            if found is _UNKNOWN:
                missing.append(item_id)
                if len(missing) >= lookahead:
                    return picked, first, missing
            elif found is not None and found.available and not missing:
                if not picked:
                    first = source
                rank = len(picked) + 1
                picked.append(item(item_id=item_id, rank=rank, score=score, reason=reason, category=found.category))
                if rank >= k:
                    return picked, first, []
    return picked, first, missing


def first_allowed(stream: Stream, blocked: set[str], k: int, item: type[Item]) -> tuple[list[Item], Source]:
    """The first ``k`` items of ``stream`` not blocked, each once, without metadata (the outage answer), and
    the step that answered as :func:`pick` gives it (NONE if nothing)."""
    seen = set(blocked)
    picked: list[Item] = []
    for item_id, score, reason in candidates(stream):
        if len(picked) >= k:
            break
        if item_id not in seen:
            seen.add(item_id)
            picked.append(item(item_id=item_id, rank=len(picked) + 1, score=score, reason=reason))
    return picked, stream.source if picked else Source.NONE


def parse_exclude(raw: str | None) -> list[str]:
    """Comma-separated item ids, blanks ignored."""
    if not raw:
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]
