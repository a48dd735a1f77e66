"""Slack, live: the reply streamed into its thread as the model writes it
(chat.startStream / appendStream / stopStream), the streamed message as the
answer's delivery, the fallback to a whole post where Slack does not stream,
and a stream left open by a process that died. Signed requests through the
real Bolt app served by uvicorn on 127.0.0.1, the agent on its own thread
(as `threadbot serve` runs it), the local fake Slack Web API, and a model
that writes word by word (`ScriptedModel`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from bot import Answer, ModelReply, People, ScriptedModel, ThreadBot, Tool, Toolbox, tool
from bot.context import Context
from bot.model import ModelCall, say
from channels.slack import SlackChannel, SlackSettings
from channels.slack.stream import INTERRUPTED
from store import EventStore

from .slack_fake import SECRET, FakeSlack, SlackSender

pytestmark = pytest.mark.anyio

_ts = itertools.count(1)


def new_ts() -> str:
    return f"1900000{next(_ts):03d}.000300"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@dataclass
class Served:
    bot: ThreadBot
    channel: SlackChannel
    sender: SlackSender

    async def event(self, event: dict[str, Any]) -> None:
        r = await asyncio.to_thread(self.sender.event, event)
        assert r.status_code == 200, r.text

    async def click(self, user: str, message: dict[str, Any], channel: str, action: str) -> None:
        r = await asyncio.to_thread(self.sender.click, user, message, channel, action)
        assert r.status_code == 200, r.text


@asynccontextmanager
async def serving(
    db: Path,
    slack: FakeSlack,
    model: Any,
    tools: Sequence[Tool] = (),
    people: People | None = None,
) -> AsyncIterator[Served]:
    """threadbot's Slack side as `serve` runs it: Bolt behind uvicorn on
    127.0.0.1, the agent on a thread and loop of its own."""
    bot = ThreadBot(EventStore(db), model, Toolbox(tools), people=people, retry_delay=0)
    channel = SlackChannel(
        bot, SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=slack.api_url)
    )
    bot.add_channel("slack", channel)
    bot.run_in_thread()
    app = FastAPI()
    channel.mount(app)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    # Bound before it serves: a request made meanwhile waits in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    serve = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield Served(bot, channel, SlackSender(f"http://127.0.0.1:{port}"))
    finally:
        server.should_exit = True
        await serve
        sock.close()
        await channel.stop()
        await bot.close()
        bot.store.close()


def dm(channel: str, text: str, user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "user": user,
        "text": text,
        "ts": extra.pop("ts", new_ts()),
        "channel": channel,
        "channel_type": "im",
        **extra,
    }


def newest(bot: ThreadBot) -> str:
    """The newest thread's id (Bolt acknowledges an event once it is stored)."""
    return bot.threads()[0].id


async def settled(bot: ThreadBot, status: str | None = None) -> dict[str, Any]:
    """The newest thread once its agent has paused (and, if given, is `status`)."""
    thread_id = newest(bot)
    async with asyncio.timeout(10):
        while True:
            await bot.settle(thread_id)
            body = bot.get(thread_id).json()
            if status is None or body["status"] == status:
                return body
            await asyncio.sleep(0.02)


def streamed_text(calls: list[tuple[str, dict[str, Any]]], ts: str) -> str:
    return "".join(
        str(a.get("markdown_text") or "")
        for m, a in calls
        if (m == "chat.startStream" and a["_ts"] == ts)
        or (m in ("chat.appendStream", "chat.stopStream") and a.get("ts") == ts)
    )


ANSWER = " ".join(
    f"Line {i}: the **api** runs version 1.{i} on host web-{i}, healthy." for i in range(1, 21)
)


async def test_a_reply_streams_into_its_thread_in_a_few_calls_and_is_the_answer(
    tmp_path: Path, slack: FakeSlack
) -> None:
    async with serving(tmp_path / "t.db", slack, ScriptedModel.of(say(ANSWER))) as s:
        ev = dm("D_STREAM", "how is the api?")
        await s.event(ev)
        body = await settled(s.bot, "done")
        calls = slack.live_calls("D_STREAM")
        methods = [m for m, _ in calls]
        start = calls[0][1]
        # In order: started under the person's message, appended, stopped.
        assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
        assert set(methods[1:-1]) == {"chat.appendStream"}
        assert start["thread_ts"] == ev["ts"] and "recipient_user_id" not in start
        ts = start["_ts"]
        assert all(a.get("ts") == ts for m, a in calls[1:])
        assert streamed_text(calls, ts) == ANSWER
        # Gathered, not one call per word: here the words came all at once,
        # so the first started the stream and the rest went in one or two.
        assert len(ANSWER.split()) == 220 and len(calls) <= 4
        # Marked as the answer's post; no second post of it.
        stop = calls[-1][1]
        assert stop["metadata"]["event_payload"] == {"thread": body["id"], "seq": 1, "part": 0}
        assert "chat.postMessage" not in methods
        delivered = body["events"][-1]
        assert delivered["type"] == "delivered" and delivered["of_seq"] == 1
        assert (delivered["refs"]["channel"], delivered["refs"]["ts"]) == ("D_STREAM", ts)
        assert s.bot.note(body["id"], "slack") is None  # nothing left open
        # The person's message lost its 👀 once answered.
        assert any(r["timestamp"] == ev["ts"] for r in slack.called("reactions.remove"))


async def test_in_a_channel_the_stream_goes_to_the_person_who_asked(
    tmp_path: Path, slack: FakeSlack
) -> None:
    async with serving(tmp_path / "t.db", slack, ScriptedModel.of(say("On it: all fine."))) as s:
        ev = {
            "type": "app_mention",
            "user": "U7",
            "text": "<@UBOT> status?",
            "ts": new_ts(),
            "channel": "C_STREAM",
        }
        await s.event(ev)
        body = await settled(s.bot, "done")
        calls = slack.live_calls("C_STREAM")
        start = next(a for m, a in calls if m == "chat.startStream")
        assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U7", "T1")
        assert streamed_text(calls, start["_ts"]) == "On it: all fine."
        assert body["events"][-1]["refs"]["ts"] == start["_ts"]
        assert not [a for m, a in calls if m == "chat.postMessage"]


async def test_what_the_model_writes_streams_as_text_never_as_a_mention_or_a_link(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """`<!channel>`, `<@U…>` and `<https://…|label>` in the model's reply
    would notify the channel, mention someone and disguise a link if sent
    raw: streamed, they are escaped as a whole post's are, and the streamed
    message is still the answer (nothing is posted or updated after it)."""
    answer = "Done <!channel>, ask <@U123> & see <https://evil.example|click>."
    async with serving(tmp_path / "t.db", slack, ScriptedModel.of(say(answer))) as s:
        ev = dm("D_ESCAPE", "anything?")
        await s.event(ev)
        body = await settled(s.bot, "done")
        calls = slack.live_calls("D_ESCAPE")
        start = calls[0][1]
        shown = streamed_text(calls, start["_ts"])
        assert shown == (
            "Done &lt;!channel&gt;, ask &lt;@U123&gt; &amp; see &lt;https://evil.example|click&gt;."
        )
        assert "<" not in shown and ">" not in shown
        methods = [m for m, _ in calls]
        assert "chat.postMessage" not in methods and "chat.update" not in methods
        delivered = body["events"][-1]
        assert delivered["type"] == "delivered"
        assert delivered["refs"]["ts"] == start["_ts"]


async def test_where_slack_refuses_streaming_answers_are_posted_whole_and_it_is_not_asked_again(
    tmp_path: Path, slack: FakeSlack
) -> None:
    model = ScriptedModel.of(say("First answer, posted whole."), say("Second answer."))
    slack.refuse_streaming = "not_allowed"
    try:
        async with serving(tmp_path / "t.db", slack, model) as s:
            await s.event(dm("D_REFUSE", "one"))
            await settled(s.bot, "done")
            await s.event(dm("D_REFUSE", "two"))
            assert len(s.bot.threads()) == 2
            for t in s.bot.threads():
                await s.bot.settle(t.id)
            calls = slack.live_calls("D_REFUSE")
            posts = [a for m, a in calls if m == "chat.postMessage"]
            texts = [p["blocks"][0]["text"]["text"] for p in posts]
            assert sorted(texts) == ["First answer, posted whole.", "Second answer."]
            # Refused once for this workspace and kind of conversation: not tried again.
            assert [m for m, _ in calls if m.startswith("chat.") and "Stream" in m] == [
                "chat.startStream"
            ]
            views = [s.bot.get(t.id).json() for t in s.bot.threads()]
            assert [(v["status"], v["events"][-1]["type"]) for v in views] == [
                ("done", "delivered")
            ] * 2
    finally:
        slack.refuse_streaming = None


async def test_a_markdown_link_posted_whole_shows_where_it_goes(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """The model's `[label](url)` with a label that looks like another
    address: posted whole, the post shows the real address beside the label
    (a link whose label is its address stays a plain link)."""
    answer = (
        "Log in again at [https://sso.example.com](https://evil.example/login) "
        "or read [https://docs.example.com](https://docs.example.com)."
    )
    slack.refuse_streaming = "not_allowed"
    try:
        async with serving(tmp_path / "t.db", slack, ScriptedModel.of(say(answer))) as s:
            await s.event(dm("D_LINK_WHOLE", "anything?"))
            await settled(s.bot, "done")
            posts = [a for m, a in slack.live_calls("D_LINK_WHOLE") if m == "chat.postMessage"]
            shown = posts[0]["blocks"][0]["text"]["text"]
            assert shown == (
                "Log in again at https://sso.example.com (<https://evil.example/login>) "
                "or read <https://docs.example.com>."
            )
            assert "|" not in shown
    finally:
        slack.refuse_streaming = None


@tool(idempotent=True)
def lookup(name: str) -> str:
    """Look a host up."""
    return f"{name} is up"


async def test_what_the_model_wrote_before_a_tool_call_stays_a_message_of_its_own(
    tmp_path: Path, slack: FakeSlack
) -> None:
    model = ScriptedModel.of(
        ModelReply(
            text="Let me look that up.",
            calls=(ModelCall("call_1", "lookup", json.dumps({"name": "web-1"})),),
        ),
        say("web-1 is up."),
    )
    async with serving(tmp_path / "t.db", slack, model, tools=[lookup]) as s:
        await s.event(dm("D_PRE", "is web-1 up?"))
        body = await settled(s.bot, "done")
        calls = slack.live_calls("D_PRE")
        starts = [a["_ts"] for m, a in calls if m == "chat.startStream"]
        assert len(starts) == 2
        assert streamed_text(calls, starts[0]) == "Let me look that up."
        assert streamed_text(calls, starts[1]) == "web-1 is up."
        stops = [a["ts"] for m, a in calls if m == "chat.stopStream"]
        assert stops == starts  # each finished, the preamble before the answer began
        assert body["events"][-1]["refs"]["ts"] == starts[1]
        assert "chat.postMessage" not in [m for m, _ in calls]


class Hangs:
    """A model that writes half a reply and never finishes (its process dies)."""

    name = "hangs"

    def __init__(self) -> None:
        self.writing = asyncio.Event()

    async def complete(
        self, context: Context, tools: Sequence[dict[str, Any]], *, on_text: Any = None
    ) -> ModelReply:
        on_text("The half of an ")
        on_text("answer that ")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stream_left_open_by_a_process_that_died_is_closed_by_the_next(
    tmp_path: Path, slack: FakeSlack
) -> None:
    db = tmp_path / "t.db"
    ev = dm("D_CRASH", "what happened?")
    async with serving(db, slack, Hangs()) as first:
        await first.event(ev)
        thread_id = newest(first.bot)
        # The stream's second call: its note is written (before it).
        await asyncio.to_thread(slack.wait_live, "D_CRASH", "chat.appendStream")
        old = json.loads(first.bot.note(thread_id, "slack") or "")["ts"]
        assert slack.streams[old]["text"].startswith("The half of an ")
        # The process ends with the reply unwritten: the note names the
        # half-shown message.

    async with serving(db, slack, ScriptedModel.of(say("The whole answer."))) as second:
        assert json.loads(second.bot.note(thread_id, "slack") or "{}")["ts"] == old
        await second.bot.resume_all()
        body = await settled(second.bot, "done")
        calls = slack.live_calls("D_CRASH")
        # The half-shown message was stopped, and says the answer follows.
        assert not slack.streams[old]["streaming"]
        update = next(a for m, a in calls if m == "chat.update" and a["ts"] == old)
        assert INTERRUPTED in update["text"]
        new = [a["_ts"] for m, a in calls if m == "chat.startStream"][-1]
        assert new != old and streamed_text(calls, new) == "The whole answer."
        assert body["events"][-1]["refs"]["ts"] == new
        assert [e["type"] for e in body["events"]] == [
            "user_message",
            "assistant_message",
            "delivered",
        ]
        assert second.bot.note(thread_id, "slack") is None


async def test_an_answer_stored_before_its_stream_was_stopped_is_finished_in_that_message(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """The process died after the reply was stored and before it stopped
    the stream: the next one delivers the answer (not fresh) into the
    message the note names, stopped and updated, and posts nothing."""
    bot = ThreadBot(EventStore(tmp_path / "t.db"), ScriptedModel())
    settings = SlackSettings(bot_token="xoxb-test", api_url=slack.api_url)
    before, after, later = (SlackChannel(bot, settings) for _ in range(3))
    try:
        ev = dm("D_HALF", "status?")
        source = await before.directory.source(
            "U1", refs={"channel": "D_HALF", "ts": ev["ts"], "thread_ts": ev["ts"], "team": "T1"}
        )
        thread_id = await bot.launch("status?", source=source)
        started = await before.web().chat_startStream(
            channel="D_HALF", thread_ts=ev["ts"], markdown_text="All serv"
        )
        ts = str(started["ts"])
        bot.keep_note(thread_id, "slack", json.dumps({"seq": 1, "channel": "D_HALF", "ts": ts}))
        answer = Answer(
            thread_id=thread_id,
            seq=1,
            origin=source,
            channel="slack",
            fresh=False,
            text="All services are **up**.",
        )
        delivery = await after.deliver(answer)
        assert delivery.refs == {"channel": "D_HALF", "ts": ts}
        assert not slack.streams[ts]["streaming"]
        calls = slack.live_calls("D_HALF")
        update = next(a for m, a in calls if m == "chat.update")
        assert update["ts"] == ts
        assert update["blocks"][0]["text"]["text"] == "All services are *up*."
        assert update["metadata"]["event_payload"] == {"thread": thread_id, "seq": 1, "part": 0}
        assert "chat.postMessage" not in [m for m, _ in calls]
        assert bot.note(thread_id, "slack") is None
        # Delivered again (another crash before the record): found, not posted.
        again = await later.deliver(answer)
        assert again.refs["ts"] == ts
        assert "chat.postMessage" not in [m for m, _ in slack.live_calls("D_HALF")]
    finally:
        for c in (before, after, later):
            await c.stop()
        await bot.close()
        bot.store.close()


async def test_an_answer_too_long_for_one_stream_shows_its_beginning_then_the_whole_answer(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """Once a piece would take the streamed message past STREAM_MAX, no
    later piece goes into it, however short: what is shown while the model
    writes is the answer's beginning, never the answer with a hole in it.
    The delivery then makes the message say the whole answer."""
    from channels.slack.stream import STREAM_MAX

    first = "x" * (STREAM_MAX - 10) + " "
    # The next word does not fit; the one after it would.
    answer = first + "overflowing " + "ok " + "the end."
    async with serving(tmp_path / "t.db", slack, ScriptedModel.of(say(answer))) as s:
        await s.event(dm("D_FULL", "tell me everything"))
        body = await settled(s.bot, "done")
        calls = slack.live_calls("D_FULL")
        ts = next(a["_ts"] for m, a in calls if m == "chat.startStream")
        shown = streamed_text(calls, ts)
        assert shown == first and answer.startswith(shown)
        assert not slack.streams[ts]["streaming"]
        update = next(a for m, a in calls if m == "chat.update" and a["ts"] == ts)
        sections = "".join(b["text"]["text"] for b in update["blocks"])
        assert sections.replace(" ", "").replace("\n", "") == answer.replace(" ", "")
        assert update["metadata"]["event_payload"] == {"thread": body["id"], "seq": 1, "part": 0}
        assert "chat.postMessage" not in [m for m, _ in calls]
        assert body["events"][-1]["refs"]["ts"] == ts
