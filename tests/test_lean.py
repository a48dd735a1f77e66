"""`LeanRoute` answers as FastAPI's own handler does, byte for byte (and the
endpoint runs with the same arguments), and the API's routes that people hit
on every click take its quick path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from bot import ScriptedModel, ThreadBot
from channels.http import create_app
from channels.lean import LeanRoute, _plan, _Unplanned
from store import EventStore


class Decision(BaseModel):
    approved: bool = Field(strict=True)
    comment: str | None = Field(None, max_length=10)
    arguments: dict[str, Any] | None = None


class Receipt(BaseModel):
    thread_id: str
    seq: int
    echo: dict[str, Any]


Key = Annotated[str | None, Header(alias="Idempotency-Key", max_length=8)]
Signature = Annotated[str, Header(alias="X-Sig")]

seen: list[str] = []
"""Which endpoint ran for each request, and with what."""


def build(route_class: type | None) -> FastAPI:
    app = FastAPI()
    if route_class is not None:
        app.router.route_class = route_class

    @app.exception_handler(KeyError)
    async def _missing(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no {exc}"}, status_code=404)

    @app.post("/t/{tid}/decide", status_code=202, response_model=Receipt)
    async def decide(request: Request, tid: str, body: Decision, key: Key = None) -> Receipt:
        if tid == "gone":
            raise KeyError(tid)
        seen.append(f"decide {tid} {body.approved} {key}")
        return Receipt(thread_id=tid, seq=len(seen), echo=body.model_dump())

    @app.get("/t/{tid}", response_model=Receipt)
    async def read(request: Request, tid: str) -> JSONResponse:
        seen.append(f"read {tid}")
        return JSONResponse({"thread_id": tid, "seq": 0, "echo": {}})

    @app.post("/t/{tid}/signed", response_model=Receipt)
    async def signed(tid: str, body: Decision, sig: Signature) -> Receipt:
        seen.append(f"signed {tid} {sig}")
        return Receipt(thread_id=tid, seq=0, echo={})

    @app.get("/t/{tid}/sparse", response_model=Receipt, response_model_exclude_none=True)
    async def sparse(tid: str) -> Receipt:
        return Receipt(thread_id=tid, seq=0, echo={})

    @app.get("/list")
    async def listing(limit: int = 3) -> dict[str, int]:
        return {"limit": limit}

    return app


JSON = {"Content-Type": "application/json"}
REQUESTS: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("POST", "/t/a/decide", b'{"approved": true}', JSON),
    ("POST", "/t/a/decide", b'{"approved": false, "comment": "no", "extra": 1}', JSON),
    ("POST", "/t/a/decide", b'{"approved": true}', {**JSON, "Idempotency-Key": "k1"}),
    ("POST", "/t/a/decide", b'{"approved": true}', {**JSON, "Idempotency-Key": "x" * 9}),
    ("POST", "/t/a/decide", b'{"approved": "yes"}', JSON),
    ("POST", "/t/a/decide", b'{"approved": true, "comment": "' + b"c" * 11 + b'"}', JSON),
    ("POST", "/t/a/decide", b"", JSON),
    ("POST", "/t/a/decide", b"{not json", JSON),
    ("POST", "/t/a/decide", b"[1, 2]", JSON),
    ("POST", "/t/a/decide", b"[" * 5000 + b"]" * 5000, JSON),
    ("POST", "/t/a/decide", b'{"approved": true}', {"Content-Type": "text/plain"}),
    ("POST", "/t/a/decide", b'{"approved": true}', {}),
    ("POST", "/t/a/decide", b'{"approved": true}', {"Content-Type": "application/vnd.x+json"}),
    ("POST", "/t/gone/decide", b'{"approved": true}', JSON),
    ("GET", "/t/b", None, {}),
    ("POST", "/t/c/signed", b'{"approved": true}', {**JSON, "X-Sig": "s"}),
    ("POST", "/t/c/signed", b'{"approved": true}', JSON),
    ("GET", "/t/d/sparse", None, {}),
    ("GET", "/list?limit=5", None, {}),
    ("GET", "/list?limit=x", None, {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), REQUESTS)
def test_the_same_answer_as_fastapis_handler(
    method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    answers = []
    for route_class in (None, LeanRoute):
        seen.clear()
        with TestClient(build(route_class), raise_server_exceptions=False) as client:
            r = client.request(method, path, content=body, headers=headers)
        answers.append((r.status_code, r.headers.get("content-type"), r.content, list(seen)))
    assert answers[0] == answers[1]


def test_what_the_quick_path_takes() -> None:
    """The request, str path parameters, headers and one body model; a query
    parameter, or a response model serialized other than by default, sends
    the route to FastAPI's handler."""
    app = build(LeanRoute)
    plans = {
        (route.path, *sorted(route.methods)): _planned(route)
        for route in app.routes
        if isinstance(route, LeanRoute)
    }
    assert plans == {
        ("/t/{tid}/decide", "POST"): True,
        ("/t/{tid}", "GET"): True,
        ("/t/{tid}/signed", "POST"): True,
        ("/t/{tid}/sparse", "GET"): False,
        ("/list", "GET"): False,
    }


def _planned(route: LeanRoute) -> bool:
    try:
        _plan(route)
    except _Unplanned:
        return False
    return True


def test_the_apis_click_routes_are_planned(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    app = create_app(ThreadBot(store, ScriptedModel()))
    planned = {
        (route.path, *sorted(route.methods))
        for route in app.routes
        if isinstance(route, LeanRoute) and _planned(route)
    }
    store.close()
    for hot in (
        ("/threads/{thread_id}", "GET"),
        ("/threads/{thread_id}/approvals", "POST"),
        ("/threads/{thread_id}/responses", "POST"),
        ("/threads", "POST"),
    ):
        assert hot in planned
    # Query parameters go through FastAPI's handler.
    assert ("/threads", "GET") not in planned
    assert json.dumps(app.openapi())  # the schema still builds from the same routes
