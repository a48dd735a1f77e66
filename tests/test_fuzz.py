"""Bad input, generated: the HTTP API from its OpenAPI schema (schemathesis),
the mail parser and Slack payloads (hypothesis). No 5xx, no crash, nothing
half-written, and every HTTP response as the schema declares it: a declared
status, its content type, a body that fits its model.

The test run uses a fixed seed and a few dozen examples each (the `ci`
profile, see conftest.py); fuzz for real with
`HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/test_fuzz.py`."""

from __future__ import annotations

import asyncio
import json
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bot import ScriptedModel, ThreadBot
from channels.email.parse import new_text, parse_mail
from channels.http import create_app
from store import EventStore

from .fakes import FakeOpenAI, ServerProcess, ask, text
from .slack_fake import BOT_USER, SECRET, FakeSlack, signed_headers
from .test_http import env_for


def _schema() -> dict[str, Any]:
    """The API's OpenAPI document, as the server publishes it."""
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d) / "schema.db")
        schema: dict[str, Any] = create_app(ThreadBot(store, ScriptedModel())).openapi()
        store.close()
    return schema


schema = schemathesis.openapi.from_dict(_schema())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "ledger.txt").touch()
    with FakeSlack().serve() as slack, FakeOpenAI().serve() as model:
        model.add(
            *[lambda body: ask("Which?") if len(body["messages"]) < 3 else text("ok")] * 10_000
        )
        env = env_for(d / "t.db", model, d / "ledger.txt")
        env.update(SLACK_BOT_TOKEN="xoxb", SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=slack.api_url)
        server = ServerProcess(env).start()
        # A real thread, so that generated requests can reach past the 404s.
        thread_id = httpx.post(server.url + "/threads", json={"text": "fuzz me"}).json()["id"]
        yield {"server": server, "thread_id": thread_id, "db": d / "t.db"}
        server.stop()


def _half(body: Any) -> bool:
    return zlib.crc32(json.dumps(body, default=str).encode()) % 2 == 1


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck))
def test_http_api_never_fails_on_generated_input(case: Any, live: dict[str, Any]) -> None:
    # crc32 rather than hash(): the same choice in every process, so a seed replays.
    if "thread_id" in (case.path_parameters or {}) and _half(case.body):
        case.path_parameters["thread_id"] = live["thread_id"]
    case.call_and_validate(
        base_url=live["server"].url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
        ],
    )


def test_after_the_fuzzing_every_thread_is_whole(live: dict[str, Any]) -> None:
    """Each thread's events are contiguous and its projection matches them."""
    store = EventStore(live["db"])
    bot = ThreadBot(store, ScriptedModel())
    assert bot.reindex() == 0
    for thread_id in store.all_thread_ids():
        view = bot.get(thread_id)
        assert view.state.last_seq == len(view.events) - 1
    store.close()


slack_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
slack_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["app_mention", "message", "reaction_added", "nonsense"]),
    },
    optional={
        "user": st.sampled_from(["U1", BOT_USER, "", "W2"]) | st.text(max_size=5),
        "channel": st.sampled_from(["C1", "D1"]) | st.text(max_size=5),
        "channel_type": st.sampled_from(["im", "channel", "group"]),
        "ts": st.sampled_from(["1.0001", "2.0002"]) | st.text(max_size=8),
        "thread_ts": st.sampled_from(["1.0001"]) | st.text(max_size=8),
        "text": st.text(max_size=50),
        "subtype": st.sampled_from(["message_changed", "bot_message", "file_share"]),
        "bot_id": st.text(max_size=4),
        "extra": slack_values,
    },
)


@given(event=slack_events, noise=slack_values)
@settings(suppress_health_check=list(HealthCheck))
def test_slack_payloads_never_break_the_server(
    live: dict[str, Any], event: dict[str, Any], noise: Any
) -> None:
    payload = {
        "type": "event_callback",
        "team_id": "T1",
        "event_id": "Ev",
        "event": event,
        "x": noise,
    }
    body = json.dumps(payload)
    url = live["server"].url + "/slack/events"
    r = httpx.post(
        url, content=body, headers={"Content-Type": "application/json", **signed_headers(body)}
    )
    assert r.status_code < 500
    form = "payload=" + json.dumps({"type": "block_actions", "actions": [noise], "user": noise})
    r = httpx.post(
        url,
        content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", **signed_headers(form)},
    )
    assert r.status_code < 500
    assert httpx.get(live["server"].url + "/healthz").status_code == 200


@given(st.binary(max_size=2000))
def test_any_bytes_parse_as_mail(raw: bytes) -> None:
    mail = parse_mail(raw, return_path=None)
    assert mail.message_id.startswith("<")


headers = st.dictionaries(
    st.sampled_from(
        [
            "From",
            "Subject",
            "Message-ID",
            "In-Reply-To",
            "References",
            "Content-Type",
            "Content-Transfer-Encoding",
            "Auto-Submitted",
            "Precedence",
        ]
    ),
    st.text(max_size=40),
    max_size=6,
)


@given(
    headers=headers,
    body=st.text(max_size=500),
    charset=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_structured_mail_parses(headers: dict[str, str], body: str, charset: str) -> None:
    lines = [f"{k}: {' '.join(v.split())}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
    raw += body.encode(charset, "replace")
    mail = parse_mail(raw, return_path="a@b.c")
    assert isinstance(mail.text, str)


@given(st.text(max_size=1000))
def test_reply_text_never_raises(body: str) -> None:
    assert isinstance(new_text(body), str)


def test_smtp_server_survives_garbage_commands(live: dict[str, Any]) -> None:
    """Raw protocol junk on the SMTP port: errors, never a dead server."""
    port = int(live["server"].env["THREADBOT_SMTP"].rsplit(":", 1)[1])

    async def junk() -> list[bytes]:
        replies = []
        for line in (
            b"HELO\r\n",
            b"MAIL FROM:<<>>\r\n",
            b"RCPT TO:\r\n",
            b"DATA\r\n",
            b"\xff\xfe\r\n",
            b"QUIT\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            replies.append(await reader.readline())
            writer.write(line)
            await writer.drain()
            replies.append(await reader.readline())
            writer.close()
            await writer.wait_closed()
        return replies

    replies = asyncio.run(junk())
    assert all(r[:1] in (b"2", b"4", b"5") for r in replies), replies
    assert httpx.get(live["server"].url + "/healthz").status_code == 200
