"""Path and query parameters of the storefront endpoints, parsed by one ``msgspec.convert`` per request.

Litestar validates a handler's parameters through a signature model built for it: on every request it
extracts each parameter into a dict, then converts that dict with a decode hook per field. On the
recommendations endpoint that was the largest single cost over the framework's own ceiling. Here the
parameters of an endpoint are one msgspec Struct (:class:`~service.schemas.RecommendationParams`,
:class:`~service.schemas.SimilarParams`):

    parse_params(request, RecommendationParams)    path parameters + query string → the Struct, or a 400
    documented(RecommendationParams)               the OpenAPI operation listing the same parameters

so what is validated and what ``/schema`` documents come from the same declaration. Unknown query
parameters are ignored (as Litestar does); a parameter given twice is an error, not a silent choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.openapi.spec import Example, OpenAPIType, Operation, Parameter, Schema

from service.errors import InvalidInputError
from service.problems import msgspec_error

P = TypeVar("P", bound=msgspec.Struct)

_SCHEMA_KEYS: Final = {  # JSON Schema keyword (msgspec) → litestar.openapi.spec.Schema field
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "description": "description",
    "default": "default",
    "examples": "examples",
}


def parse_params(request: Request[Any, Any, Any], params: type[P]) -> P:
    """``params`` from the request's path parameters and query string; InvalidInputError names the field."""
    values: dict[str, Any] = {}
    query: bytes = request.scope["query_string"]
    if query:
        for name, value in query_pairs(query.decode("utf-8", "replace")):
            if name in values:
                raise InvalidInputError.at(name, "is given more than once")
            values[name] = value
    values.update(request.path_params)  # the path wins over a query parameter of the same name
    try:
        return msgspec.convert(values, params, strict=False)  # strict=False: "10" is the integer 10
    except msgspec.ValidationError as exc:
        raise msgspec_error(exc, root="query") from exc


def query_pairs(query: str) -> list[tuple[str, str]]:
    """``name=value`` pairs of a query string, percent-decoded; blank values kept (``k=`` is ``("k", "")``)."""
    if "%" in query or "+" in query:
        return parse_qsl(query, keep_blank_values=True)
    pairs = []  # the common case, nothing to unquote: a plain split costs a quarter of parse_qsl
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


def documented(params: type[msgspec.Struct]) -> type[Operation]:
    """An OpenAPI operation class (a route handler's ``operation_class``) listing ``params``.

    Fields without a default are path parameters (they are required); fields with one are query
    parameters.
    """
    parameters = openapi_parameters(params)

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = list(parameters)  # replaces what Litestar inferred from the bare path

    DocumentedOperation.__name__ = DocumentedOperation.__qualname__ = f"{params.__name__}Operation"
    return DocumentedOperation


def openapi_parameters(params: type[msgspec.Struct]) -> list[Parameter]:
    """The OpenAPI parameters of ``params``, from msgspec's JSON Schema of it."""
    (_, components) = msgspec.json.schema_components([params])
    spec = components[params.__name__]
    required = set(spec.get("required", ()))
    return [_parameter(name, field, name in required) for name, field in spec["properties"].items()]


def _parameter(name: str, field: dict[str, Any], required: bool) -> Parameter:
    if "anyOf" in field:  # ``X | None = None``: document X, absent means None
        (present,) = (branch for branch in field["anyOf"] if branch.get("type") != "null")
        field = {**present, **{key: value for key, value in field.items() if key != "anyOf" and value is not None}}
    schema = Schema(
        type=OpenAPIType(field["type"]),
        **{attr: field[key] for key, attr in _SCHEMA_KEYS.items() if key in field},
    )
    examples = {f"{name}-example-{n}": Example(value=value) for n, value in enumerate(field.get("examples", ()), 1)}
    return Parameter(
        name=name,
        param_in="path" if required else "query",
        schema=schema,
        description=field.get("description"),
        required=required,
        examples=examples or None,
    )
