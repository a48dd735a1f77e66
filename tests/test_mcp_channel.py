"""The MCP channel's waiting, in process: the `mcp` package's own client
connected to the channel's server (the SDK's in-memory transport), a real
ThreadBot on a SQLite file. Progress while a call waits, and each way a
request ends. (The same tools over stdio
and streamable HTTP: tests/test_threadbot_mcp.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from bot import OpenAIModel, People, Person, Source, ThreadBot
from bot.events import Timers
from channels.mcp import WAITING_MAX, McpChannel

from .fakes import REPO, FakeOpenAI, text

pytestmark = pytest.mark.anyio

ANN = Person("ann", "Ann Lee", emails=("ann@example.com",))
BOB = Person("bob", "Bob", emails=("bob@example.com",))
AGENT = Source(channel="mcp", user="bob", person="bob", name="Bob", auth="token:t1")
ANN_BY_MAIL = Source(channel="email", user="ann@example.com", auth="email:signed")


@pytest.fixture
async def bot(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[ThreadBot]:
    from store import EventStore

    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    b = ThreadBot(
        EventStore(tmp_path / "t.db"),
        model,
        people=People([ANN, BOB]),
        question_timers=Timers(deadline=0.5),
    )
    yield b
    await b.close()
    b.store.close()


class Progress:
    def __init__(self, wanted: int) -> None:
        self.messages: list[str] = []
        self.wanted = wanted
        self.enough = asyncio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.messages.append(message or "")
        if len(self.messages) >= self.wanted:
            self.enough.set()

    def handle(self) -> str:
        return self.messages[0].rsplit("handle ", 1)[1].rstrip(")")


def outcome(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return dict(result.structured_content)


async def test_a_waiting_call_reports_progress_until_the_answer(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    channel = McpChannel(bot, lambda ctx: AGENT, progress_every=0.05)
    progress = Progress(wanted=3)
    async with Client(channel.server) as client:
        call = asyncio.create_task(
            client.call_tool(
                "ask_human",
                {"question": "Proceed?", "person": "ann"},
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.enough.wait(), 10)
        handle = progress.handle()
        assert all(m == progress.messages[0] for m in progress.messages)
        assert "an answer: Proceed?" in progress.messages[0]
        await bot.reply(handle, "yes", source=ANN_BY_MAIL)
        out = outcome(await asyncio.wait_for(call, 10))
    assert (out["status"], out["answer"], out["handle"]) == ("answered", "yes", handle)
    await bot.settle(handle)
    assert fake_openai.requests == []  # no model, before or after


async def test_a_rejection_comes_back_as_approved_false(bot: ThreadBot) -> None:
    channel = McpChannel(bot, lambda ctx: AGENT)
    progress = Progress(wanted=1)
    async with Client(channel.server) as client:
        call = asyncio.create_task(
            client.call_tool(
                "request_approval",
                {"action": "restart prod", "approvers": ["ann"]},
                progress_callback=progress,
            )
        )
        await asyncio.wait_for(progress.enough.wait(), 10)
        await bot.decide(progress.handle(), False, comment="not today", source=ANN_BY_MAIL)
        out = outcome(await asyncio.wait_for(call, 10))
    assert (out["status"], out["approved"], out["comment"]) == ("rejected", False, "not today")
    assert (out["by"], out["via"]) == ("ann@example.com", "email:signed")


async def test_a_cancelled_request_and_a_deadline_end_the_wait(bot: ThreadBot) -> None:
    channel = McpChannel(bot, lambda ctx: AGENT)
    async with Client(channel.server) as client:
        asked = outcome(await client.call_tool("request_approval", {"action": "x", "wait": False}))
        assert asked["reached"] == {}  # this bot has no channel: the client can tell
        await bot.cancel(asked["handle"], "no longer needed", source=AGENT)
        cancelled = outcome(await client.call_tool("get_answer", {"handle": asked["handle"]}))
        assert (cancelled["status"], cancelled["comment"]) == ("cancelled", "no longer needed")
        # Nobody answers within the operator's question deadline (half a second).
        late = outcome(await asyncio.wait_for(client.call_tool("ask_human", {"question": "?"}), 10))
    assert (late["status"], late["answer"], late["via"]) == (
        "answered",
        "no answer by the deadline",
        "deadline",
    )


async def test_one_identity_has_at_most_sixteen_calls_waiting(bot: ThreadBot) -> None:
    channel = McpChannel(bot, lambda ctx: AGENT)
    firsts = [Progress(wanted=1) for _ in range(WAITING_MAX)]
    async with Client(channel.server) as client:
        calls = [
            asyncio.create_task(
                client.call_tool("ask_human", {"question": f"q{i}"}, progress_callback=p)
            )
            for i, p in enumerate(firsts)
        ]
        await asyncio.wait_for(asyncio.gather(*(p.enough.wait() for p in firsts)), 20)
        refused = await client.call_tool("ask_human", {"question": "one more"})
        assert refused.is_error and "wait false" in str(refused.content)
        polled = outcome(
            await client.call_tool("ask_human", {"question": "one more", "wait": False})
        )
        assert polled["status"] == "waiting"
        mine = Progress(wanted=1)
        for p in firsts:
            await bot.respond(p.handle(), "ok", source=AGENT)
        for call in calls:
            assert outcome(await asyncio.wait_for(call, 10))["answer"] == "ok"
        again = asyncio.create_task(
            client.call_tool("ask_human", {"question": "again"}, progress_callback=mine)
        )
        await asyncio.wait_for(mine.enough.wait(), 10)  # waiting again: the count went down
        await bot.respond(mine.handle(), "fine", source=AGENT)
        assert outcome(await asyncio.wait_for(again, 10))["answer"] == "fine"
    assert len(bot.threads()) == WAITING_MAX + 2  # the refused call opened nothing


@pytest.mark.parametrize(
    "arguments",
    [
        {"question": "x" * 10_001},
        {"question": "?", "options": ["a"] * 21},
        {"question": "?", "options": ["a", "a"]},
        {"question": "   "},
    ],
)
async def test_bad_questions_are_tool_errors_and_open_nothing(
    bot: ThreadBot, arguments: dict[str, Any]
) -> None:
    channel = McpChannel(bot, lambda ctx: AGENT)
    async with Client(channel.server) as client:
        result = await client.call_tool("ask_human", arguments)
    assert result.is_error
    assert bot.threads() == []


async def test_get_answer_refuses_threads_that_are_not_mcp_requests(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    """Even a thread its caller started elsewhere is no handle."""
    fake_openai.add(text("Hello, Bob."))
    other = await bot.launch("hello", source=Source(channel="http", user="bob", person="bob"))
    await bot.settle(other)
    channel = McpChannel(bot, lambda ctx: AGENT)
    async with Client(channel.server) as client:
        for handle in (other, "../../etc", "x" * 64):
            result = await client.call_tool("get_answer", {"handle": handle})
            assert result.is_error and "no request with handle" in str(result.content)


def test_the_wait_benchmark_runs_small() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.mcp_wait", "--rounds", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "3 ask_human calls" in out.stdout and "answer -> result:  p50" in out.stdout


async def test_one_identity_opens_so_many_requests_an_hour_and_no_more(bot: ThreadBot) -> None:
    """A client in a loop would mail people without end: past its share of
    requests an hour, a call is a tool error and reaches nobody; another
    identity still asks."""
    caller = [AGENT]
    channel = McpChannel(bot, lambda ctx: caller[0], opened_max=3)
    async with Client(channel.server) as client:
        for i in range(3):
            asked = outcome(
                await client.call_tool("ask_human", {"question": f"q{i}", "wait": False})
            )
            assert asked["status"] == "waiting"
        for tool, args in (
            ("ask_human", {"question": "q3", "wait": False}),
            ("request_approval", {"action": "deploy", "wait": False}),
        ):
            refused = await client.call_tool(tool, args)
            assert refused.is_error and "in the last hour" in str(refused.content)
    assert len(bot.threads()) == 3
    caller[0] = Source(channel="mcp", user="ann", person="ann", name="Ann", auth="token:t2")
    async with Client(channel.server) as client:
        asked = outcome(await client.call_tool("ask_human", {"question": "mine", "wait": False}))
        assert asked["status"] == "waiting"
