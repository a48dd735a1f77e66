"""The HTTP API of `threadbot serve`, run as a subprocess, with the real
`openai` client inside it talking to a local fake model server."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import (
    REPO,
    FakeOpenAI,
    ServerProcess,
    ask,
    calls,
    free_port,
    serve_refused,
    text,
)


def env_for(db: Path, fake: FakeOpenAI, ledger: Path, **extra: str) -> dict[str, str]:
    return {
        "THREADBOT_DB": str(db),
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "test",
        "THREADBOT_MODEL": "fake-model",
        "THREADBOT_TOOLS": str(REPO / "tests" / "ledger_tools.py"),
        "THREADBOT_TEST_LEDGER": str(ledger),
        "THREADBOT_SMTP": f"127.0.0.1:{free_port()}",
        **extra,
    }


@pytest.fixture
def server(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(env_for(db_path, fake_openai, ledger)).start()
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def wait_status(client: httpx.Client, thread_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = client.get(f"/threads/{thread_id}").json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"thread stayed {body['status']}: {body}")
        time.sleep(0.02)


def test_launch_question_answer_over_http(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(ask("Which version?", ["1.4.2", "1.5.0"]), text("Deployed 1.4.2."))
    r = client.post("/threads", json={"text": "deploy the api"})
    assert r.status_code == 201
    created = r.json()
    assert set(created) == {"id", "status"}
    thread_id = created["id"]

    body = wait_status(client, thread_id, "waiting_for_human")
    assert set(body) >= {"id", "status", "pending", "events"}
    pending = body["pending"]
    assert pending["kind"] == "question"
    assert pending["question"] == "Which version?"
    assert pending["options"] == ["1.4.2", "1.5.0"]
    assert [(e["seq"], e["type"]) for e in body["events"]] == [
        (0, "user_message"),
        (1, "tool_call"),
    ]

    listed = client.get("/threads", params={"status": "waiting_for_human"}).json()
    assert [t["id"] for t in listed] == [thread_id]
    assert set(listed[0]) >= {"id", "status", "title", "updated_at"}
    assert client.get("/threads", params={"status": "done"}).json() == []

    r = client.post(
        f"/threads/{thread_id}/responses", json={"text": "1.4.2", "call_id": pending["call_id"]}
    )
    assert r.status_code == 202
    body = wait_status(client, thread_id, "done")
    assert body["pending"] is None
    assert body["events"][-1]["text"] == "Deployed 1.4.2."

    md = client.get(f"/threads/{thread_id}/markdown")
    assert md.status_code == 200
    assert md.headers["content-type"].startswith("text/markdown")
    assert "Which version?" in md.text and "Deployed 1.4.2." in md.text


def test_approve_reject_result_continue_fork(
    client: httpx.Client, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("deploy", {"service": "api", "version": "2"})), text("Not deployed."))
    thread_id = client.post("/threads", json={"text": "deploy api 2"}).json()["id"]
    body = wait_status(client, thread_id, "waiting_for_approval")
    assert body["pending"]["tool"] == "deploy"
    assert body["pending"]["arguments"] == {"service": "api", "version": "2"}
    r = client.post(
        f"/threads/{thread_id}/approvals", json={"approved": False, "comment": "freeze"}
    )
    assert r.status_code == 202
    wait_status(client, thread_id, "done")
    assert "freeze" in fake_openai.requests[-1]["messages"][-1]["content"]
    assert ledger.read_text() == ""

    fake_openai.add(calls(("deploy", {"service": "api", "version": "3"})), text("Deployed 3."))
    assert client.post(f"/threads/{thread_id}/messages", json={"text": "then 3"}).status_code == 202
    wait_status(client, thread_id, "waiting_for_approval")
    assert (
        client.post(f"/threads/{thread_id}/approvals", json={"approved": True}).status_code == 202
    )
    wait_status(client, thread_id, "done")
    assert ledger.read_text().startswith("deploy api 3 ")

    fake_openai.add(calls(("start_job", {"job": "backup"})), text("Backed up."))
    assert client.post(f"/threads/{thread_id}/messages", json={"text": "backup"}).status_code == 202
    body = wait_status(client, thread_id, "waiting_for_result")
    call_id = body["pending"]["call_id"]
    r = client.post(
        f"/threads/{thread_id}/results", json={"call_id": call_id, "output": {"ok": True}}
    )
    assert r.status_code == 202
    body = wait_status(client, thread_id, "done")

    r = client.post(f"/threads/{thread_id}/fork", json={"at": 1})
    assert r.status_code == 201
    fork = wait_status(client, r.json()["id"], "waiting_for_approval")
    assert len(fork["events"]) == 2
    assert len(client.get(f"/threads/{thread_id}").json()["events"]) == len(body["events"])


def test_errors_are_json_and_change_nothing(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(ask("Which?"), text("ok"))
    thread_id = client.post("/threads", json={"text": "deploy"}).json()["id"]
    body = wait_status(client, thread_id, "waiting_for_human")
    n = len(body["events"])

    cases = [
        ("GET", "/threads/nope", None, 404),
        ("POST", "/threads/nope/responses", {"text": "x"}, 404),
        ("POST", f"/threads/{thread_id}/approvals", {"approved": True}, 409),
        ("POST", f"/threads/{thread_id}/results", {"call_id": "zzz", "output": 1}, 409),
        ("POST", f"/threads/{thread_id}/messages", {"text": "hello"}, 409),
        ("POST", f"/threads/{thread_id}/responses", {"text": "x", "call_id": "other"}, 409),
        ("POST", f"/threads/{thread_id}/responses", {}, 422),
        ("POST", f"/threads/{thread_id}/responses", {"text": ""}, 422),
        ("POST", f"/threads/{thread_id}/approvals", {"approved": "maybe"}, 422),
        ("POST", f"/threads/{thread_id}/fork", {"at": 99}, 422),
        ("POST", f"/threads/{thread_id}/fork", {"at": -1}, 422),
        ("POST", "/threads", {"text": 5}, 422),
        ("POST", "/threads", [1, 2], 422),
        ("GET", "/threads?status=sleeping", None, 422),
    ]
    for method, path, payload, status in cases:
        r = client.request(method, path, json=payload)
        assert r.status_code == status, (method, path, payload, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"], r.text
    raw = client.post(
        f"/threads/{thread_id}/responses",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert raw.status_code == 422
    assert "not valid JSON" in raw.json()["error"]
    assert len(client.get(f"/threads/{thread_id}").json()["events"]) == n

    # A late answer to a settled question says who answered.
    call_id = body["pending"]["call_id"]
    ok = client.post(
        f"/threads/{thread_id}/responses", json={"text": "a", "user": "ann", "call_id": call_id}
    )
    assert ok.status_code == 202
    late = client.post(f"/threads/{thread_id}/responses", json={"text": "b", "call_id": call_id})
    assert late.status_code == 409
    assert late.json()["by"] == "ann"
    assert "ann" in late.json()["error"]


def test_idempotency_key_makes_a_repeat_a_no_op(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(ask("Which?"), text("ok"))
    key = {"Idempotency-Key": "launch-1"}
    a = client.post("/threads", json={"text": "deploy"}, headers=key)
    b = client.post("/threads", json={"text": "deploy"}, headers=key)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"]
    assert len(client.get("/threads").json()) == 1
    thread_id = a.json()["id"]
    wait_status(client, thread_id, "waiting_for_human")
    key = {"Idempotency-Key": "answer-1"}
    r1 = client.post(f"/threads/{thread_id}/responses", json={"text": "1"}, headers=key)
    wait_status(client, thread_id, "done")
    r2 = client.post(f"/threads/{thread_id}/responses", json={"text": "1"}, headers=key)
    assert r1.status_code == r2.status_code == 202
    assert r2.json() == {**r1.json(), "duplicate": True}
    events = client.get(f"/threads/{thread_id}").json()["events"]
    assert [e["type"] for e in events].count("human_response") == 1
    assert len(fake_openai.requests) == 2


def test_two_concurrent_answers_one_wins(
    client: httpx.Client, fake_openai: FakeOpenAI, server: ServerProcess
) -> None:
    fake_openai.add(ask("Which?"), text("ok"))
    thread_id = client.post("/threads", json={"text": "deploy"}).json()["id"]
    wait_status(client, thread_id, "waiting_for_human")
    codes: list[int] = []
    barrier = threading.Barrier(2)

    def answer(text: str) -> None:
        with httpx.Client(base_url=server.url) as c:
            barrier.wait()
            codes.append(c.post(f"/threads/{thread_id}/responses", json={"text": text}).status_code)

    workers = [threading.Thread(target=answer, args=(t,)) for t in ("1", "2")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(codes) == [202, 409]
    events = wait_status(client, thread_id, "done")["events"]
    assert [e["type"] for e in events].count("human_response") == 1


def test_openapi_schema(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/threads",
        "/threads/{thread_id}",
        "/threads/{thread_id}/markdown",
        "/threads/{thread_id}/responses",
        "/threads/{thread_id}/approvals",
        "/threads/{thread_id}/results",
        "/threads/{thread_id}/messages",
        "/threads/{thread_id}/fork",
    ):
        assert path in paths
    assert "Idempotency-Key" in str(paths["/threads"]["post"]["parameters"])
    # The Markdown is Markdown; its errors are JSON like every other route's.
    markdown = paths["/threads/{thread_id}/markdown"]["get"]["responses"]
    assert list(markdown["200"]["content"]) == ["text/markdown"]
    assert list(markdown["404"]["content"]) == ["application/json"]


WRITES = {
    "/threads/{thread_id}/responses": ("respond", "RespondIn"),
    "/threads/{thread_id}/approvals": ("approve", "ApprovalIn"),
    "/threads/{thread_id}/results": ("post_result", "ResultIn"),
    "/threads/{thread_id}/messages": ("send", "MessageIn"),
}
"""The writes served by plain Starlette routes (channels/http.py `_post_write`)."""


def test_openapi_describes_the_plain_write_routes(tmp_path: Path) -> None:
    """As FastAPI described them when it served them: path and header
    parameters, the body's model, 202 with `Accepted`, the errors."""
    from bot import ScriptedModel, ThreadBot
    from channels.http import create_app
    from store import EventStore

    store = EventStore(tmp_path / "schema.db")
    try:
        schema = create_app(ThreadBot(store, ScriptedModel())).openapi()
    finally:
        store.close()

    def ref(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    for path, (name, body) in WRITES.items():
        operation = schema["paths"][path]["post"]
        assert operation["operationId"] == f"{name}_threads__thread_id__{path.rsplit('/')[-1]}_post"
        assert operation["parameters"] == [
            {
                "name": "thread_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "title": "Thread Id"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {
                    "anyOf": [{"type": "string", "maxLength": 255}, {"type": "null"}],
                    "title": "Idempotency-Key",
                },
            },
        ]
        assert operation["requestBody"] == {"required": True, "content": ref(body)}
        responses = operation["responses"]
        assert responses["202"]["content"] == ref("Accepted")
        assert sorted(responses) == ["202", "400", "401", "403", "404", "409", "413", "415", "422"]
        for code in ("400", "401", "403", "404", "409", "413", "415", "422"):
            assert responses[code]["content"] == ref("ErrorOut"), (path, code)
        assert body in schema["components"]["schemas"]


LONG_KEY = "k" * 256


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "key", "status", "error"),
    [
        (b"", None, 422, "invalid request: body: Field required"),
        (
            b"[]",
            None,
            422,
            "invalid request: body: Input should be a valid dictionary or object to extract "
            "fields from",
        ),
        (b"{", None, 422, "invalid request: the body is not valid JSON"),
        (b"{", LONG_KEY, 422, "invalid request: the body is not valid JSON"),
        (
            b'{"approved": "yes"}',
            None,
            422,
            "invalid request: approved: Input should be a valid boolean",
        ),
        (
            b"{}",
            LONG_KEY,
            422,
            "invalid request: header.Idempotency-Key: String should have at most 255 "
            'characters; body: give either "approved" (true or false) or "respond" (a text)',
        ),
        (b"[" * 2000 + b"]" * 2000, None, 400, "There was an error parsing the body"),
        (b"\xff{}", None, 400, "There was an error parsing the body"),
        (b'{"approved": true}', None, 404, "no thread 'nope'"),
        (b'{"approved": true}', "", 404, "no thread 'nope'"),
    ],
)
async def test_a_plain_write_route_refuses_as_fastapi_did(
    db_path: Path, body: bytes, key: str | None, status: int, error: str
) -> None:
    """The messages FastAPI gave for these bodies and headers when it served
    the route, in the API's `{"error"}` shape."""
    from bot import ScriptedModel, ThreadBot
    from channels.http import create_app, protect
    from store import EventStore

    store = EventStore(db_path)
    bot = ThreadBot(store, ScriptedModel())
    app = protect(create_app(bot), bot, hosts=["127.0.0.1"], local_operator=True)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/threads/nope/approvals",
        "raw_path": b"/threads/nope/approvals",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    finally:
        await bot.close()
        store.close()
    assert sent[0]["status"] == status
    assert json.loads(sent[1]["body"]) == {"error": error}


def test_bearer_token(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> None:
    s = ServerProcess(env_for(db_path, fake_openai, ledger, THREADBOT_API_TOKEN="s3cret")).start()
    try:
        with httpx.Client(base_url=s.url) as c:
            assert c.get("/threads").status_code == 401
            assert c.get("/threads", headers={"Authorization": "Bearer wrong"}).status_code == 401
            r = c.post("/threads", json={"text": "x"}, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]
            assert c.get("/threads", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        s.stop()
    assert EventStoreCount(db_path) == 0


def EventStoreCount(db_path: Path) -> int:
    from store import EventStore

    store = EventStore(db_path)
    try:
        return len(store.threads())
    finally:
        store.close()


def test_serving_beyond_loopback_needs_a_token(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    out = serve_refused({**env_for(db_path, fake_openai, ledger), "THREADBOT_HTTP": "0.0.0.0:0"})
    assert out.returncode != 0
    assert "THREADBOT_API_TOKEN" in out.stderr


async def _asgi(app: Any, method: str, path: str, body: bytes = b"", ctype: bytes = b"") -> int:
    """One request straight into the ASGI app: nothing of a client or a
    server of our own around it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", ctype)],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.anyio
async def test_requests_leave_no_garbage_for_the_cycle_collector(db_path: Path) -> None:
    """Every object a request makes is freed when it ends: under load, cyclic
    garbage is cleared by the collector, which stops the whole process (the
    slowest acknowledgements were those pauses)."""
    from bot import ScriptedModel, ThreadBot
    from channels.http import create_app, protect
    from store import EventStore

    store = EventStore(db_path)
    bot = ThreadBot(store, ScriptedModel())
    # As `serve` stacks it: the guards are part of every request.
    app = protect(create_app(bot), bot, hosts=["127.0.0.1"], local_operator=True)
    launch = b'{"text": "hello"}'
    json_type = b"application/json"
    assert await _asgi(app, "POST", "/threads", launch, json_type) == 201  # warm up
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert await _asgi(app, "POST", "/threads", launch, json_type) == 201
            assert await _asgi(app, "GET", "/threads") == 200
        garbage = gc.collect()
    finally:
        gc.enable()
        await bot.close()
        store.close()
    assert garbage < 50, f"{garbage} objects in cycles after 100 requests"
