"""The Redis contract shared by the publisher (``training.publish``) and the service.

Everything either side reads or writes in Redis is named by :func:`key` (via :class:`Keys`) and
encoded as a msgspec Struct in msgpack. Payloads carry external ids only, never matrix indices.

Key layout (``{v}`` is a publish version, an integer from ``INCR tailor:version_seq``; the
variable part of a key always comes last, so two kinds of key can never collide)::

    tailor:active                        ActiveVersion   the version being served; switched atomically
    tailor:version_seq                   integer         INCR counter handing out version ids
    tailor:versions                      hash            version → VersionState (writing/live/retired)
    tailor:publish_lock                  string          owner of the running publish ("host:pid:token")
    tailor:v{v}:manifest                 ActiveVersion   completeness marker, written after everything else
    tailor:v{v}:items                    hash            item_id → ItemMeta (availability, category)
    tailor:v{v}:user:{user_id}           UserRecs        top-N for a user (+ segment); may be empty
    tailor:v{v}:similar:{item_id}        RecList         top-N similar items
    tailor:v{v}:popular                  RecList         global fallback list
    tailor:v{v}:popular:category:{c}     RecList         fallback list of one category
    tailor:v{v}:popular:segment:{s}      RecList         fallback list of one user segment
    tailor:events                        stream          every event posted to the service (not versioned)
    tailor:rt:bought:{user_id}           set             items bought since publish (not versioned, TTL)
    tailor:rt:recent:{user_id}           list            recently viewed/carted items, newest first (TTL)

A version's namespace is immutable once written: readers fetch ``tailor:active`` first and then
only keys of that version, so a response is never a mix of two versions. Old namespaces are kept
for a grace period after the switch (readers in flight) and deleted by the next publish.

Event stream entries are flat string maps with the fields of :data:`EVENT_FIELDS`; absent optional
fields are left out, ``timestamp`` is ISO-8601 UTC.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Self, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from features.columns import Columns

PREFIX: Final = "tailor"
SCHEMA_VERSION: Final = 2
"""Bumped when a payload changes incompatibly; the service refuses versions it cannot read.
2: ranked lists keep entries past :data:`HEAD_SIZE` in ``rest`` (1 had them all in ``items``)."""
HEAD_SIZE: Final = 24
"""Entries of a ranked list decoded with it; the rest stay encoded until a reader walks past them."""

EVENT_STREAM_MAXLEN: Final = 1_000_000
"""Approximate cap of the event stream (``XADD MAXLEN ~``): older entries are trimmed."""
RECENT_MAX: Final = 20
"""Recently viewed/carted items kept per user."""
BOUGHT_MAX: Final = 100
"""Past purchases stored per user (``UserRecs.bought``)."""
REALTIME_TTL_S: Final = 30 * 86_400
"""Real-time per-user state expires after 30 days without events."""

EVENT_FIELDS: Final = (
    Columns.USER,
    Columns.ITEM,
    Columns.EVENT,
    Columns.TIMESTAMP,
    Columns.QUANTITY,
    Columns.PRICE,
    Columns.SESSION,
    "recommendation_id",
)


class ContractError(ValueError):
    """A Redis payload cannot be decoded as the type the contract says (names the key)."""


def key(*parts: str | int) -> str:
    """The one key builder: ``tailor:<part>:<part>...``. Every Redis key in Tailor comes from here."""
    return ":".join((PREFIX, *(str(p) for p in parts)))


class Keys:
    """Named keys of the layout in the module docstring, all built with :func:`key`."""

    ACTIVE: Final = key("active")
    VERSION_SEQ: Final = key("version_seq")
    VERSIONS: Final = key("versions")
    PUBLISH_LOCK: Final = key("publish_lock")
    EVENTS: Final = key("events")

    @staticmethod
    def namespace(version: int) -> str:
        """Prefix of every key of one version (``SCAN MATCH namespace + '*'`` finds them all)."""
        return key(f"v{version}", "")

    @staticmethod
    def manifest(version: int) -> str:
        return key(f"v{version}", "manifest")

    @staticmethod
    def items(version: int) -> str:
        return key(f"v{version}", "items")

    @staticmethod
    def user(version: int, user_id: str) -> str:
        return key(f"v{version}", "user", user_id)

    @staticmethod
    def similar(version: int, item_id: str) -> str:
        return key(f"v{version}", "similar", item_id)

    @staticmethod
    def popular(version: int) -> str:
        return key(f"v{version}", "popular")

    @staticmethod
    def popular_category(version: int, category: str) -> str:
        return key(f"v{version}", "popular", "category", category)

    @staticmethod
    def popular_segment(version: int, segment: str) -> str:
        return key(f"v{version}", "popular", "segment", segment)

    @staticmethod
    def bought(user_id: str) -> str:
        return key("rt", "bought", user_id)

    @staticmethod
    def recent(user_id: str) -> str:
        return key("rt", "recent", user_id)


class RecList(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ranked list of external item ids with their scores, best first, stored in two parts.

    ``items``/``scores`` (same length) hold the first :data:`HEAD_SIZE` entries; ``rest`` holds the others
    as one embedded ``RecList`` (of those entries only, without a rest of its own), left encoded
    (``msgspec.Raw``; ``UNSET``, and absent from the payload, when the list is short). A page of 10
    reads the head only, so a reader decodes ~24 entries instead of the published top-100: decoding was
    the largest cost of a recommendation in the service. Build lists with :meth:`of`; read them whole
    with :meth:`entries`.
    """

    items: list[str]
    scores: list[float]
    rest: msgspec.Raw | UnsetType = UNSET

    @classmethod
    def of(cls, items: Sequence[str], scores: Sequence[float], **fields: Any) -> Self:
        """The list of ``items``/``scores`` (best first) split into head and rest; ``fields``: a subclass's."""
        if len(items) != len(scores):
            raise ContractError(f"a ranked list needs one score per item: {len(items)} items, {len(scores)} scores")
        rest: msgspec.Raw | UnsetType = UNSET
        if len(items) > HEAD_SIZE:
            rest = msgspec.Raw(encode(RecList(items=list(items[HEAD_SIZE:]), scores=list(scores[HEAD_SIZE:]))))
        return cls(items=list(items[:HEAD_SIZE]), scores=list(scores[:HEAD_SIZE]), rest=rest, **fields)

    def tail(self) -> RecList | None:
        """The entries after the head (decoded now), or None if there are none."""
        return None if self.rest is UNSET else decode(self.rest, RecList, where="the rest of a ranked list")

    def entries(self) -> Iterator[tuple[str, float]]:
        """Every ``(item, score)``, best first; the rest is decoded only when the iteration reaches it."""
        yield from zip(self.items, self.scores, strict=True)
        tail = self.tail()
        if tail is not None:
            yield from zip(tail.items, tail.scores, strict=True)


class UserRecs(RecList, frozen=True, kw_only=True, omit_defaults=True):
    """A user's precomputed list (a :class:`RecList`); empty for users only known by their segment.

    ``bought`` holds (up to :data:`BOUGHT_MAX`) items the user bought before the publish, so the
    service keeps them out of fallback top-ups too, not only out of the precomputed list.
    """

    segment: str | None = None
    bought: list[str] = []


class ItemMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the service needs to know about a catalogue item at serve time."""

    available: bool = True
    category: str | None = None


class ActiveVersion(msgspec.Struct, frozen=True, kw_only=True):
    """The record behind ``tailor:active`` and each version's manifest."""

    schema: int = SCHEMA_VERSION
    version: int
    model_name: str
    model_version: str
    run_id: str | None
    generated_at: datetime
    users: int
    items: int


class VersionStatus(StrEnum):
    WRITING = "writing"
    LIVE = "live"
    RETIRED = "retired"


class VersionState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Life-cycle record of a version in ``tailor:versions`` (drives cleanup of old namespaces)."""

    status: VersionStatus
    started_at: datetime
    retired_at: datetime | None = None


T = TypeVar("T")


def encode(payload: msgspec.Struct) -> bytes:
    """Encode a contract payload as msgpack."""
    return _encoder().encode(payload)


def decode(data: bytes | str, type_: type[T], *, where: str = "") -> T:
    """Decode msgpack ``data`` as ``type_``; :class:`ContractError` names ``where`` (the key) on failure.

    ``str`` is accepted only to fail clearly: it means the Redis client decodes responses, which
    msgpack payloads cannot survive.
    """
    if isinstance(data, str):
        raise ContractError(f"{where or '<payload>'}: got text, not bytes (use a client with decode_responses=False)")
    decoder: msgspec.msgpack.Decoder[T] = _decoder(type_)  # type: ignore[arg-type]  # types are hashable
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"cannot decode {type_.__name__} at {where or '<payload>'}: {exc}") from exc


@functools.cache
def _encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


@functools.cache
def _decoder(type_: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(type_)
