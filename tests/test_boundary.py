"""The boundary between the core and the channels.

- Imports point down: store ← bot ← channels ← threadbot; a channel uses
  only what `bot` exports, and no store.
- Inbound, `ThreadBot.reply` decides what a person's free text is, once,
  against the thread as it stands.
- Outbound, a channel gets typed notices, including the outcome of a posted
  question or approval however it was settled.
"""

from __future__ import annotations

import ast
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bot as core
from bot import (
    AlreadyAnswered,
    ApprovalRequest,
    AwaitingDecision,
    Deferred,
    Delivery,
    NotAllowed,
    Notice,
    NotWaiting,
    Outcome,
    People,
    Person,
    Question,
    Source,
    ThreadBot,
    UsageError,
    tool,
)

from .conftest import make_bot, settled
from .fakes import FakeOpenAI, ask, calls, text

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["store", "bot", "channels", "threadbot"]


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import in a file,
    lazy ones included; relative imports resolved against the file's package."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            yield module, [a.name for a in node.names]


def _sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def test_every_import_arrow_points_down() -> None:
    upward = []
    for rank, layer in enumerate(LAYERS):
        above = LAYERS[rank + 1 :]
        for path in _sources(layer):
            for module, _ in _imports(path):
                top = module.split(".")[0]
                if top in above:
                    upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert upward == []


def test_channels_use_only_what_bot_exports_and_no_store() -> None:
    exported = set(core.__all__)
    found = []
    for path in _sources("channels"):
        for module, names in _imports(path):
            top = module.split(".")[0]
            if top == "store":
                found.append(f"{path.relative_to(ROOT)} imports {module}")
            elif top == "bot" and (module != "bot" or not set(names) <= exported):
                found.append(f"{path.relative_to(ROOT)}: from {module} import {names}")
    assert found == []


def test_the_core_branches_on_no_channel() -> None:
    """No `x.channel == "slack"` or `x.auth == "email:signed"` in bot/: a
    channel says what it vouches for in the `Source` it makes."""
    found = []
    for path in _sources("bot"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names = {s.attr for s in sides if isinstance(s, ast.Attribute)}
            strings = [s.value for s in sides if isinstance(s, ast.Constant)]
            if names & {"channel", "auth"} and any(isinstance(v, str) for v in strings):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_the_import_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checks above would catch what they look for."""
    fake = ROOT / "channels" / "_probe_for_test.py"
    fake.write_text(
        "from bot.thread import HUMAN_INPUT\n"
        "def f():\n    from store import EventStore\n    from ..threadbot import cli\n"
    )
    try:
        seen = list(_imports(fake))
    finally:
        fake.unlink()
    assert ("bot.thread", ["HUMAN_INPUT"]) in seen
    assert ("store", ["EventStore"]) in seen
    assert ("threadbot", ["cli"]) in seen


# -- inbound: reply ----------------------------------------------------------

ANN = Source(channel="fake", user="U1", name="Ann")
BOSS = Source(channel="fake", user="U_BOSS", name="Boss")
EVE = Source(channel="fake", user="U666", name="Eve")
PEOPLE = People([Person("ann", slack="U1"), Person("boss", slack="U_BOSS")])


@pytest.fixture
async def ops(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> ThreadBot:
    b = make_bot(db_path, fake_openai, people=PEOPLE)
    yield b  # type: ignore[misc]
    await b.close()
    b.store.close()


@pytest.mark.anyio
async def test_a_reply_answers_the_open_question_and_a_number_picks_an_option(
    ops: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(ask("Which environment?", ["staging", "production"]), text("ok"))
    thread_id = await ops.launch("deploy", source=ANN)
    await settled(ops, thread_id)
    receipt = await ops.reply(thread_id, "2", source=ANN, key="k1")
    event = ops.get(thread_id).events[receipt.seq]
    assert event.type == "human_response"
    assert (event.text, event.option) == ("production", "production")
    again = await ops.reply(thread_id, "2", source=ANN, key="k1")
    assert again.duplicate and again.seq == receipt.seq
    assert (await settled(ops, thread_id)).state.status == "done"


@pytest.mark.anyio
async def test_a_reply_during_an_approval_decides_only_when_addressed_to_it(
    ops: ThreadBot, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(calls(("drop_table", {"table": "users"})), text("dropped"))
    thread_id = await ops.launch("drop users", source=ANN)
    view = await settled(ops, thread_id)
    call_seq = view.state.pending.seq
    before = len(view.events)
    # Free text not addressed to the request: never a decision, even "yes".
    with pytest.raises(AwaitingDecision) as told:
        await ops.reply(thread_id, "yes", source=BOSS)
    assert told.value.tool == "drop_table"
    # Addressed to it (a signed email reply): a decision only from an approver.
    with pytest.raises(NotAllowed):
        await ops.reply(thread_id, "approve", source=ANN, to=call_seq)
    # Other text addressed to it responds instead of deciding: an approver's only.
    with pytest.raises(NotAllowed):
        await ops.reply(thread_id, "maybe later", source=ANN, to=call_seq)
    assert len(ops.get(thread_id).events) == before and ledger.read_text() == ""
    await ops.reply(thread_id, "approve, go ahead", source=BOSS, to=call_seq)
    view = await settled(ops, thread_id)
    approval = next(e for e in view.events if e.type == "approval")
    assert approval.approved and approval.comment == "go ahead"
    assert ledger.read_text() == "drop users\n"
    with pytest.raises(AlreadyAnswered):
        await ops.reply(thread_id, "reject", source=BOSS, to=call_seq)


@pytest.mark.anyio
async def test_a_reply_with_nothing_pending_is_a_message_from_a_member(
    ops: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(text("Hello."), text("Still here."), text("Hi Eve."))
    thread_id = await ops.launch("hi", source=ANN)
    await settled(ops, thread_id)
    with pytest.raises(NotAllowed):
        await ops.reply(thread_id, "let me in", source=EVE)
    with pytest.raises(UsageError):
        await ops.reply(thread_id, "  ", source=ANN)
    await ops.reply(thread_id, "still there?", source=ANN)
    await settled(ops, thread_id)
    # A channel whose conversation anyone present may join says so.
    await ops.reply(thread_id, "me too", source=EVE, members_only=False)
    view = await settled(ops, thread_id)
    assert [e.text for e in view.events if e.type == "user_message"] == [
        "hi",
        "still there?",
        "me too",
    ]


@pytest.mark.anyio
async def test_a_reply_to_a_post_that_is_not_there_is_refused(
    ops: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(ask("Which?"))
    thread_id = await ops.launch("deploy", source=ANN)
    await settled(ops, thread_id)
    with pytest.raises(NotWaiting):
        await ops.reply(thread_id, "1", source=ANN, to=99)


# -- outbound: notices ----------------------------------------------------------


class Recorder:
    """A channel that keeps the notices it was handed."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    async def deliver(self, notice: Notice) -> Delivery:
        self.notices.append(notice)
        return Delivery(refs={"ts": f"1.{notice.seq}"})


@pytest.mark.anyio
async def test_a_channel_gets_typed_notices_and_the_outcome_of_what_it_posted(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    channel = Recorder()
    b = make_bot(db_path, fake_openai, outbound={"fake": channel}, people=PEOPLE)
    fake_openai.add(
        ask("Which table?", ["users", "orders"]),
        calls(("drop_table", {"table": "users"})),
        text("Dropped."),
    )
    thread_id = await b.launch("drop a table", source=ANN)
    await settled(b, thread_id)
    question = channel.notices[-1]
    assert isinstance(question, Question)
    assert (question.text, question.options) == ("Which table?", ("users", "orders"))
    assert question.origin == ANN and question.answers == (ANN,)

    await b.reply(thread_id, "users", source=ANN)
    await settled(b, thread_id)
    answered, request = channel.notices[-2:]
    assert isinstance(answered, Outcome) and answered.kind == "answered"
    assert answered.by == ANN and answered.text == "users"
    assert answered.request.delivered == {"ts": f"1.{question.seq}"}
    assert isinstance(request, ApprovalRequest)
    assert request.tool == "drop_table" and request.deciders.specs == ("U_BOSS",)
    assert request.named == ("boss",)
    assert request.may_decide(BOSS) and not request.may_decide(ANN)

    # Settled elsewhere (the API, as an operator): the post learns it too.
    await b.decide(thread_id, False, comment="not today")
    await settled(b, thread_id)
    rejected = next(n for n in channel.notices if isinstance(n, Outcome) and n.seq > request.seq)
    assert rejected.kind == "rejected" and rejected.text == "not today"
    assert rejected.request.delivered == {"ts": f"1.{request.seq}"}
    assert rejected.by.admin
    # Each notice went out once.
    seqs = [n.seq for n in channel.notices]
    assert len(seqs) == len(set(seqs))
    await b.close()
    b.store.close()


# -- connections -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_bot_is_used_on_its_own_thread_and_the_engine_closes_its_connection(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    import asyncio

    b = make_bot(db_path, fake_openai)
    fake_openai.add(text("Hello."))
    b.run_in_thread()
    engine_store = b.runner.runner.log.store  # type: ignore[union-attr]
    assert engine_store is not b.store
    thread_id = await b.launch("hi")
    assert (await settled(b, thread_id)).state.status == "done"
    with pytest.raises(UsageError, match="the thread that made it"):
        await asyncio.to_thread(b.get, thread_id)
    await b.close()
    with pytest.raises(sqlite3.ProgrammingError):
        engine_store.db.execute("SELECT 1")
    b.store.close()


@pytest.mark.anyio
async def test_a_reply_from_a_channel_reads_each_thing_once(
    ops: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    """A Slack reply's path (its thread by route, the redelivery check, the
    reply): the thread is not read again, and no statement runs twice."""
    fake_openai.add(ask("Which version?"), text("ok"))
    start = Source(channel="slack", user="U1", refs={"channel": "C", "ts": "1.0"})
    thread_id = await ops.launch("deploy", source=start, key="m1", routes=["slack:C:1.0"])
    await settled(ops, thread_id)
    statements: list[str] = []
    ops.store.db.conn.set_trace_callback(statements.append)
    try:
        found = ops.routed("slack:C:1.0")
        assert found == thread_id and not ops.received("m2")
        await ops.reply(thread_id, "1.4.2", source=ANN, key="m2", members_only=False)
    finally:
        ops.store.db.conn.set_trace_callback(None)
    reads = [s for s in statements if s.startswith("SELECT")]
    assert len(reads) == len(set(reads)) == 2, statements
    assert not any("FROM events WHERE thread_id" in s for s in statements), statements
    assert sum(s.startswith("INSERT INTO events") for s in statements) == 1
    assert (await settled(ops, thread_id)).state.status == "done"


# -- found in review ------------------------------------------------------------


@tool(requires_approval=True, approvers=["bob", "carol"])
def migrate(table: str) -> Deferred:
    """Start a migration that reports later."""
    return Deferred("running")


@pytest.mark.anyio
async def test_an_approver_of_a_deferred_call_who_took_no_part_may_not_write(
    db_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Writing is for whoever may answer the thread's questions (its people,
    the deployment's approvers, admins), not for everyone who may settle
    what it waits for now."""
    from bot import Deferred, OpenAIModel, Toolbox, tool
    from store import EventStore

    @tool(requires_approval=True, approvers=["bob", "carol"])
    def migrate(table: str) -> Deferred:
        """Start a migration that reports later."""
        return Deferred("running")

    people = People(
        [Person("ann", slack="U1"), Person("bob", slack="UB"), Person("carol", slack="UC")]
    )
    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    b = ThreadBot(EventStore(db_path), model, Toolbox([migrate]), people=people)
    fake_openai.add(calls(("migrate", {"table": "users"})))
    thread_id = await b.launch("migrate users", source=ANN)
    await settled(b, thread_id)
    await b.decide(thread_id, True, source=Source(channel="fake", user="UB"))
    assert (await settled(b, thread_id)).state.status == "waiting_for_result"
    carol = Source(channel="fake", user="UC")
    with pytest.raises(NotAllowed):
        await b.send(thread_id, "hello", source=carol)
    assert b.may_see(thread_id, carol)  # she may read it: she may post the result
    await b.close()
    b.store.close()


def test_a_post_recorded_after_its_call_was_settled_still_gets_the_outcome() -> None:
    """A click between the post and its record: the update is still due."""
    from bot import derive
    from bot.events import Approval, Delivered, ToolCall, UserMessage

    events = [
        UserMessage(text="go", source=ANN),
        ToolCall(call_id="c1", name="deploy", arguments={}, requires_approval=True),
        Approval(call_id="c1", approved=True, source=BOSS),
        Delivered(of_seq=1, channel="fake", refs={"ts": "1"}),
    ]
    assert derive(events).undelivered == ((2, "fake"),)
    events.append(Delivered(of_seq=2, channel="fake", refs={"ts": "1"}))
    assert derive(events).undelivered == ()


def test_every_record_of_a_resent_post_is_in_its_notice() -> None:
    from bot.events import Delivered, ToolCall, UserMessage
    from bot.notices import build_notice

    events = [
        UserMessage(text="go", source=ANN),
        ToolCall(call_id="c1", name="drop_table", arguments={}, requires_approval=True),
        Delivered(of_seq=1, channel="email", refs={"to": "a@x"}),
        Delivered(of_seq=1, channel="email", refs={"to": "b@x"}),
    ]
    notice = build_notice("t", events, 1, "email", PEOPLE)
    assert notice is not None
    assert [d["to"] for d in notice.deliveries] == ["a@x", "b@x"]
    assert notice.delivered == {"to": "b@x"}


@tool(idempotent=True)
def scribble(data: Any) -> str:
    """Change what it was given."""
    data["touched"] = True
    data["items"].append("x")
    return "scribbled"


@pytest.mark.anyio
async def test_a_tool_that_changes_its_arguments_leaves_the_event_alone(
    db_path: Path, fake_openai: FakeOpenAI
) -> None:
    from bot import OpenAIModel, Toolbox
    from store import EventStore

    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    b = ThreadBot(EventStore(db_path), model, Toolbox([scribble]))
    fake_openai.add(calls(("scribble", {"data": {"items": ["a"]}})), text("done"))
    thread_id = await b.launch("scribble")
    view = await settled(b, thread_id)
    call = next(e for e in view.events if e.type == "tool_call")
    assert call.arguments == {"data": {"items": ["a"]}}
    assert view.events[-1].type == "assistant_message"
    await b.close()
    b.store.close()
