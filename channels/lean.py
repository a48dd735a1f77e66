"""FastAPI routes that answer a well-formed request directly.

FastAPI derives everything about a route from its endpoint's signature: the
OpenAPI schema, what to read from a request, what to validate. Per request
its handler then runs a general machinery (dependency solving, telemetry,
content-type parsing, response revalidation) that costs more than most of
this API's endpoints do themselves, and a person waits for it on every click.

`LeanRoute` keeps FastAPI's route, schema, routing and exception handling,
and answers a request itself when the endpoint takes only the request, `str`
path parameters, header parameters and one JSON body model, and returns a
`Response` or its declared response model. Anything else, and every request
its quick checks do not accept (a missing or malformed body, an invalid
header), goes to FastAPI's own handler, so that errors keep FastAPI's exact
shape and wording: the quick path only ever skips work, never decides.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeGuard, get_args, get_origin, get_type_hints

from fastapi import params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .guard import is_json

__all__ = ["LeanRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


@dataclass(frozen=True, slots=True)
class _Header:
    name: str
    header: str
    adapter: TypeAdapter[Any]
    required: bool
    default: Any


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to call the endpoint from a request, worked out once."""

    request: str | None
    path: tuple[str, ...]
    headers: tuple[_Header, ...]
    body: tuple[str, type[BaseModel]] | None


class _Unplanned(Exception):
    """The endpoint takes something the quick path does not give."""


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        stock = super().get_route_handler()
        try:
            plan = _plan(self)
        except _Unplanned:
            return stock
        model = self.response_model if _is_model(self.response_model) else None
        status = self.status_code or 200

        async def handler(request: Request) -> Response:
            values = await _values(plan, request)
            if values is None:
                return await stock(request)
            result = await self.endpoint(**values)
            if isinstance(result, Response):
                return result
            assert model is not None and isinstance(result, model), (
                f"{self.path} returned {type(result).__name__}, not its response model"
            )
            return Response(result.model_dump_json(), status, media_type="application/json")

        return handler


def _plan(route: APIRoute) -> _Plan:
    if not inspect.iscoroutinefunction(route.endpoint) or route.dependencies:
        raise _Unplanned
    hints = get_type_hints(route.endpoint, include_extras=True)
    returns = hints.get("return")
    # A model is answered as FastAPI's defaults would have it serialized.
    plain_model = (
        _is_model(route.response_model)
        and isinstance(route.response_class, DefaultPlaceholder)
        and route.response_model_include is None
        and route.response_model_exclude is None
        and route.response_model_by_alias
        and not route.response_model_exclude_unset
        and not route.response_model_exclude_defaults
        and not route.response_model_exclude_none
    )
    if not plain_model and not (isinstance(returns, type) and issubclass(returns, Response)):
        raise _Unplanned
    request: str | None = None
    path: list[str] = []
    headers: list[_Header] = []
    body: tuple[str, type[BaseModel]] | None = None
    for name, param in inspect.signature(route.endpoint).parameters.items():
        hint = hints.get(name)
        base, marks = (get_args(hint)[0], get_args(hint)[1:]) if _annotated(hint) else (hint, ())
        header = next((m for m in marks if isinstance(m, params.Header)), None)
        if base is Request and not marks:
            request = name
        elif name in route.param_convertors and base is str and not marks:
            path.append(name)
        elif header is not None and isinstance(header.alias, str):
            # The header's constraints (its length, say), without its alias.
            constrained: Any = Annotated[(base, *header.metadata)] if header.metadata else base
            adapter: TypeAdapter[Any] = TypeAdapter(constrained)
            required = param.default is inspect.Parameter.empty
            headers.append(_Header(name, header.alias, adapter, required, param.default))
        elif _is_model(base) and not marks and body is None:
            body = (name, base)
        else:
            raise _Unplanned
    return _Plan(request, tuple(path), tuple(headers), body)


def _annotated(hint: Any) -> bool:
    return get_origin(hint) is Annotated


def _is_model(value: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


async def _values(plan: _Plan, request: Request) -> dict[str, Any] | None:
    """The endpoint's arguments, or None to leave the request to FastAPI."""
    values: dict[str, Any] = {}
    if plan.request is not None:
        values[plan.request] = request
    path_params = request.path_params
    for name in plan.path:
        values[name] = path_params[name]
    for h in plan.headers:
        raw = request.headers.get(h.header)
        if raw is None:
            if h.required:
                return None
            values[h.name] = h.default
            continue
        try:
            values[h.name] = h.adapter.validate_python(raw)
        except ValidationError:
            return None
    if plan.body is not None:
        name, model = plan.body
        data = await request.body()
        if not data or not is_json(request.headers.get("content-type", "").encode("latin-1")):
            return None
        try:
            values[name] = model.model_validate(json.loads(data))
        except Exception:  # invalid, or too deep to parse: FastAPI's handler says which
            return None
    return values
