"""Following threads over HTTP: `GET /threads/{id}/events` and `GET
/threads/events` as Server-Sent Events read by httpx, against `threadbot
serve` (and, for a cap and a heartbeat of the test's choosing or a model that
writes on cue, the same stack on uvicorn in this process); their JSON form;
the refusals; the cap; and a server that stops while streams are open."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import ScriptedModel, ThreadBot
from bot.model import ask as ask_
from bot.model import say
from channels.sse import Busy, Streams
from store import EventStore

from .fakes import REPO, FakeOpenAI, ServerProcess, ask, calls, text
from .sse_tools import STREAM, Frame, GatedModel, LiveServer, read_until, stored, stream
from .test_http import env_for, wait_status
from .test_identity import ADMIN, PEOPLE, bearer, token_for, wait_as_admin


@pytest.fixture(scope="module")
def server(model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(env_for(workdir / "t.db", model, workdir / "ledger.txt")).start()
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def events_of(client: httpx.Client, thread_id: str, **headers: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = client.get(f"/threads/{thread_id}", headers=headers).json()[
        "events"
    ]
    return events


def is_event(type_: str, **fields: Any) -> Any:
    def check(f: Frame) -> bool:
        return f.event == type_ and all(f.data.get(k) == v for k, v in fields.items())

    return check


# -- a thread's stream -----------------------------------------------------------


def test_every_event_once_and_in_order_across_a_reconnect(
    client: httpx.Client, model: FakeOpenAI
) -> None:
    """Through a question and an approval, the client drops its stream and
    comes back with Last-Event-ID (while the thread moves on): it gets every
    stored event once, in order, exactly as GET /threads/{id} shows them."""
    model.add(
        ask("Which version?", ["1.4.2", "1.5.0"]),
        calls(("deploy", {"service": "api", "version": "1.4.2"})),
        text("Deployed 1.4.2."),
    )
    thread_id = client.post("/threads", json={"text": "deploy the api"}).json()["id"]
    got: list[Frame] = []
    with stream(client, f"/threads/{thread_id}/events") as frames:
        read_until(frames, is_event("tool_call", name="request_human_input"), got)
    # Away: the answer is given and the agent goes on meanwhile.
    r = client.post(f"/threads/{thread_id}/responses", json={"text": "1.4.2"})
    assert r.status_code == 202
    wait_status(client, thread_id, "waiting_for_approval")
    last = stored(got)[-1].id
    assert last is not None
    # Back, as EventSource comes back: the URL it first used, and the last id.
    with stream(client, f"/threads/{thread_id}/events?after=0", {"Last-Event-ID": last}) as frames:
        read_until(frames, is_event("tool_call", name="deploy"), got)
        r = client.post(f"/threads/{thread_id}/approvals", json={"approved": True})
        assert r.status_code == 202
        read_until(frames, is_event("assistant_message"), got)
        read_until(frames, is_event("activity", doing=None), got)

    events = events_of(client, thread_id)
    assert [int(f.id) for f in stored(got) if f.id] == list(range(len(events)))
    assert [f.data for f in stored(got)] == events
    assert all(f.event == e["type"] for f, e in zip(stored(got), events, strict=True))
    # The agent's work between: what it does, and when it stops.
    doing = [f.data["doing"] for f in got if f.event == "activity"]
    assert "is thinking" in doing and "running deploy" in doing and None in doing
    assert all(set(f.data) == {"doing"} for f in got if f.event == "activity")


def test_the_reply_streams_in_pieces_before_it_is_stored(tmp_path: Path) -> None:
    """`delta` frames carry the reply as the model writes it, at the seq it
    is stored at, and end with `done` once it is stored."""
    model = GatedModel()
    model.add(ask_("Which service?"), say("The api runs 1.4.2 on every host."))
    with LiveServer(tmp_path / "t.db", model) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "which version?"}).json()["id"]
        wait_status(c, thread_id, "waiting_for_human")
        got: list[Frame] = []
        with stream(c, f"/threads/{thread_id}/events") as frames:
            c.post(f"/threads/{thread_id}/responses", json={"text": "the api"})
            read_until(frames, lambda f: f.event == "delta" and f.data["text"] == "every ", got)
            # All but the last word is out, and nothing of the reply is stored.
            assert c.get(f"/threads/{thread_id}").json()["status"] == "running"
            model.gate.set()
            read_until(frames, lambda f: f.event == "delta" and f.data.get("done") is True, got)
        events = events_of(c, thread_id)
    answer = next(f for f in got if f.event == "assistant_message")
    pieces = [f for f in got if f.event == "delta" and not f.data.get("done")]
    assert "".join(f.data["text"] for f in pieces) == "The api runs 1.4.2 on every host."
    assert {f.data["seq"] for f in pieces} == {answer.data["seq"]} == {3}
    assert all(f.id is None and set(f.data) == {"seq", "text"} for f in pieces)
    assert got.index(pieces[-1]) < got.index(answer)
    assert got[-1].data == {"seq": 3, "text": "", "done": True}
    assert [f.data for f in stored(got)] == events


def test_a_client_joining_after_the_reply_gets_no_stale_pieces(tmp_path: Path) -> None:
    model = GatedModel()
    model.add(say("Done already."), say("And again."))
    model.gate.set()
    with LiveServer(tmp_path / "t.db", model) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "hi"}).json()["id"]
        wait_status(c, thread_id, "done")
        with stream(c, f"/threads/{thread_id}/events") as frames:
            got = read_until(frames, is_event("assistant_message"))
            c.post(f"/threads/{thread_id}/messages", json={"text": "again"})
            got = read_until(frames, is_event("assistant_message"), got)
    pieces = [f.data for f in got if f.event == "delta" and not f.data.get("done")]
    assert "".join(p["text"] for p in pieces) == "And again."
    assert {p["seq"] for p in pieces} == {3}


def test_the_json_form_is_an_incremental_read(client: httpx.Client, model: FakeOpenAI) -> None:
    model.add(ask("Which region?"))
    thread_id = client.post("/threads", json={"text": "pick a region"}).json()["id"]
    events = wait_status(client, thread_id, "waiting_for_human")["events"]
    path = f"/threads/{thread_id}/events"
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == events
    assert client.get(path, params={"after": 0}).json() == events[1:]
    assert client.get(path, params={"after": len(events) - 1}).json() == []
    assert client.get(path, params={"after": 10**9}).json() == []
    # A reconnecting client's Last-Event-ID wins over the URL's `after`.
    r = client.get(path, params={"after": 0}, headers={"Last-Event-ID": str(len(events) - 1)})
    assert r.json() == []
    # Accept headers that do not ask for a stream get JSON.
    assert client.get(path, headers={"Accept": "*/*, text/event-stream;q=0"}).json() == events


def test_a_position_beyond_the_end_blinds_nobody(client: httpx.Client, model: FakeOpenAI) -> None:
    """A client that claims to have seen events that do not exist yet waits
    for them; others following the same thread still get each new event."""
    model.add(ask("Which region?"), text("eu-west it is."))
    thread_id = client.post("/threads", json={"text": "pick a region"}).json()["id"]
    wait_status(client, thread_id, "waiting_for_human")
    path = f"/threads/{thread_id}/events"
    with (
        stream(client, path) as honest,
        stream(client, path, {"Last-Event-ID": str(10**15)}) as ahead,
    ):
        read_until(honest, is_event("tool_call"))
        client.post(f"/threads/{thread_id}/responses", json={"text": "eu-west"})
        got = read_until(honest, is_event("assistant_message"))
        assert [f.event for f in stored(got)] == ["human_response", "assistant_message"]
        got = read_until(ahead, is_event("assistant_message"))
        assert [f.event for f in stored(got)] == ["human_response", "assistant_message"]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ({"after": -2}, {}),
        ({"after": "seven"}, {}),
        ({"after": 2**60}, {}),
        ({}, {"Last-Event-ID": "seven"}),
        ({}, {"Last-Event-ID": "-1"}),
        ({}, {**STREAM, "Last-Event-ID": "1e3"}),
    ],
)
def test_a_bad_position_is_refused_clearly(
    client: httpx.Client, model: FakeOpenAI, query: dict[str, Any], headers: dict[str, str]
) -> None:
    model.add(text("hi"))
    thread_id = client.post("/threads", json={"text": "hi"}).json()["id"]
    r = client.get(f"/threads/{thread_id}/events", params=query, headers=headers)
    assert r.status_code == 422, r.text
    assert "after" in r.json()["error"] or "Last-Event-ID" in r.json()["error"]


@pytest.mark.parametrize("accept", [STREAM, {}], ids=["stream", "json"])
def test_an_unknown_thread_is_404(client: httpx.Client, accept: dict[str, str]) -> None:
    r = client.get("/threads/nope/events", headers=accept)
    assert r.status_code == 404 and r.json()["error"]


# -- every thread's stream ---------------------------------------------------------


def test_the_list_moves_as_threads_change_here_and_in_another_process(
    client: httpx.Client, model: FakeOpenAI, workdir: Path
) -> None:
    model.add(ask("Colour?"), text("Blue it is."))
    with stream(client, "/threads/events?order=due&limit=500") as frames:
        first = next(frames)
        assert first.event == "threads" and first.id is None
        assert first.data == client.get("/threads?order=due&limit=500").json()
        thread_id = client.post("/threads", json={"text": "a colour"}).json()["id"]
        got = read_until(frames, is_event("thread", id=thread_id, status="waiting_for_human"))
        assert got[-1].data["waiting"] == "an answer: Colour?"
        client.post(f"/threads/{thread_id}/responses", json={"text": "blue"})
        read_until(frames, is_event("thread", id=thread_id, status="done"), got)
        listed = {t["id"]: t for t in client.get("/threads").json()}
        assert got[-1].data == listed[thread_id]
        assert all(f.event == "thread" and f.id is None for f in got)

        # Another process writes in the same database (the CLI, a replica).
        other = ThreadBot(EventStore(workdir / "t.db"), ScriptedModel.of(say("hello")))

        async def elsewhere() -> str:
            new = await other.launch("from another process")
            await other.settle(new)
            await other.close()
            return new

        try:
            new = asyncio.run(elsewhere())
        finally:
            other.store.close()
        got = read_until(frames, is_event("thread", id=new, status="done"))
        assert got[-1].data["title"] == "from another process"


def test_the_list_without_a_stream_is_the_listing(client: httpx.Client) -> None:
    r = client.get("/threads/events", params={"order": "due"})
    assert r.status_code == 200
    assert r.json() == client.get("/threads", params={"order": "due"}).json()


# -- who may follow what -----------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(
    model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server with people and an admin token (ann approves deploys)."""
    d = tmp_path_factory.mktemp("guarded")
    (d / "ledger.txt").touch()
    (d / "people.toml").write_text(PEOPLE)
    env = env_for(
        d / "t.db",
        model,
        d / "ledger.txt",
        THREADBOT_PEOPLE=str(d / "people.toml"),
        THREADBOT_APPROVERS="group:ops",
        THREADBOT_API_TOKEN=ADMIN,
    )
    s = ServerProcess(env).start()
    yield s, env
    s.stop()


@pytest.mark.parametrize("path", ["/threads/{id}/events", "/threads/events"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {ADMIN}", "Host": "evil.test"}, 400),
        # An EventSource on another site's page (with the person's cookie or not).
        ({"Authorization": f"Bearer {ADMIN}", "Origin": "http://evil.test"}, 403),
        ({"Authorization": f"Bearer {ADMIN}", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Authorization": f"Bearer {ADMIN}", "Sec-Fetch-Site": "same-site"}, 403),
        ({"Authorization": f"Bearer {ADMIN}", "Origin": "null"}, 403),
    ],
    ids=["no token", "wrong token", "foreign Host", "Origin", "cross-site", "same-site", "null"],
)
def test_a_stream_is_refused(
    guarded: tuple[ServerProcess, dict[str, str]],
    model: FakeOpenAI,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    s, _ = guarded
    model.add(text("hi"))
    r = httpx.post(s.url + "/threads", json={"text": "hi"}, headers=bearer(ADMIN))
    url = s.url + path.format(id=r.json()["id"])
    r = httpx.get(url, headers={**STREAM, **headers}, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and r.json()["error"]
    # The same page, same-origin, is served.
    ok = {**STREAM, "Authorization": f"Bearer {ADMIN}", "Origin": s.url}
    ok["Sec-Fetch-Site"] = "same-origin"
    with httpx.stream("GET", url, headers=ok, timeout=10) as r:
        assert r.status_code == 200


def test_people_follow_only_what_they_may_see_and_stop_when_they_no_longer_may(
    guarded: tuple[ServerProcess, dict[str, str]], model: FakeOpenAI
) -> None:
    """Ann (an approver) may follow a deploy waiting for her approval, not
    Bob's chat; once the admin decides it, she takes no part in it: her
    stream ends before the decision, and coming back is refused."""
    s, env = guarded
    ann, bob = token_for(env, "ann"), token_for(env, "bob")
    with httpx.Client(base_url=s.url, timeout=10) as c:
        model.add(text("Hi Bob."), calls(("deploy", {"service": "api", "version": "9"})))
        chat = c.post("/threads", json={"text": "hi"}, headers=bearer(bob)).json()["id"]
        wait_as_admin(s.url, chat, "done")
        for accept in (STREAM, {}):
            r = c.get(f"/threads/{chat}/events", headers={**accept, **bearer(ann)})
            assert r.status_code == 403 and r.json()["error"]
        with stream(c, "/threads/events", bearer(ann)) as inbox:
            assert chat not in {t["id"] for t in next(inbox).data}
            deploy = c.post("/threads", json={"text": "deploy 9"}, headers=bearer(bob)).json()
            read_until(inbox, is_event("thread", id=deploy["id"], status="waiting_for_approval"))
            got: list[Frame] = []
            with stream(c, f"/threads/{deploy['id']}/events", bearer(ann)) as frames:
                read_until(frames, is_event("tool_call", name="deploy"), got)
                model.add(text("Deployed 9."))
                r = c.post(
                    f"/threads/{deploy['id']}/approvals",
                    json={"approved": True},
                    headers=bearer(ADMIN),
                )
                assert r.status_code == 202
                got += list(frames)  # it ends
            assert "tool_call" in [f.event for f in stored(got)]
            assert "approval" not in [f.event for f in stored(got)]
            wait_as_admin(s.url, deploy["id"], "done")
            # Bob's chat goes on; Ann's inbox hears of her own thread only.
            model.add(text("Again, Bob."), text("Hi Ann."))
            c.post(f"/threads/{chat}/messages", json={"text": "x"}, headers=bearer(bob))
            wait_as_admin(s.url, chat, "done")
            own = c.post("/threads", json={"text": "ann's own"}, headers=bearer(ann)).json()
            after = read_until(inbox, is_event("thread", id=own["id"]))
            assert chat not in {f.data["id"] for f in after}
        r = c.get(f"/threads/{deploy['id']}/events", headers={**STREAM, **bearer(ann)})
        assert r.status_code == 403


# -- the process's streams: heartbeat, cap, clients that go, a server that stops ----


def test_a_quiet_stream_gets_heartbeats(tmp_path: Path) -> None:
    with (
        LiveServer(tmp_path / "t.db", ScriptedModel.of(say("hi")), heartbeat=0.05) as s,
        httpx.Client(base_url=s.url, timeout=10) as c,
    ):
        thread_id = c.post("/threads", json={"text": "hi"}).json()["id"]
        wait_status(c, thread_id, "done")
        for path in (f"/threads/{thread_id}/events?after=1", "/threads/events"):
            with stream(c, path) as frames:
                got = read_until(frames, lambda f: f.comment is not None)
                got = read_until(frames, lambda f: f.comment is not None, got)
            assert [f.comment for f in got if f.comment is not None] == ["still here"] * 2


def test_the_cap_on_streams_and_clients_that_go_free_theirs(tmp_path: Path) -> None:
    with (
        LiveServer(tmp_path / "t.db", ScriptedModel.of(say("hi")), limit=2) as s,
        httpx.Client(base_url=s.url, timeout=10) as c,
    ):
        thread_id = c.post("/threads", json={"text": "hi"}).json()["id"]
        path = f"/threads/{thread_id}/events"
        with stream(c, path) as one, stream(c, "/threads/events") as two:
            next(one), next(two)
            s.wait_open_streams(2)
            for p in (path, "/threads/events"):
                r = c.get(p, headers=STREAM)
                assert r.status_code == 503 and r.headers["retry-after"] == "5"
                assert "2 event streams are open" in r.json()["error"]
            # The JSON forms hold nothing open, and are served.
            assert c.get(path).status_code == 200
        # Both clients went: their streams and watches are gone.
        s.wait_open_streams(0)
        with stream(c, path) as again:
            assert next(again).event == "user_message"


def test_the_share_is_counted_per_person() -> None:
    class Held:
        def close(self) -> None:
            pass

    streams = Streams(limit=10, per_person=2)
    mine = [streams.admit(Held, "token:1:ann"), streams.admit(Held, "token:1:ann")]
    with pytest.raises(Busy, match="you have 2 event streams open"):
        streams.admit(Held, "token:1:ann")
    streams.admit(Held, "token:2:bob")  # another person is still served
    streams.release(mine[0])  # type: ignore[arg-type]
    streams.admit(Held, "token:1:ann")


def test_a_client_that_vanishes_frees_its_stream_at_once(tmp_path: Path) -> None:
    """Closed without a word (a tab closed, a laptop shut): the server's
    stream and its watch go with the connection, not at the next heartbeat."""
    with LiveServer(tmp_path / "t.db", ScriptedModel.of(say("hi")), heartbeat=3600) as s:
        thread_id = httpx.post(s.url + "/threads", json={"text": "hi"}).json()["id"]
        clients = [httpx.Client(base_url=s.url, timeout=10) for _ in range(5)]
        opened = [c.stream("GET", f"/threads/{thread_id}/events", headers=STREAM) for c in clients]
        for o in opened:
            assert o.__enter__().status_code == 200
        s.wait_open_streams(5)
        for c in clients:
            c.close()  # the sockets close under the open responses
        s.wait_open_streams(0)


def test_serve_stops_promptly_with_streams_open(
    model: FakeOpenAI, tmp_path: Path, workdir: Path
) -> None:
    """SIGTERM with clients following: the streams end (their clients see a
    clean end, and would reconnect) and the process exits; uvicorn would
    otherwise wait for them for ever."""
    (tmp_path / "ledger.txt").touch()
    s = ServerProcess(env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt")).start()
    try:
        model.add(ask("Which?"))
        thread_id = httpx.post(s.url + "/threads", json={"text": "x"}).json()["id"]
        ended: list[str] = []
        failed: list[BaseException] = []
        opened = threading.Semaphore(0)

        def follow(path: str) -> None:
            try:
                with httpx.Client(base_url=s.url, timeout=30) as c, stream(c, path) as frames:
                    for i, _ in enumerate(frames):
                        if i == 0:
                            opened.release()
                    ended.append(path)
            except BaseException as e:
                failed.append(e)
                opened.release()

        paths = [f"/threads/{thread_id}/events", "/threads/events"] * 3
        followers = [threading.Thread(target=follow, args=(p,)) for p in paths]
        for t in followers:
            t.start()
        with httpx.Client(base_url=s.url) as c:
            wait_status(c, thread_id, "waiting_for_human")
        # Every stream is open (it has had its first frame) before the signal.
        for _ in paths:
            assert opened.acquire(timeout=20)
        assert not failed, failed
        s.proc.terminate()
        # uvicorn raises the signal again once it has stopped serving.
        assert s.proc.wait(20) in (0, -signal.SIGTERM), s.output()
        for t in followers:
            t.join(10)
        assert not failed, failed
        assert sorted(ended) == sorted(paths)
    finally:
        s.stop()


def test_the_routes_are_in_the_schema(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/threads/{thread_id}/events", "/threads/events"):
        get = paths[path]["get"]
        assert set(get["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        assert "503" in get["responses"]
        assert "text/event-stream" in get["description"]
    names = {p["name"] for p in paths["/threads/{thread_id}/events"]["get"]["parameters"]}
    assert names == {"thread_id", "after", "Last-Event-ID"}


def test_the_benchmark_runs(tmp_path: Path) -> None:
    """The listeners benchmark, small: it checks that every listener got every event."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.sse_listeners", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every listener got every event" in done.stdout, done.stdout
    assert json.loads(done.stdout.splitlines()[-1])["listeners"] > 0
