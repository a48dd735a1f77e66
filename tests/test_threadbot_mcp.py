"""threadbot as an MCP server, end to end: the `mcp` package's own client
against `/mcp` on a real `threadbot serve` (streamable HTTP, with people's
tokens) and against `threadbot mcp` spawned over stdio; people reached by
mail (the bot's mail caught by a local SMTP relay) and answering with
`smtplib` to the signed reply address, or over the HTTP API. No model is
called; each refusal of the HTTP side is a test of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from .fakes import REPO, FakeOpenAI, ServerProcess, clean_environ, free_port
from .mail_fake import CaptureRelay, text_of
from .slack_fake import SECRET, FakeSlack, SlackSender
from .test_http import env_for
from .test_identity import token_for
from .test_slack import posts
from .test_slack_deadlines import buttons, msg, updated

pytestmark = pytest.mark.anyio

PEOPLE = """
[people.ann]
name = "Ann Lee"
email = "ann@example.com"
groups = ["ops"]

[people.bob]
name = "Bob"
email = "bob@example.com"

[people.carl]
name = "Carl"
email = "carl@example.com"
"""
BOT = "bot@example.com"
ANN = "ann@example.com"

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, model: FakeOpenAI, relay: CaptureRelay
) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mcp")
    (d / "people.toml").write_text(PEOPLE)
    (d / "ledger.txt").touch()
    return env_for(
        d / "threadbot.db",
        model,
        d / "ledger.txt",
        THREADBOT_PEOPLE=str(d / "people.toml"),
        THREADBOT_EMAIL=BOT,
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
        THREADBOT_SECRET="test-secret",
    )


@pytest.fixture(scope="module")
def served(env: dict[str, str], model: FakeOpenAI) -> Iterator[ServerProcess]:
    s = ServerProcess(env).start()
    yield s
    s.stop()
    assert model.requests == []  # nobody's question went through the model


@pytest.fixture(scope="module")
def tokens(env: dict[str, str], served: ServerProcess) -> dict[str, str]:
    return {p: token_for(env, p, "--scope", "approve") for p in ("ann", "bob", "carl")}


async def api(
    server: ServerProcess, token: str, method: str, path: str, body: Any = None
) -> httpx.Response:
    """The HTTP API, as `token`'s person."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )


@asynccontextmanager
async def over_http(server: ServerProcess, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(server.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def over_stdio(env: dict[str, str], *args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=str(REPO / ".venv" / "bin" / "python"),
        args=["-m", "threadbot", "mcp", *args],
        env={**clean_environ(), **env},
        cwd=str(REPO),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


class Progress:
    """What the server said while a call waited."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.first = asyncio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.messages.append(message or "")
        self.first.set()


def mail_to(relay: CaptureRelay, address: str, since: int, timeout: float = 20) -> EmailMessage:
    """The first mail the bot sent `address` after the relay's `since`th."""
    deadline = time.monotonic() + timeout
    while True:
        with relay.lock:
            found = [c.message for c in relay.messages[since:] if address in c.rcpt_tos]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no mail to {address}"
        time.sleep(0.02)


def reply_by_mail(server: ServerProcess, request: EmailMessage, body: str, sender: str) -> None:
    """Reply as a mail client does: to the signed Reply-To, from `sender`."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = request["Reply-To"].addresses[0].addr_spec
    msg["Subject"] = "Re: " + str(request["Subject"])
    msg["Message-ID"] = f"<r{time.time_ns()}@client.example>"
    msg["In-Reply-To"] = request["Message-ID"]
    msg.set_content(body + "\n\nOn Monday threadbot wrote:\n> earlier text")
    port = int(server.env["THREADBOT_SMTP"].rsplit(":", 1)[1])
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(sender, [str(msg["To"])], msg.as_bytes())


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


# -- streamable HTTP at /mcp ---------------------------------------------------


async def test_ask_human_over_http_answered_by_mail(
    served: ServerProcess, relay: CaptureRelay, tokens: dict[str, str]
) -> None:
    since = len(relay.messages)
    progress = Progress()
    async with over_http(served, tokens["bob"]) as session:
        listed = {t.name for t in (await session.list_tools()).tools}
        assert listed == {"ask_human", "request_approval", "get_answer"}
        call = asyncio.create_task(
            session.call_tool(
                "ask_human",
                {
                    "question": "Which region for the new cluster?",
                    "options": ["eu", "us"],
                    "person": "ann",
                },
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.first.wait(), 20)
        assert "handle " in progress.messages[0]
        request = await asyncio.to_thread(mail_to, relay, ANN, since)
        assert "Which region for the new cluster?" in text_of(request)
        assert "Bob asked me for this through an agent (MCP)." in text_of(request)
        await asyncio.to_thread(reply_by_mail, served, request, "2", ANN)
        out = structured(await asyncio.wait_for(call, 30))
    assert out["status"] == "answered"
    assert (out["answer"], out["option"]) == ("us", "us")
    assert (out["by"], out["via"]) == ("Ann Lee", "email:signed")
    assert out["reached"] == {"email": ["ann"]}
    assert out["handle"] in progress.messages[0]
    # The thread is the MCP client's, as Bob, and ended with the answer.
    thread = (await api(served, tokens["bob"], "GET", f"/threads/{out['handle']}")).json()
    assert thread["status"] == "done"
    assert f"agents: MCP at {served.url}/mcp" in served.output()  # the banner says where
    origin = thread["events"][0]["source"]
    assert (origin["channel"], origin["person"]) == ("mcp", "bob")
    assert origin["auth"].startswith("token:")


async def test_request_approval_over_http_approved_over_the_http_api(
    served: ServerProcess, relay: CaptureRelay, tokens: dict[str, str]
) -> None:
    since = len(relay.messages)
    progress = Progress()
    async with over_http(served, tokens["bob"]) as session:
        call = asyncio.create_task(
            session.call_tool(
                "request_approval",
                {
                    "action": "drop the staging database",
                    "details": "to reseed it",
                    "approvers": ["ann"],
                },
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.first.wait(), 20)
        handle = progress.messages[0].rsplit("handle ", 1)[1].rstrip(")")
        request = await asyncio.to_thread(mail_to, relay, ANN, since)
        assert "drop the staging database" in text_of(request)
        path = f"/threads/{handle}/approvals"
        refused = await api(served, tokens["bob"], "POST", path, {"approved": True})
        assert refused.status_code == 403  # Bob asked; Ann decides
        approved = await api(
            served, tokens["ann"], "POST", path, {"approved": True, "comment": "go ahead"}
        )
        assert approved.status_code == 202, approved.text
        out = structured(await asyncio.wait_for(call, 30))
    assert out["status"] == "approved" and out["approved"] is True
    assert (out["by"], out["comment"]) == ("Ann Lee", "go ahead")
    assert out["via"].startswith("token:") and out["at"]


async def test_get_answer_polls_a_handle_only_its_people_see(
    served: ServerProcess, tokens: dict[str, str]
) -> None:
    async with over_http(served, tokens["bob"]) as bob:
        asked = structured(
            await bob.call_tool(
                "ask_human", {"question": "Merge now?", "person": "ann", "wait": False}
            )
        )
        assert asked["status"] == "waiting"
        handle = asked["handle"]
        assert structured(await bob.call_tool("get_answer", {"handle": handle}))["status"] == (
            "waiting"
        )
        async with over_http(served, tokens["carl"]) as carl:
            other = await carl.call_tool("get_answer", {"handle": handle})
            assert other.is_error and "no request with handle" in str(other.content)
            missing = await carl.call_tool("get_answer", {"handle": "0123456789abcdef"})
            assert missing.is_error and str(missing.content) == str(other.content).replace(
                handle, "0123456789abcdef"
            )
        answered = await api(
            served, tokens["ann"], "POST", f"/threads/{handle}/responses", {"text": "yes, merge"}
        )
        assert answered.status_code == 202, answered.text
        deadline = time.monotonic() + 20
        while (out := structured(await bob.call_tool("get_answer", {"handle": handle})))[
            "status"
        ] == "waiting":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert (out["status"], out["answer"], out["by"]) == ("answered", "yes, merge", "Ann Lee")
    async with over_http(served, tokens["ann"]) as ann:  # the person asked sees it too
        assert structured(await ann.call_tool("get_answer", {"handle": handle}))["answer"] == (
            "yes, merge"
        )


async def test_unknown_people_are_a_tool_error_and_open_nothing(
    served: ServerProcess, tokens: dict[str, str]
) -> None:
    before = (await api(served, tokens["bob"], "GET", "/threads")).json()
    async with over_http(served, tokens["bob"]) as session:
        asked = await session.call_tool("ask_human", {"question": "?", "person": "mallory"})
        assert asked.is_error and "not someone this deployment knows" in str(asked.content)
        approval = await session.call_tool(
            "request_approval", {"action": "deploy", "approvers": ["ann", "eve@evil.example"]}
        )
        assert approval.is_error
    assert (await api(served, tokens["bob"], "GET", "/threads")).json() == before


def post_mcp(server: ServerProcess, **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})


async def test_mcp_without_a_token_is_refused(served: ServerProcess) -> None:
    assert post_mcp(served).status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the client fails however it reports a 401
        async with over_http(served, None):
            pass


async def test_mcp_with_a_wrong_token_is_refused(
    served: ServerProcess, tokens: dict[str, str]
) -> None:
    assert post_mcp(served, Authorization="Bearer tb_wrong").status_code == 401
    assert post_mcp(served, Authorization=f"Bearer {tokens['bob']}").status_code == 200


async def test_mcp_cross_site_requests_are_refused(
    served: ServerProcess, tokens: dict[str, str]
) -> None:
    bob = f"Bearer {tokens['bob']}"
    assert post_mcp(served, Authorization=bob, Origin="http://evil.example").status_code == 403
    assert post_mcp(served, Authorization=bob, Origin="null").status_code == 403
    refused = post_mcp(served, Authorization=bob, **{"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403


async def test_mcp_under_a_foreign_host_is_refused(
    served: ServerProcess, tokens: dict[str, str]
) -> None:
    refused = post_mcp(served, Authorization=f"Bearer {tokens['bob']}", Host="evil.example")
    assert refused.status_code == 400


def test_an_mcp_session_is_its_tokens_only(served: ServerProcess, tokens: dict[str, str]) -> None:
    """Another token that learns a session's id can neither use nor end it:
    the server answers as if the session did not exist."""
    opened = post_mcp(served, Authorization=f"Bearer {tokens['bob']}")
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    for token, status in ((tokens["ann"], 404), (tokens["bob"], 200)):
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}", "mcp-session-id": session}
        used = httpx.post(served.url + "/mcp", json=ping, headers=headers)
        assert used.status_code == status, used.text
    ann = {**MCP_HEADERS, "Authorization": f"Bearer {tokens['ann']}", "mcp-session-id": session}
    assert httpx.delete(served.url + "/mcp", headers=ann).status_code == 404


# -- stdio: threadbot mcp ------------------------------------------------------


async def test_threadbot_mcp_over_stdio_answered_by_mail(
    served: ServerProcess, env: dict[str, str], relay: CaptureRelay, tokens: dict[str, str]
) -> None:
    """`threadbot mcp` mails the question itself; the reply comes in through
    `threadbot serve`'s SMTP server on the same database."""
    since = len(relay.messages)
    progress = Progress()
    mcp_env = {**env, "THREADBOT_HTTP": f"127.0.0.1:{free_port()}"}
    async with over_stdio(mcp_env, "--person", "bob") as session:
        call = asyncio.create_task(
            session.call_tool(
                "ask_human",
                {"question": "Roll back the release?", "person": "ann"},
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.first.wait(), 20)
        request = await asyncio.to_thread(mail_to, relay, ANN, since)
        assert "Roll back the release?" in text_of(request)
        await asyncio.to_thread(reply_by_mail, served, request, "No, keep it", ANN)
        out = structured(await asyncio.wait_for(call, 30))
    assert (out["status"], out["answer"], out["by"], out["via"]) == (
        "answered",
        "No, keep it",
        "Ann Lee",
        "email:signed",
    )
    thread = (await api(served, tokens["bob"], "GET", f"/threads/{out['handle']}")).json()
    origin = thread["events"][0]["source"]
    assert (origin["channel"], origin["person"], origin["auth"]) == ("mcp", "bob", "mcp:stdio")


async def test_a_read_token_cannot_ask(served: ServerProcess, env: dict[str, str]) -> None:
    reader = await asyncio.to_thread(token_for, env, "carl", "--scope", "read")
    assert post_mcp(served, Authorization=f"Bearer {reader}").status_code == 403


async def test_a_request_outlives_a_restart_of_serve(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM while a call waits: the server stops at once (the call's
    stream ends with it), and the handle the first progress notification
    gave still works after the restart."""
    own = {
        **env,
        "THREADBOT_DB": str(tmp_path / "own.db"),
        "THREADBOT_SMTP": f"127.0.0.1:{free_port()}",
    }
    server = ServerProcess(own).start()
    try:
        bob, ann = [await asyncio.to_thread(token_for, own, p) for p in ("bob", "ann")]
        progress = Progress()
        # The client loses its connection: how it reports that is its own affair.
        with contextlib.suppress(Exception):
            async with over_http(server, bob) as session:
                call = asyncio.create_task(
                    session.call_tool(
                        "ask_human",
                        {"question": "Still there?", "person": "ann"},
                        progress_callback=progress,
                    )
                )
                await asyncio.wait_for(progress.first.wait(), 20)
                server.proc.terminate()
                await call
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
    finally:
        server.stop()
    handle = progress.messages[0].rsplit("handle ", 1)[1].rstrip(")")
    again = ServerProcess(own, server.port).start()
    try:
        async with over_http(again, bob) as session:
            waiting = structured(await session.call_tool("get_answer", {"handle": handle}))
            assert waiting["status"] == "waiting"
            answered = await api(
                again, ann, "POST", f"/threads/{handle}/responses", {"text": "yes"}
            )
            assert answered.status_code == 202
            later = structured(await session.call_tool("get_answer", {"handle": handle}))
        assert (later["status"], later["answer"]) == ("answered", "yes")
    finally:
        again.stop()


# -- Slack -----------------------------------------------------------------------

SLACK_PEOPLE = (
    PEOPLE
    + """
[people.sam]
name = "Sam Ortiz"
slack = "USAM"
"""
)


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def with_slack(
    env: dict[str, str], slack: FakeSlack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("mcp-slack")
    (d / "people.toml").write_text(SLACK_PEOPLE)
    s = ServerProcess(
        {
            **env,
            "THREADBOT_DB": str(d / "threadbot.db"),
            "THREADBOT_PEOPLE": str(d / "people.toml"),
            "THREADBOT_SMTP": f"127.0.0.1:{free_port()}",
            "THREADBOT_API_TOKEN": "mcp-admin",
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.api_url,
        }
    ).start()
    yield s
    s.stop()


async def test_request_approval_reaches_an_approver_in_slack_who_clicks_approve(
    with_slack: ServerProcess, slack: FakeSlack
) -> None:
    progress = Progress()
    async with over_http(with_slack, "mcp-admin") as session:
        call = asyncio.create_task(
            session.call_tool(
                "request_approval",
                {"action": "rotate the api keys", "details": "all of them", "approvers": ["sam"]},
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.first.wait(), 20)
        dm = (await asyncio.to_thread(posts, slack, "DUSAM", 1))[0]
        assert "tb_approve" in buttons(dm) and "rotate the api keys" in json.dumps(dm["blocks"])
        clicked = await asyncio.to_thread(
            SlackSender(with_slack.url).click, "USAM", msg(dm), "DUSAM", "tb_approve"
        )
        assert clicked.status_code == 200
        out = structured(await asyncio.wait_for(call, 30))
    assert (out["status"], out["approved"], out["via"]) == ("approved", True, "slack")
    assert out["reached"] == {"slack": ["sam"]}
    await asyncio.to_thread(updated, slack, dm["_ts"], "Approved by <@USAM>")
