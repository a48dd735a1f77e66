"""What `threadbot serve` refuses before its API sees a request: foreign Host
names, cross-site posts from browsers, non-JSON and oversized bodies, and the
error shapes of what it refuses. Requests as curl and browsers send them, by
httpx and raw sockets, to the server run as a subprocess (Slack in HTTP mode,
so /slack/events is served)."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import (
    FakeOpenAI,
    ServerProcess,
    calls,
    free_port,
    serve_refused,
    text,
)
from .slack_fake import SECRET, FakeSlack
from .test_http import env_for, wait_status

MiB = 1 << 20


@pytest.fixture(scope="module")
def server(model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    with FakeSlack().serve() as slack:
        env = env_for(workdir / "t.db", model, workdir / "ledger.txt")
        env.update(SLACK_BOT_TOKEN="xoxb", SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=slack.api_url)
        s = ServerProcess(env).start()
        yield s
        s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture
def waiting(client: httpx.Client, model: FakeOpenAI, workdir: Path) -> dict[str, Any]:
    """A thread waiting for approval of a deploy; the ledger says if it ran."""
    (workdir / "ledger.txt").write_text("")
    model.add(calls(("deploy", {"service": "api", "version": "2"})))
    thread_id = client.post("/threads", json={"text": "deploy api 2"}).json()["id"]
    return wait_status(client, thread_id, "waiting_for_approval")


def assert_untouched(client: httpx.Client, thread: dict[str, Any], workdir: Path) -> None:
    time.sleep(0.2)  # an approval that got through would be running the tool by now
    now = client.get(f"/threads/{thread['id']}").json()
    assert now["status"] == "waiting_for_approval"
    assert len(now["events"]) == len(thread["events"])
    assert (workdir / "ledger.txt").read_text() == ""


def assert_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body


def count_threads(client: httpx.Client) -> int:
    return len(client.get("/threads", params={"limit": 1000}).json())


# -- Host ------------------------------------------------------------------------


def test_a_foreign_host_is_refused_before_anything(
    server: ServerProcess, client: httpx.Client
) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser
    sends it as the Host."""
    before = count_threads(client)
    evil = {"Host": f"evil.example:{server.port}"}
    assert_error(client.get("/threads", headers=evil), 400)
    assert_error(client.get("/", headers=evil), 400)
    assert_error(client.post("/threads", json={"text": "x"}, headers=evil), 400)
    assert_error(client.get("/threads", headers={"Host": "127.0.0.1@evil.example"}), 400)
    assert count_threads(client) == before


def test_the_machines_own_names_are_answered(server: ServerProcess, client: httpx.Client) -> None:
    for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST."):
        for port in (f":{server.port}", ":80", ""):
            r = client.get("/threads", headers={"Host": host + port})
            assert r.status_code == 200, (host, port, r.text)


def test_allowed_hosts_and_origins_are_configurable(
    model: FakeOpenAI, workdir: Path, tmp_path: Path
) -> None:
    env = env_for(tmp_path / "t.db", model, workdir / "ledger.txt")
    env.update(
        THREADBOT_ALLOWED_HOSTS="127.0.0.1, threadbot.internal",
        THREADBOT_PUBLIC_URL="https://bot.example.com",
        THREADBOT_ALLOWED_ORIGINS="https://ops.example.com",
    )
    s = ServerProcess(env).start()
    try:
        with httpx.Client(base_url=s.url, timeout=10) as c:
            assert c.get("/threads", headers={"Host": "threadbot.internal"}).status_code == 200
            # The list replaces the defaults, the public URL's name included.
            assert_error(c.get("/threads", headers={"Host": f"localhost:{s.port}"}), 400)
            assert_error(c.get("/threads", headers={"Host": "bot.example.com"}), 400)
            model.add(text("hi"), text("hi"))
            for origin in ("https://bot.example.com", "https://ops.example.com"):
                r = c.post("/threads", json={"text": "from a page"}, headers={"Origin": origin})
                assert r.status_code == 201, (origin, r.text)
            r = c.post("/threads", json={"text": "x"}, headers={"Origin": "http://bot.example.com"})
            assert_error(r, 403)
    finally:
        s.stop()


def test_the_public_urls_host_is_answered_by_default(
    model: FakeOpenAI, workdir: Path, tmp_path: Path
) -> None:
    env = env_for(tmp_path / "t.db", model, workdir / "ledger.txt")
    env.update(THREADBOT_PUBLIC_URL="https://bot.example.com")
    s = ServerProcess(env).start()
    try:
        with httpx.Client(base_url=s.url, timeout=10) as c:
            assert c.get("/threads", headers={"Host": "bot.example.com"}).status_code == 200
            assert_error(c.get("/threads", headers={"Host": "other.example.com"}), 400)
    finally:
        s.stop()


# -- cross-site --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file: page, a redirect
        {"Origin": "http://127.0.0.1:1"},  # another port: another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},
    ],
    ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()),
)
def test_cross_site_posts_are_refused(
    client: httpx.Client, waiting: dict[str, Any], workdir: Path, headers: dict[str, str]
) -> None:
    url = f"/threads/{waiting['id']}/approvals"
    body = {"approved": True, "arguments": {"service": "api", "version": "666"}}
    assert_error(client.post(url, json=body, headers=headers), 403)
    # The body a `no-cors` fetch or a text/plain form can send is refused too.
    r = client.post(
        url, content=json.dumps(body), headers={**headers, "Content-Type": "text/plain"}
    )
    assert_error(r, 403)
    assert_untouched(client, waiting, workdir)


def test_same_origin_and_header_less_posts_pass(
    server: ServerProcess, client: httpx.Client, model: FakeOpenAI, waiting: dict[str, Any]
) -> None:
    url = f"/threads/{waiting['id']}/approvals"
    page = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    model.add(text("Not deployed."))
    r = client.post(url, json={"approved": False, "comment": "not now"}, headers=page)
    assert r.status_code == 202, r.text
    wait_status(client, waiting["id"], "done")
    model.add(text("ok"))
    typed = {"Sec-Fetch-Site": "none"}  # typed into the address bar, a bookmark
    r = client.post(f"/threads/{waiting['id']}/messages", json={"text": "ok"}, headers=typed)
    assert r.status_code == 202, r.text
    wait_status(client, waiting["id"], "done")
    model.add(text("ok"))
    assert client.post("/threads", json={"text": "curl"}).status_code == 201  # no headers


# -- JSON bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",  # `curl -d`
        "multipart/form-data; boundary=x",
        "text/json",
        None,
    ],
)
def test_bodies_must_be_json(client: httpx.Client, ctype: str | None) -> None:
    before = count_threads(client)
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/threads", content=b'{"text": "hello"}', headers=headers)
    assert_error(r, 415)
    assert count_threads(client) == before


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/json; charset=utf-8", "Application/merge-patch+JSON"]
)
def test_json_content_types_pass(client: httpx.Client, model: FakeOpenAI, ctype: str) -> None:
    model.add(text("hi"))
    r = client.post("/threads", content=b'{"text": "hello"}', headers={"Content-Type": ctype})
    assert r.status_code == 201, r.text


def test_the_readmes_curl_lines_work(
    server: ServerProcess, client: httpx.Client, model: FakeOpenAI
) -> None:
    model.add(text("hi"))
    url = f"localhost:{server.port}/threads"
    out = subprocess.run(
        ["curl", "-s", url, "--json", '{"text": "deploy the api"}'],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert set(json.loads(out.stdout)) == {"id", "status"}
    out = subprocess.run(
        ["curl", "-s", url, "-d", '{"text": "deploy the api"}'],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert "JSON" in json.loads(out.stdout)["error"]  # the old `-d` form says what to do


# -- body size ---------------------------------------------------------------------


def raw_post(port: int, path: str, headers: dict[str, str], chunks: Iterable[bytes]) -> bytes:
    """A POST over a plain socket that stops sending as soon as the server
    answers; returns what the server sent."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        for chunk in chunks:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(chunk)
            except OSError:  # answered and closed while we were still sending
                break
        received = b""
        try:
            while data := s.recv(65536):
                received += data
        except ConnectionResetError:
            pass  # the rest of the body was unread when the server closed
    return received


def status_of(response: bytes) -> int:
    assert response, "the server sent nothing"
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes) -> str:
    error: str = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
    return error


def chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A chunked body of `total` bytes, made as it is sent."""
    piece = b"x" * size
    for _ in range(total // size):
        yield b"%x\r\n%s\r\n" % (size, piece)
    yield b"0\r\n\r\n"


JSON = {"Content-Type": "application/json"}


def test_a_declared_length_over_the_cap_is_refused_unread(
    server: ServerProcess, client: httpx.Client
) -> None:
    before = count_threads(client)
    for path in ("/threads", "/slack/events"):
        started = time.monotonic()
        headers = {**JSON, "Content-Length": str(300 * MiB)}
        response = raw_post(server.port, path, headers, [b'{"text": "' + b"x" * 1000])
        assert time.monotonic() - started < 2  # answered without waiting for the body
        assert status_of(response) == 413, response
        assert "larger than" in error_of(response)
    assert count_threads(client) == before


def test_a_streamed_body_is_cut_at_the_cap(server: ServerProcess, client: httpx.Client) -> None:
    before = count_threads(client)
    chunked_json = {**JSON, "Transfer-Encoding": "chunked"}
    response = raw_post(server.port, "/threads", chunked_json, chunked(2 * MiB))
    assert status_of(response) == 413, response
    form = {"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"}
    response = raw_post(server.port, "/slack/events", form, chunked(2 * MiB))
    assert status_of(response) == 413, response
    assert count_threads(client) == before


def test_a_body_at_the_cap_is_read(server: ServerProcess, client: httpx.Client) -> None:
    """Just under the cap, the body is parsed: the refusal is the model's
    length limit, not the size cap."""
    body = json.dumps({"text": "x" * (MiB - 100)})
    assert_error(client.post("/threads", content=body, headers=JSON), 422)


def test_huge_bodies_do_not_grow_the_server(server: ServerProcess, client: httpx.Client) -> None:
    for path, headers in (
        ("/threads", JSON),
        ("/slack/events", {"Content-Type": "application/x-www-form-urlencoded"}),  # unsigned
    ):
        response = raw_post(
            server.port, path, {**headers, "Transfer-Encoding": "chunked"}, chunked(300 * MiB)
        )
        assert status_of(response) == 413, response
    peak = Path(f"/proc/{server.proc.pid}/status").read_text().split("VmHWM:")[1].split()[0]
    assert int(peak) < 150 * 1024, f"peak RSS {int(peak) // 1024} MB"
    assert client.get("/healthz").status_code == 200


# -- validation and error shapes -------------------------------------------------------


def test_over_long_fields_are_refused(client: httpx.Client, waiting: dict[str, Any]) -> None:
    before = count_threads(client)
    assert_error(client.post("/threads", json={"text": "x" * 65_537}), 422)
    assert_error(client.post("/threads", json={"text": "x", "user": "u" * 201}), 422)
    base = f"/threads/{waiting['id']}"
    too_long = [
        ("approvals", {"approved": False, "comment": "c" * 4_001}),
        ("approvals", {"approved": True, "call_id": "c" * 201}),
        ("responses", {"text": "x", "option": "o" * 1_001}),
        ("responses", {"text": "x", "call_id": "c" * 201}),
        ("messages", {"text": "x" * 65_537}),
        ("results", {"call_id": "c" * 201, "output": 1}),
    ]
    for route, body in too_long:
        assert_error(client.post(f"{base}/{route}", json=body), 422)
    assert count_threads(client) == before
    now = client.get(base).json()
    assert len(now["events"]) == len(waiting["events"])


def test_lax_types_are_refused(client: httpx.Client, waiting: dict[str, Any]) -> None:
    base = f"/threads/{waiting['id']}"
    assert_error(client.post(f"{base}/fork", json={"at": True}), 422)
    assert_error(client.post(f"{base}/fork", json={"at": "1"}), 422)
    assert_error(client.post(f"{base}/approvals", json={"approved": "yes"}), 422)
    assert_error(client.post(f"{base}/approvals", json={"approved": 1}), 422)
    assert client.get(base).json()["status"] == "waiting_for_approval"


def test_a_retried_fork_returns_the_first(client: httpx.Client, waiting: dict[str, Any]) -> None:
    url = f"/threads/{waiting['id']}/fork"
    key = {"Idempotency-Key": "fork-1"}
    first = client.post(url, json={"at": 1}, headers=key)
    again = client.post(url, json={"at": 1}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    children = [t for t in client.get("/threads").json() if t["parent_id"] == waiting["id"]]
    assert [t["id"] for t in children] == [first.json()["id"]]
    other = client.post(url, json={"at": 1}, headers={"Idempotency-Key": "fork-2"})
    assert other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    "body",
    [b'{"text": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000, b'{"text": "a\x00', b"\xef\xbb"],
    ids=["invalid utf-8", "deeply nested", "truncated", "half a BOM"],
)
def test_unreadable_json_is_an_error_body(client: httpx.Client, body: bytes) -> None:
    before = count_threads(client)
    r = client.post("/threads", content=body, headers=JSON)
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code)
    assert count_threads(client) == before


def test_unknown_routes_and_methods_are_error_bodies(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404)
    assert_error(client.post("/nope", json={}), 404)
    assert_error(client.delete("/threads"), 405)
    assert_error(client.put("/threads", json={}), 405)
    for path in ("/docs", "/redoc"):  # they would load scripts from a CDN
        assert_error(client.get(path), 404)
    assert client.get("/openapi.json").status_code == 200


def test_security_headers(client: httpx.Client, waiting: dict[str, Any]) -> None:
    for path in ("/", f"/ui/threads/{waiting['id']}", "/threads", "/nope"):
        h = client.get(path).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"], path
        assert "default-src 'self'" in h["content-security-policy"], path
        assert h["x-frame-options"] == "DENY", path
        assert h["x-content-type-options"] == "nosniff", path
        assert h["referrer-policy"] == "no-referrer", path
    h = client.get("/threads", headers={"Host": "evil.example"}).headers
    assert h["x-frame-options"] == "DENY"


def test_a_malformed_public_url_is_refused_at_start(
    model: FakeOpenAI, workdir: Path, tmp_path: Path
) -> None:
    out = serve_refused(
        {
            **env_for(tmp_path / "t.db", model, workdir / "ledger.txt"),
            "THREADBOT_HTTP": f"127.0.0.1:{free_port()}",
            "THREADBOT_PUBLIC_URL": "bot.example.com",  # no scheme: not an origin
        }
    )
    assert out.returncode != 0
    assert "THREADBOT_PUBLIC_URL" in out.stderr
