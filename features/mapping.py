"""Column mappings: how any store's event export becomes Tailor's event contract, without code.

A mapping (:class:`EventMapping`) names the source columns that hold the user, item, time and event
type (plus optional quantity, price and session), how event-type values translate to the standard
types, how to parse time, what to do with duplicates, and a few declarative drop rules. It comes from
a built-in preset (:data:`PRESETS`), a TOML/JSON file (:func:`load_mapping`) or CLI options
(:func:`with_overrides`).

Example mapping file (TOML)::

    user = "visitorid"
    item = "itemid"
    time = "timestamp"
    event = "event"
    time_format = "epoch_ms"
    event_map = { addtocart = "add_to_cart", transaction = "purchase" }

    [[drop]]                      # optional: rows dropped by rule (counted and quarantined)
    reason = "internal_test_user"
    column = "visitorid"
    when = "starts_with"
    value = "test-"

Every problem in a mapping raises :class:`~features.errors.MappingError` naming the key and where the
mapping came from (file, preset or CLI options).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.columns import Columns, EventType
from features.errors import MappingError
from features.validation import INVALID_REASONS

#: Named time formats; anything else must be a strptime pattern (it contains ``%``).
TIME_FORMAT_NAMES: Final = ("epoch_s", "epoch_ms", "iso")


class DropRule(BaseModel):
    """Drop rows by rule (a store policy, not an error): ``reason`` names why, in reports and quarantine.

    ``when`` is one test on one source column:
    ``empty`` (null or blank), ``starts_with`` (text prefix ``value``), ``equals`` (text ``value``),
    ``at_most`` (number ≤ ``value``; unparseable numbers never match).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="snake_case reason shown in reports")
    column: str = Field(min_length=1, description="source column tested")
    when: Literal["empty", "starts_with", "equals", "at_most"]
    value: str | float | None = None

    @field_validator("reason")
    @classmethod
    def _not_a_validation_reason(cls, value: str) -> str:
        if value in INVALID_REASONS:
            raise ValueError(f"{value!r} is a validation reason; name the rule something else")
        return value

    @model_validator(mode="after")
    def _value_fits_test(self) -> DropRule:
        if self.when == "empty" and self.value is not None:
            raise ValueError("'empty' takes no value")
        if self.when in ("starts_with", "equals") and not isinstance(self.value, str):
            raise ValueError(f"'{self.when}' needs a text value")
        if self.when == "at_most" and not isinstance(self.value, int | float):
            raise ValueError("'at_most' needs a numeric value")
        return self


class EventMapping(BaseModel):
    """How source columns and values map to the event contract (see :mod:`features.columns`).

    Either ``event`` (a column) or ``constant_event`` (for purchase-only logs) gives the event type;
    with neither, the contract column ``event_type`` is used. Optional fields left unset fall back to
    the contract's own column name (``quantity``, ``price``, ``session_id``) when the file has it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(Columns.USER, min_length=1, description="source column of user ids")
    item: str = Field(Columns.ITEM, min_length=1, description="source column of item ids")
    time: str = Field(Columns.TIMESTAMP, min_length=1, description="source column of event times")
    event: str | None = Field(None, min_length=1, description="source column of event types")
    constant_event: str | None = Field(None, min_length=1, description="event type of every row (no event column)")
    quantity: str | None = Field(None, min_length=1, description="source column of quantities")
    price: str | None = Field(None, min_length=1, description="source column of unit prices")
    session: str | None = Field(None, min_length=1, description="source column of sessions/orders")
    event_map: dict[str, str] = Field(default_factory=dict, description="source event value → event type")
    unknown_event_types: Literal["keep", "reject"] = Field(
        "keep", description="event types neither standard nor mapped: keep as their own type, or reject"
    )
    time_format: str | tuple[str, ...] = Field(
        "iso", description="epoch_s, epoch_ms, iso or strptime pattern(s), tried in order"
    )
    duplicates: Literal["reject", "keep"] = Field(
        "reject", description="exact duplicate rows after mapping: quarantine all but the first, or keep"
    )
    strip_float_ids: bool = Field(False, description='ids exported as floats ("17850.0") become "17850"')
    drop: tuple[DropRule, ...] = Field((), description="rows dropped by rule, tested in order")

    @model_validator(mode="before")
    @classmethod
    def _default_event_column(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("event") is None and data.get("constant_event") is None:
            return {**data, "event": Columns.EVENT}
        return data

    @model_validator(mode="after")
    def _one_event_source(self) -> EventMapping:
        if self.event is not None and self.constant_event is not None:
            raise ValueError("give either 'event' (a column) or 'constant_event', not both")
        if self.constant_event is not None and self.event_map:
            raise ValueError("'event_map' has no effect with 'constant_event'")
        return self

    @field_validator("time_format")
    @classmethod
    def _known_time_format(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        formats = (value,) if isinstance(value, str) else value
        if not formats:
            raise ValueError("give at least one time format")
        for fmt in formats:
            if fmt not in TIME_FORMAT_NAMES and "%" not in fmt:
                raise ValueError(
                    f"unknown time format {fmt!r}: use {', '.join(TIME_FORMAT_NAMES)} or a strptime pattern"
                )
        return value

    @property
    def time_formats(self) -> tuple[str, ...]:
        """The time formats as a tuple, in the order they are tried."""
        return (self.time_format,) if isinstance(self.time_format, str) else self.time_format

    @property
    def known_event_types(self) -> frozenset[str]:
        """Event types accepted when ``unknown_event_types = "reject"``: standard ones and map targets."""
        return frozenset(EventType) | frozenset(self.event_map.values())

    def source_columns(self) -> dict[str, str]:
        """Mapping key → source column for every column this mapping reads (drop rules as ``drop[i]``)."""
        keys = ("user", "item", "time", "event", "quantity", "price", "session")
        named = {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
        named.update({f"drop[{i}].column": rule.column for i, rule in enumerate(self.drop)})
        return named


def _describe_errors(exc: ValidationError) -> str:
    """One line per problem: ``key: message`` (pydantic's own wording, minus the URL noise)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(mapping)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def build_mapping(data: dict[str, Any], source: str) -> EventMapping:
    """Validate ``data`` into an :class:`EventMapping`; ``source`` (file, preset, options) names it in errors."""
    try:
        return EventMapping.model_validate(data)
    except ValidationError as exc:
        raise MappingError(f"invalid column mapping in {source}:\n{_describe_errors(exc)}") from exc


def load_mapping(path: str | Path) -> EventMapping:
    """Read a mapping file: TOML (``.toml``, preferred) or JSON (``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"mapping file not found: {path}")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise MappingError(f"mapping file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise MappingError(f"cannot parse mapping file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MappingError(f"mapping file {path} must hold a table/object of keys")
    return build_mapping(data, f"mapping file {path}")


def parse_event_map(text: str) -> dict[str, str]:
    """Parse ``"addtocart=add_to_cart,transaction=purchase"`` (the ``--event-map`` option)."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, sep, target = part.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise MappingError(f"--event-map: {part!r} is not SOURCE=TYPE (e.g. 'addtocart=add_to_cart')")
        pairs[source.strip()] = target.strip()
    return pairs


def with_overrides(base: EventMapping, overrides: dict[str, Any], source: str = "CLI options") -> EventMapping:
    """``base`` with the non-None ``overrides`` applied, validated again.

    Setting ``constant_event`` clears the base's event column (and vice versa), since a mapping has one.
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    data = base.model_dump(exclude_unset=True)
    if "constant_event" in changes:
        data.pop("event", None)
        data.pop("event_map", None)
    if "event" in changes:
        data.pop("constant_event", None)
    return build_mapping({**data, **changes}, source)


_RETAILROCKET = EventMapping(
    user="visitorid",
    item="itemid",
    time="timestamp",
    event="event",
    event_map={"addtocart": EventType.ADD_TO_CART, "transaction": EventType.PURCHASE},
    time_format="epoch_ms",
)

# Each invoice line is a purchase. Guests (no CustomerID) and cancellations are store policy, not
# errors: dropped by rule, guest first. Identical lines on one invoice are real separate lines.
_ONLINE_RETAIL = EventMapping(
    user="CustomerID",
    item="StockCode",
    time="InvoiceDate",
    constant_event=EventType.PURCHASE,
    quantity="Quantity",
    price="UnitPrice",
    session="InvoiceNo",
    time_format=("%Y-%m-%d %H:%M:%S", "%m/%d/%Y %H:%M"),
    duplicates="keep",
    strip_float_ids=True,
    drop=(
        DropRule(reason="guest_no_customer_id", column="CustomerID", when="empty"),
        DropRule(reason="cancellation", column="InvoiceNo", when="starts_with", value="C"),
        DropRule(reason="cancellation", column="Quantity", when="at_most", value=0),
    ),
)

#: Built-in mappings by name. ``tailor`` is the native contract (columns named per ``Columns``).
PRESETS: Final[dict[str, EventMapping]] = {
    "tailor": EventMapping(),
    "retailrocket": _RETAILROCKET,
    "online-retail": _ONLINE_RETAIL,
}


def get_preset(name: str) -> EventMapping:
    """The built-in mapping called ``name``; a :class:`MappingError` lists the names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise MappingError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}") from None
