"""Threads asked from outside (`ThreadBot.ask`, `ThreadBot.ask_approval`):
what an MCP client's `ask_human` and `request_approval` open. They reach
people like any question or approval, no model is called, and the answer or
decision ends the thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot import (
    Delivery,
    NotAllowed,
    Notice,
    OpenAIModel,
    People,
    Person,
    Source,
    ThreadBot,
    UsageError,
    derive,
)
from bot.events import Approval, HumanResponse, Timers, ToolCall, UserMessage
from bot.notices import ApprovalRequest, Question
from store import Store

from .fakes import FakeOpenAI

pytestmark = pytest.mark.anyio

ANN = Person("ann", "Ann Lee", emails=("ann@example.com",), groups=("ops",))
BOB = Person("bob", "Bob", emails=("bob@example.com",))
ROOT = Person("root", "Root", emails=("root@example.com",), groups=("admins",))

AGENT = Source(channel="mcp", user="bob", person="bob", name="Bob", auth="token:t1")
"""An MCP client holding Bob's token."""


class Mailbox:
    """An outbound channel that reaches whoever has an address."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def reaches(self, person: Person) -> bool:
        return bool(person.emails)

    async def deliver(self, notice: Notice) -> Delivery:
        self.notices.append(notice)
        return Delivery(refs={"n": str(len(self.notices))})


@pytest.fixture
async def bot(make_store: Callable[[], Store], fake_openai: FakeOpenAI) -> Any:
    """On SQLite and on PostgreSQL."""
    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    b = ThreadBot(
        make_store(),
        model,
        people=People([ANN, BOB, ROOT]),
        question_timers=Timers(deadline=3600),
        retry_delay=0,
    )
    b.add_channel("email", Mailbox())
    yield b
    await b.close()


def mailbox(bot: ThreadBot) -> Mailbox:
    channel = bot.runner.outbound["email"]
    assert isinstance(channel, Mailbox)
    return channel


def by(address: str) -> Source:
    return Source(channel="email", user=address, auth="email:signed")


async def test_a_question_reaches_the_person_named_and_their_answer_ends_the_thread(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    thread_id = await bot.ask("Which region?", options=["eu", "us"], person="ann", source=AGENT)
    await bot.settle(thread_id)
    view = bot.get(thread_id)
    assert view.state.status == "waiting_for_human"
    call = view.events[1]
    assert isinstance(call, ToolCall) and call.external
    assert call.timers == Timers(deadline=3600)  # the operator's question timers
    [notice] = mailbox(bot).notices
    assert isinstance(notice, Question)
    assert (notice.text, notice.options) == ("Which region?", ("eu", "us"))
    assert [p.id for p in notice.reach] == ["ann"]
    with pytest.raises(NotAllowed):  # Bob's agent asked Ann, not Bob's own colleague
        await bot.respond(thread_id, "us", source=by("root@example.org"))
    await bot.reply(thread_id, "2", source=by("ann@example.com"), to=1)
    await bot.settle(thread_id)
    view = bot.get(thread_id)
    assert view.state.status == "done"
    answer = view.events[3]
    assert isinstance(answer, HumanResponse) and (answer.text, answer.option) == ("us", "us")
    assert fake_openai.requests == []  # no model call, before or after


async def test_without_a_person_the_asker_themself_is_asked(bot: ThreadBot) -> None:
    bot.people.approvers = ("ann",)  # who decides approvals, not who is asked
    thread_id = await bot.ask("Ship it today?", source=AGENT)
    await bot.settle(thread_id)
    [notice] = mailbox(bot).notices
    assert [p.id for p in notice.reach] == ["bob"]  # the token's person, by mail
    await bot.respond(thread_id, "yes", source=by("bob@example.com"))
    await bot.settle(thread_id)
    assert bot.get(thread_id).state.status == "done"


async def test_without_a_person_an_unknown_asker_reaches_the_approvers(bot: ThreadBot) -> None:
    bot.people.approvers = ("ann",)
    stranger = Source(channel="mcp", name="local operator", auth="operator", admin=True)
    thread_id = await bot.ask("Ship it today?", source=stranger)
    await bot.settle(thread_id)
    [notice] = mailbox(bot).notices
    assert [p.id for p in notice.reach] == ["ann"]


async def test_an_approval_is_decided_by_its_approvers_and_runs_nothing(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    thread_id = await bot.ask_approval(
        "drop table users", "staging only", approvers=["group:ops"], source=AGENT
    )
    await bot.settle(thread_id)
    view = bot.get(thread_id)
    assert view.state.status == "waiting_for_approval"
    [notice] = mailbox(bot).notices
    assert isinstance(notice, ApprovalRequest)
    assert (notice.tool, dict(notice.arguments)) == (
        "drop table users",
        {"details": "staging only"},
    )
    assert [p.id for p in notice.reach] == ["ann"]
    with pytest.raises(NotAllowed):
        await bot.decide(thread_id, True, source=by("bob@example.com"))
    await bot.decide(thread_id, True, comment="fine", source=by("ann@example.com"))
    await bot.settle(thread_id)
    view = bot.get(thread_id)
    assert view.state.status == "done"
    # Posted, decided, and the post told so: no tool ran, no model was asked.
    assert [e.type for e in view.events[2:]] == ["delivered", "approval", "delivered"]
    assert fake_openai.requests == []


async def test_a_rejection_ends_the_thread_too(bot: ThreadBot) -> None:
    thread_id = await bot.ask_approval("restart db", "", approvers=["ann"], source=AGENT)
    await bot.decide(thread_id, False, comment="not now", source=by("ann@example.com"))
    await bot.settle(thread_id)
    assert bot.get(thread_id).state.status == "done"


@pytest.mark.parametrize(
    ("person", "approvers"),
    [("nobody", ()), ("group:nobody", ()), (None, ("ann", "mallory@evil.example"))],
)
async def test_people_and_approvers_must_be_known(
    bot: ThreadBot, person: str | None, approvers: tuple[str, ...]
) -> None:
    with pytest.raises(UsageError):
        if approvers:
            await bot.ask_approval("deploy", "", approvers=approvers, source=AGENT)
        else:
            await bot.ask("?", person=person, source=AGENT)
    assert bot.threads() == []  # nothing was written


@pytest.mark.parametrize("action", ["", "two\nlines", "x" * 201])
async def test_an_action_is_one_short_line(bot: ThreadBot, action: str) -> None:
    with pytest.raises(UsageError):
        await bot.ask_approval(action, "details", source=AGENT)


def test_settling_an_external_call_ends_the_thread_a_models_call_does_not() -> None:
    ask = UserMessage(text="q", source=AGENT)
    for external in (True, None):
        call = ToolCall(
            call_id="c", name="deploy", arguments={}, requires_approval=True, external=external
        )
        decided = Approval(call_id="c", approved=True, source=by("ann@example.com"))
        state = derive([ask, call, decided])
        assert state.status == ("done" if external else "running")  # a model's call runs
        assert not state.open_calls if external else state.open_calls


async def test_whoever_asked_never_decides_their_own_request(bot: ThreadBot) -> None:
    """An agent holding Bob's token asks: naming Bob as approver, or naming
    nobody where the deployment names no approvers, does not let Bob (nor
    his token) approve it; the admins decide what names nobody."""
    mine = await bot.ask_approval("deploy prod", "", approvers=["bob"], source=AGENT)
    with pytest.raises(NotAllowed, match="four eyes"):
        await bot.decide(mine, True, source=by("bob@example.com"))
    with pytest.raises(NotAllowed):
        await bot.decide(mine, True, source=AGENT)
    nobody = await bot.ask_approval("deploy prod", "", source=AGENT)
    with pytest.raises(NotAllowed):
        await bot.decide(nobody, True, source=by("bob@example.com"))
    with pytest.raises(NotAllowed):
        await bot.decide(nobody, True, source=by("ann@example.com"))
    await bot.decide(nobody, True, source=by("root@example.com"))
    await bot.settle(nobody)
    assert bot.get(nobody).state.status == "done"
    assert bot.get(mine).state.status == "waiting_for_approval"


async def test_a_caller_narrows_the_deployments_approvers_and_never_widens_them(
    bot: ThreadBot,
) -> None:
    bot.people.approvers = ("group:ops",)
    with pytest.raises(UsageError, match="not among this deployment's approvers"):
        await bot.ask_approval("deploy prod", "", approvers=["bob"], source=AGENT)
    with pytest.raises(UsageError, match="not among this deployment's approvers"):
        await bot.ask_approval("deploy prod", "", approvers=["group:admins"], source=AGENT)
    assert bot.threads() == []  # nothing opened
    narrowed = await bot.ask_approval("deploy prod", "", approvers=["ann"], source=AGENT)
    await bot.decide(narrowed, True, source=by("ann@example.com"))
    await bot.settle(narrowed)
    assert bot.get(narrowed).state.status == "done"
