"""Launch, pause and resume through the Python API, with the real `openai`
client talking to a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot import (
    AlreadyAnswered,
    Delivery,
    NotAllowed,
    Notice,
    NotWaiting,
    OpenAIModel,
    Source,
    ThreadBot,
    ThreadNotFound,
    Toolbox,
    tool,
)
from bot.context import DEFAULT_SYSTEM_PROMPT, build_messages
from bot.events import ToolResult
from bot.people import People, Person
from bot.runner import Runner
from bot.tools import ToolContext
from store import EventStore

from .conftest import make_bot, settled
from .fakes import FakeOpenAI, ask, calls, text

pytestmark = pytest.mark.anyio

ANN = Source(channel="slack", user="U1", name="Ann")
EVE = Source(channel="slack", user="U666", name="Eve")


async def test_question_pause_reply_answer(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(ask("Which version?"), text("Deploying 1.4.2 is done."))
    thread_id = await bot.launch("deploy the api")
    view = await settled(bot, thread_id)
    assert view.state.status == "waiting_for_human"
    assert view.state.pending.question == "Which version?"
    assert len(fake_openai.requests) == 1
    # The request went out as Chat Completions with the tools.
    first = fake_openai.requests[0]
    assert first["model"] == "fake-model"
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert {t["function"]["name"] for t in first["tools"]} >= {"request_human_input", "deploy"}

    await bot.respond(thread_id, "1.4.2")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    assert [e.type for e in view.events] == [
        "user_message",
        "tool_call",
        "human_response",
        "assistant_message",
    ]
    second = fake_openai.requests[1]["messages"]
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": view.events[1].call_id,
        "content": "1.4.2",
    }


async def test_approve_runs_the_tool_once(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("deploy", {"service": "api", "version": "2"})), text("Deployed."))
    thread_id = await bot.launch("deploy api 2")
    view = await settled(bot, thread_id)
    assert view.state.status == "waiting_for_approval"
    assert view.state.pending.name == "deploy"
    assert ledger.read_text() == ""  # nothing ran before the approval
    await bot.decide(thread_id, True, source=Source(channel="http", name="ops", admin=True))
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    call_id = view.events[1].call_id
    assert ledger.read_text().splitlines() == [f"deploy api 2 {call_id} by=ops"]
    types = [e.type for e in view.events]
    assert types == [
        "user_message",
        "tool_call",
        "approval",
        "tool_started",
        "tool_result",
        "assistant_message",
    ]
    assert "approved by ops" in fake_openai.requests[1]["messages"][-1]["content"]


async def test_approver_may_edit_the_arguments(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("deploy", {"service": "api", "version": "2"})), text("ok"))
    thread_id = await bot.launch("deploy")
    await settled(bot, thread_id)
    await bot.decide(thread_id, True, arguments={"service": "api", "version": "3"})
    view = await settled(bot, thread_id)
    assert "deploy api 3" in ledger.read_text()
    # The thread keeps what the model proposed and what ran.
    assert view.events[1].arguments["version"] == "2"
    assert view.events[2].arguments["version"] == "3"


async def test_reject_tells_the_model_why(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("deploy", {"service": "api", "version": "2"})), text("Not deployed."))
    thread_id = await bot.launch("deploy api 2")
    await settled(bot, thread_id)
    await bot.decide(thread_id, False, comment="change freeze until Monday")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    assert ledger.read_text() == ""
    tool_message = fake_openai.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert "change freeze until Monday" in tool_message["content"]


async def test_deferred_result(bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path) -> None:
    fake_openai.add(calls(("start_job", {"job": "backup"})), text("Backup finished."))
    thread_id = await bot.launch("back up the db")
    view = await settled(bot, thread_id)
    assert view.state.status == "waiting_for_result"
    call_id = view.state.pending.call_id
    assert f"job backup {call_id}" in ledger.read_text()
    await bot.post_result(thread_id, call_id, {"bytes": 1024})
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    assert json.loads(fake_openai.requests[1]["messages"][-1]["content"]) == {"bytes": 1024}


async def test_mismatched_responses_are_refused_and_write_nothing(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(ask("Which version?"), text("done"))
    thread_id = await bot.launch("deploy")
    view = await settled(bot, thread_id)
    question = view.state.pending.call_id
    before = len(view.events)
    with pytest.raises(NotWaiting, match="not waiting for a decision"):
        await bot.decide(thread_id, True)
    with pytest.raises(NotWaiting, match="no call nope"):
        await bot.respond(thread_id, "x", call_id="nope")
    with pytest.raises(NotWaiting, match="not a result"):
        await bot.post_result(thread_id, question, "x")
    with pytest.raises(NotWaiting, match="send an answer instead"):
        await bot.send(thread_id, "hello?")
    with pytest.raises(NotAllowed):
        await bot.respond(thread_id, "x", source=EVE)
    with pytest.raises(ThreadNotFound):
        await bot.respond("nope", "x")
    assert len(bot.get(thread_id).events) == before
    await bot.respond(
        thread_id, "1.4.2", call_id=question, source=Source(channel="http", name="Ann", admin=True)
    )
    await settled(bot, thread_id)
    with pytest.raises(AlreadyAnswered, match=r"already settled .* by Ann") as caught:
        await bot.respond(thread_id, "1.4.3", call_id=question)
    assert caught.value.by == "Ann"


async def test_two_concurrent_answers_record_exactly_one(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    """Two processes answer one question at the same moment: one wins."""
    fake_openai.add(ask("Which version?"), text("ok"))
    first = make_bot(db_path, fake_openai)
    thread_id = await first.launch("deploy")
    await settled(first, thread_id)
    second = make_bot(db_path, fake_openai)  # its own connection, as another process has

    results = await asyncio.gather(
        first.respond(thread_id, "1.0"),
        second.respond(thread_id, "2.0"),
        return_exceptions=True,
    )
    await first.settle()
    await second.settle()
    answers = [e for e in first.get(thread_id).events if e.type == "human_response"]
    assert len(answers) == 1
    assert sum(isinstance(r, AlreadyAnswered) for r in results) == 1
    for b in (first, second):
        await b.close()


async def test_repeated_key_is_one_event(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(ask("Which version?"), text("ok"), text("again"))
    a = await bot.launch("deploy", key="slack:Ev1")
    b = await bot.launch("deploy", key="slack:Ev1")
    assert a == b
    await settled(bot, a)
    r1 = await bot.respond(a, "1.0", key="slack:Ev2")
    await settled(bot, a)
    r2 = await bot.respond(a, "1.0", key="slack:Ev2")  # the thread moved on: still a no-op
    assert (r2.seq, r2.duplicate) == (r1.seq, True)
    view = await settled(bot, a)
    assert [e.type for e in view.events].count("human_response") == 1
    assert len(bot.threads()) == 1


async def test_continue_a_finished_thread(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(text("Hello."), text("Still here."))
    thread_id = await bot.launch("hi")
    assert (await settled(bot, thread_id)).state.status == "done"
    await bot.send(thread_id, "are you there?")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    assert [m["role"] for m in fake_openai.requests[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


async def test_model_errors_retry_then_escalate_to_a_person(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    # The SDK retries each call (max_retries=2): 3 attempts, then an error event.
    fake_openai.add(*[{"status": 503}] * 9)
    thread_id = await bot.launch("hi")
    view = await settled(bot, thread_id)
    assert [e.type for e in view.events] == ["user_message", "error", "error", "error", "tool_call"]
    assert view.state.status == "waiting_for_human"
    assert "3 errors in a row" in view.state.pending.question
    assert len(fake_openai.requests) == 9
    # A person's answer resets the count and the agent goes on.
    fake_openai.add(text("Recovered."))
    await bot.respond(thread_id, "try again")
    assert (await settled(bot, thread_id)).state.status == "done"


async def test_a_bad_key_fails_the_thread_without_retrying(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add({"status": 401, "error": "invalid api key"})
    thread_id = await bot.launch("hi")
    view = await settled(bot, thread_id)
    assert view.state.status == "failed"
    assert "401" in view.events[-1].message
    assert len(fake_openai.requests) == 1


async def test_a_429_is_retried_by_the_client(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add({"status": 429}, text("ok"))
    thread_id = await bot.launch("hi")
    assert (await settled(bot, thread_id)).state.status == "done"
    assert len(fake_openai.requests) == 2


async def test_bad_tool_calls_go_back_to_the_model(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(
        calls(("no_such_tool", {}), ("deploy", {"service": 1}), ("lookup", "{not json")),
        calls(("explode", {})),
        text("gave up"),
    )
    thread_id = await bot.launch("go")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    errors = [e.output for e in view.events if isinstance(e, ToolResult) and e.is_error]
    assert "unknown tool 'no_such_tool'" in errors[0]
    assert errors[1].startswith("invalid arguments:")  # never reached an approver
    assert "not valid JSON" in errors[2]
    assert errors[3] == "RuntimeError: kaboom"
    assert ledger.read_text() == ""


async def test_step_limit(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> None:
    b = make_bot(db_path, fake_openai, max_turns=3)
    fake_openai.add(*[calls(("lookup", {"name": "api"}))] * 5)
    thread_id = await b.launch("loop forever")
    view = await settled(b, thread_id)
    assert view.state.status == "failed"
    assert "step limit" in view.events[-1].message
    assert len(fake_openai.requests) == 3
    await b.close()


async def test_only_the_named_approver_may_approve(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("drop_table", {"table": "users"})), text("dropped"))
    thread_id = await bot.launch("drop users", source=ANN)
    await settled(bot, thread_id)
    with pytest.raises(NotAllowed):
        await bot.decide(thread_id, True, source=ANN)  # the starter is not U_BOSS
    assert ledger.read_text() == ""
    await bot.decide(thread_id, True, source=Source(channel="slack", user="U_BOSS"))
    assert (await settled(bot, thread_id)).state.status == "done"
    assert ledger.read_text() == "drop users\n"


async def test_fork_goes_its_own_way(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(ask("Which version?"), text("Deployed 1."))
    thread_id = await bot.launch("deploy")
    await settled(bot, thread_id)
    await bot.respond(thread_id, "1")
    await settled(bot, thread_id)
    fork_id = await bot.fork(thread_id, 1)  # back at the question
    view = await settled(bot, fork_id)
    assert view.state.status == "waiting_for_human"
    assert len(view.events) == 2
    row = bot.store.thread(fork_id)
    assert row is not None and (row.parent_id, row.parent_seq) == (thread_id, 1)
    fake_openai.add(text("Deployed 2."))
    await bot.respond(fork_id, "2")
    assert (await settled(bot, fork_id)).state.status == "done"
    assert len(bot.get(thread_id).events) == 4  # the parent is untouched


async def test_reindex_rebuilds_the_projection_from_events(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(ask("Which version?"))
    thread_id = await bot.launch("deploy")
    await settled(bot, thread_id)
    bot.store.db.execute(
        "UPDATE threads SET status = 'done', title = 'x' WHERE id = ?", [thread_id]
    )
    assert bot.reindex() == 1
    row = bot.store.thread(thread_id)
    assert row is not None and (row.status, row.title) == ("waiting_for_human", "deploy")
    assert bot.reindex() == 0


async def test_the_kept_context_equals_a_fresh_build(
    bot: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    """Requests are built from the serialized past plus the new events; the
    result must be what building from the whole thread gives."""
    from bot.context import DEFAULT_SYSTEM_PROMPT, build_messages

    fake_openai.add(
        ask("Which version?"),
        calls(("deploy", {"service": "api", "version": "1"}), ("lookup", {"name": "api"})),
        calls(("no_such_tool", {})),
        calls(("deploy", {"service": "api", "version": "2"})),
        text("Done."),
    )
    thread_id = await bot.launch("deploy")
    await settled(bot, thread_id)
    await bot.respond(thread_id, "1")
    await settled(bot, thread_id)
    await bot.decide(thread_id, True)
    await settled(bot, thread_id)
    await bot.decide(thread_id, False, comment="enough")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    assert len(fake_openai.requests) == 5
    assert fake_openai.requests[-1]["messages"] == build_messages(
        view.events[:-1], DEFAULT_SYSTEM_PROMPT
    )


async def test_a_message_sent_while_the_agent_works_is_not_lost(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    """The reply to a context that has since grown is dropped, and the model
    is asked again with the new message; one run per thread throughout."""
    import time as _time

    def slow(body: dict[str, object]) -> dict[str, object]:
        _time.sleep(0.3)
        return text("stale answer")

    fake_openai.add(slow, text("fresh answer"))
    thread_id = await bot.launch("first")
    await asyncio.sleep(0.1)  # the model is thinking
    assert bot.runner.active() == [thread_id]
    await bot.send(thread_id, "second")
    bot.runner.kick(thread_id)
    assert bot.runner.active() == [thread_id]
    view = await settled(bot, thread_id)
    assert [e.type for e in view.events] == ["user_message", "user_message", "assistant_message"]
    assert view.events[-1].text == "fresh answer"
    assert [m["content"] for m in fake_openai.requests[1]["messages"][1:]] == ["first", "second"]


class RecordingChannel:
    """An outbound channel that records what it was asked to deliver."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str]] = []
        self.fail = False

    async def deliver(self, notice: Notice) -> Delivery:
        if self.fail:
            raise ConnectionError("platform down")
        self.sent.append((notice.thread_id, notice.seq, type(notice).__name__))
        return Delivery(
            refs={"ts": f"1.{notice.seq}"}, routes=(f"fake:{notice.thread_id}:{notice.seq}",)
        )


async def test_questions_and_answers_are_delivered_once_to_the_origin(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    channel = RecordingChannel()
    # U1 is known to the deployment, so they may approve their own request.
    people = People([Person("ann", slack="U1")])
    b = make_bot(db_path, fake_openai, outbound={"fake": channel}, people=people)
    fake_openai.add(
        ask("Which?"), calls(("deploy", {"service": "a", "version": "1"})), text("Done.")
    )
    thread_id = await b.launch("deploy", source=Source(channel="fake", user="U1"))
    await settled(b, thread_id)
    assert channel.sent == [(thread_id, 1, "Question")]
    view = b.get(thread_id)
    assert view.events[-1].type == "delivered" and view.events[-1].refs == {"ts": "1.1"}
    assert b.store.route(f"fake:{thread_id}:1") == thread_id
    b.runner.kick(thread_id)  # a second look delivers nothing again
    await settled(b, thread_id)
    assert len(channel.sent) == 1

    channel.fail = True
    await b.respond(thread_id, "1", source=Source(channel="fake", user="U1"))
    view = await settled(b, thread_id)
    # The answer's update of the question's post failed: given up, it only
    # tidies a post; the agent went on.
    outcome = view.events[4]
    assert outcome.type == "delivered" and outcome.of_seq == 3 and "failed" in outcome.refs
    assert view.state.status == "waiting_for_approval"
    assert view.events[-1].type == "tool_call"  # not recorded as delivered
    channel.fail = False
    # The runner tries again by itself, backing off.
    for _ in range(100):
        if len(channel.sent) == 2:
            break
        await asyncio.sleep(0.02)
    await settled(b, thread_id)
    assert [s[2] for s in channel.sent] == ["Question", "ApprovalRequest"]
    assert b.get(thread_id).events[-1].type == "delivered"
    await b.decide(thread_id, True, source=Source(channel="fake", user="U1"))
    view = await settled(b, thread_id)
    assert view.state.status == "done"
    # The approval's outcome updates the request's post before the tool runs.
    assert [s[2] for s in channel.sent][-2:] == ["Outcome", "Answer"]
    assert view.events[-1].type == "delivered"
    await b.close()


async def test_model_timeouts_and_empty_replies_are_retried(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    import time as _time

    from bot import OpenAIModel, load_tools
    from store import EventStore

    def slow(body: dict[str, object]) -> dict[str, object]:
        _time.sleep(1.0)
        return text("too late")

    model = OpenAIModel(
        "fake-model", base_url=fake_openai.base_url, api_key="k", timeout=0.3, max_retries=1
    )
    b = ThreadBot(EventStore(db_path), model, load_tools("tests.ledger_tools"), retry_delay=0)
    fake_openai.add(slow, slow, {"text": None}, text("Finally."))
    thread_id = await b.launch("hi")
    view = await settled(b, thread_id)
    assert view.state.status == "done"
    errors = [e.message for e in view.events if e.type == "error"]
    assert "timed out" in errors[0].lower()  # two attempts, then one error event
    assert errors[1] == "the model returned an empty reply"
    assert view.events[-1].text == "Finally."
    await b.close()


async def test_fork_at_a_seq_beyond_the_thread(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    from bot import UsageError

    fake_openai.add(text("hi"))
    thread_id = await bot.launch("hello")
    await settled(bot, thread_id)
    for at in (2, -1, 10**30):
        with pytest.raises(UsageError, match="has no event"):
            await bot.fork(thread_id, at)


async def test_the_agent_on_a_thread_of_its_own(db_path: Path) -> None:
    import threading

    from bot import ScriptedModel, UsageError
    from bot.model import ask as ask_reply
    from bot.model import say
    from store import EventStore

    where: list[str] = []

    def asking(messages: object) -> object:
        where.append(threading.current_thread().name)
        return ask_reply("Which version?")

    def answering(messages: object) -> object:
        where.append(threading.current_thread().name)
        return say("Deployed 1.4.2.")

    b = ThreadBot(EventStore(db_path), ScriptedModel.of(asking, answering))  # type: ignore[arg-type]
    b.run_in_thread()
    thread_id = await b.launch("deploy the api")
    view = await settled(b, thread_id)
    assert view.state.status == "waiting_for_human"
    await b.respond(thread_id, "1.4.2")
    view = await settled(b, thread_id)
    assert view.state.status == "done"
    assert view.events[-1].text == "Deployed 1.4.2."
    assert where == ["threadbot-engine", "threadbot-engine"]
    assert b.runner.active() == []
    await b.close()
    b.store.close()
    with pytest.raises(UsageError, match="in-memory"):
        ThreadBot(EventStore(":memory:"), ScriptedModel()).run_in_thread()


async def test_a_message_during_a_tool_is_answered_with_the_outcome(
    db_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A message that lands while a tool runs is not lost, nor is the
    outcome written after it: the model is then asked once, about both."""
    holder: list[ThreadBot] = []

    @tool
    async def check(ctx: ToolContext) -> str:
        """Check the service."""
        await holder[0].send(ctx.thread_id, "also check staging")
        return "prod is fine"

    bot = ThreadBot(
        EventStore(db_path),
        OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test"),
        Toolbox([check]),
    )
    holder.append(bot)
    fake_openai.add(calls(("check", {})), text("prod is fine; staging next"))
    thread_id = await bot.launch("check prod")
    view = await settled(bot, thread_id)
    await bot.close()
    assert [e.type for e in view.events] == [
        "user_message",
        "tool_call",
        "tool_started",
        "user_message",
        "tool_result",
        "assistant_message",
    ]
    assert len(fake_openai.requests) == 2
    asked = fake_openai.requests[1]["messages"]
    assert asked == build_messages(view.events[:-1], DEFAULT_SYSTEM_PROMPT)
    assert "also check staging" in json.dumps(asked)
    assert "prod is fine" in json.dumps(asked)


async def test_two_bots_on_one_file_in_one_process_run_a_tool_once(
    db_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A second bot in the same process, on the same database, finds a thread
    whose non-idempotent tool is running under the first bot's lease: that
    lease belongs to a live runner, not to a dead process that had this pid,
    so the second waits instead of recording "interrupted, outcome unknown"."""
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @tool
    async def migrate(ctx: ToolContext) -> str:
        """Run the migration (not idempotent)."""
        ran.append(ctx.call_id)
        started.set()
        await release.wait()
        return "migrated"

    def make() -> ThreadBot:
        model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
        return ThreadBot(EventStore(db_path), model, Toolbox([migrate]), retry_delay=0)

    first, second = make(), make()
    fake_openai.add(calls(("migrate", {})), text("Migrated."))
    thread_id = await first.launch("migrate the database")
    await asyncio.wait_for(started.wait(), 10)
    assert await second.resume_all() == [thread_id]  # as a start-up beside it would
    await asyncio.sleep(0.3)  # the second looks at the lease, and backs off
    release.set()
    await asyncio.wait_for(asyncio.gather(first.settle(), second.settle()), 10)
    view = second.get(thread_id)
    results = [e for e in view.events if isinstance(e, ToolResult)]
    assert [(r.output, r.is_error) for r in results] == [("migrated", False)]
    assert ran == [results[0].call_id]
    assert view.state.status == "done"
    assert len(fake_openai.requests) == 2
    for b in (first, second):
        await b.close()
        b.store.close()


async def test_a_long_run_keeps_its_lease_and_stops_when_it_loses_it(
    db_path: Path, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    gate = asyncio.Event()

    @tool
    async def wait_a_while(ctx: ToolContext) -> str:
        """Take longer than a lease lasts."""
        await gate.wait()
        return "done waiting"

    bot = ThreadBot(
        EventStore(db_path),
        OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test"),
        Toolbox([wait_a_while]),
    )
    runner = bot.runner
    assert isinstance(runner, Runner)
    runner.lease_ttl = 0.3
    other = EventStore(db_path)
    fake_openai.add(calls(("wait_a_while", {})), text("Finished."), calls(("wait_a_while", {})))
    first = await bot.launch("wait")
    await asyncio.sleep(0.5)  # past the lease's first expiry: renewed meanwhile
    assert runner.active() == [first]
    assert not other.acquire(first, "someone else", 30.0)
    gate.set()
    assert (await settled(bot, first)).state.status == "done"
    assert other.lease_owner(first) is None  # released when the run paused

    gate.clear()
    second = await bot.launch("wait again")
    await asyncio.sleep(0.05)
    assert other.acquire(second, "someone else", 30.0, steal_from=runner.owner)
    await asyncio.wait_for(bot.settle(second), 2)  # stopped at the next renewal
    assert "lease lost to another process" in caplog.text
    assert other.lease_owner(second) == "someone else"  # not released by the loser
    assert bot.get(second).state.status == "running"  # for the new holder to go on with
    await bot.close()
