"""Deadlines, reminders and escalation; several approvers; several calls at
once; respond and cancel — through the Python API, with the real `openai`
client against the local fake model server and a real SQLite file.

Durations are a second or two: the timers are the real ones."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from bot import (
    AlreadyAnswered,
    Delivery,
    NotAllowed,
    Notice,
    NotWaiting,
    OpenAIModel,
    Person,
    Source,
    ThreadBot,
    Toolbox,
    UsageError,
    tool,
)
from bot.events import DEADLINE, Approval, Escalated, HumanResponse, Reminder, ToolCall
from bot.notices import ApprovalRequest, Cancellation, FollowUp, Outcome
from bot.people import People
from bot.tools import make_timers
from store import EventStore

from .fakes import FakeOpenAI, ask, calls, text

pytestmark = pytest.mark.anyio

ANN = Source(channel="http", user="ann@example.com", person="ann", auth="token:a")
BOB = Source(channel="http", user="bob@example.com", person="bob", auth="token:b")
CAROL = Source(channel="http", user="carol@example.com", person="carol", auth="token:c")
DAN = Source(channel="http", user="dan@example.com", person="dan", auth="token:d")
PEOPLE = [
    Person("ann", "Ann", slack="U0ANN", emails=("ann@example.com",)),
    Person("bob", "Bob", slack="U0BOB", emails=("bob@example.com",), groups=("ops",)),
    Person("carol", "Carol", emails=("carol@example.com",), groups=("ops",)),
    Person("dan", "Dan", emails=("dan@example.com",), groups=("admins",)),
]
ran: list[str] = []


@tool(requires_approval=True, approvers=["bob"], deadline=1)
def deploy(service: str) -> str:
    """Deploy a service."""
    ran.append(f"deploy {service}")
    return f"deployed {service}"


@tool(
    requires_approval=True,
    approvers=["bob"],
    remind_after=0.4,
    escalate_after=0.8,
    escalate_to=["carol"],
    deadline="2s",
)
def restart(service: str) -> str:
    """Restart a service."""
    ran.append(f"restart {service}")
    return "restarted"


@tool(requires_approval=True, approvers=["group:ops", "ann"], approvals_required=2)
def drop_table(name: str) -> str:
    """Drop a table."""
    ran.append(f"drop {name}")
    return "dropped"


@tool(requires_approval=lambda a: a.amount > 1000, approvers=["bob"])
def refund(amount: int) -> str:
    """Refund an amount."""
    ran.append(f"refund {amount}")
    return "refunded"


@tool(requires_approval=True, approvers=["bob"], deadline=1, on_deadline="fail")
def migrate(db: str) -> str:
    """Migrate a database."""
    ran.append(f"migrate {db}")
    return "migrated"


class Recorder:
    """An outbound channel that keeps what it is handed; `reach_by` says whom
    it reaches (Slack ids, or addresses)."""

    def __init__(self, reach_by: str) -> None:
        self.reach_by = reach_by
        self.notices: list[Notice] = []

    def reaches(self, person: Person) -> bool:
        return bool(person.slack if self.reach_by == "slack" else person.emails)

    async def deliver(self, notice: Notice) -> Delivery:
        self.notices.append(notice)
        return Delivery(refs={"n": str(len(self.notices))})


def bot_for(db: Path, fake: FakeOpenAI, **kwargs: Any) -> ThreadBot:
    model = OpenAIModel("fake-model", base_url=fake.base_url, api_key="test", max_retries=2)
    tools = Toolbox([deploy, restart, drop_table, refund, migrate])
    kwargs.setdefault("people", People(PEOPLE))
    return ThreadBot(EventStore(db), model, tools, retry_delay=0, **kwargs)


@pytest.fixture
async def bot(tmp_path: Path, fake_openai: FakeOpenAI) -> Any:
    ran.clear()
    b = bot_for(tmp_path / "t.db", fake_openai)
    yield b
    await b.close()
    b.store.close()


async def until(bot: ThreadBot, thread_id: str, check: Any, within: float = 8.0) -> Any:
    """The thread once `check(view)` holds (timers fire on their own)."""
    deadline = time.monotonic() + within
    while True:
        await bot.settle(thread_id)
        view = bot.get(thread_id)
        if check(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"still {view.state.status}: {[e.type for e in view.events]}")
        await asyncio.sleep(0.05)


def deploy_then_end(body: dict[str, Any]) -> Any:
    """The model for many threads at once, which ask in any order: the first
    turn proposes a deploy, the second ends."""
    if body["messages"][-1]["role"] == "user":
        return calls(("deploy", {"service": "api"}))
    return text("ok")


def types(view: Any) -> list[str]:
    return [e.type for e in view.events]


# -- the tool's options ---------------------------------------------------------


def noop(x: int) -> int:
    return x


def test_durations_and_options_are_checked_when_the_tool_is_defined() -> None:
    t = tool(
        requires_approval=True,
        remind_after="10m",
        deadline="2d",
        escalate_after="4h",
        escalate_to="group:oncall",
    )(noop)
    assert t.timers is not None
    assert (t.timers.remind_after, t.timers.escalate_after, t.timers.deadline) == (
        600.0,
        14400.0,
        172800.0,
    )
    assert t.timers.escalate_to == ("group:oncall",)
    bad = [
        ({"requires_approval": True, "deadline": "soon"}, "not a duration"),
        ({"requires_approval": True, "deadline": 0}, "more than zero"),
        ({"requires_approval": True, "on_deadline": "maybe"}, "on_deadline"),
        ({"deadline": 5}, "requires_approval"),
        ({"on_deadline": "approve"}, "needs requires_approval"),
        ({"requires_approval": True, "escalate_after": 5}, "escalate_to"),
        ({"requires_approval": True, "escalate_to": ["bob"]}, "escalate_after"),
        ({"requires_approval": True, "approvals_required": 0}, "approvals_required"),
        ({"approvals_required": 2}, "requires_approval"),
    ]
    for options, says in bad:
        with pytest.raises(UsageError, match=says):
            tool(**options)(noop)


def test_operator_defaults_never_approve_on_their_own() -> None:
    with pytest.raises(UsageError, match="on_deadline"):
        make_timers("THREADBOT_*", deadline=60, on_deadline="approve", approval=False)
    assert make_timers("THREADBOT_*") is None


# -- deadlines ------------------------------------------------------------------


async def test_a_deadline_rejects_and_the_model_reads_why(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(calls(("deploy", {"service": "api"})), text("Nobody approved; not deployed."))
    started = time.time()
    thread_id = await bot.launch("deploy api", source=ANN)
    view = await until(bot, thread_id, lambda v: v.state.status == "waiting_for_approval")
    pending = bot.thread_json(thread_id, ANN)["pending"]
    assert pending["deadline"].endswith("Z")
    assert bot.threads(status="waiting_for_approval")[0].due_at == pytest.approx(
        view.events[1].ts.timestamp() + 1
    )
    view = await until(bot, thread_id, lambda v: v.state.status == "done")
    fired = time.time() - started
    assert 1.0 <= fired < 4.0
    decision = next(e for e in view.events if isinstance(e, Approval))
    assert decision.source == DEADLINE and not decision.approved
    assert "deadline" in (decision.comment or "")
    assert ran == []
    told = fake_openai.requests[1]["messages"][-1]
    assert told["role"] == "tool" and "deadline" in told["content"]
    # The person who comes too late is told who settled it.
    with pytest.raises(AlreadyAnswered, match="deadline"):
        await bot.decide(thread_id, True, call_id=view.events[1].call_id, source=BOB)
    assert bot.threads()[0].due_at is None


async def test_on_deadline_fail_stops_the_thread(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(calls(("migrate", {"db": "main"})))
    thread_id = await bot.launch("migrate", source=ANN)
    view = await until(bot, thread_id, lambda v: v.state.status == "failed")
    assert types(view)[-2:] == ["approval", "error"]
    assert ran == [] and len(fake_openai.requests) == 1


async def test_a_question_deadline_from_the_operator_goes_on_without_an_answer(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    b = bot_for(
        tmp_path / "q.db",
        fake_openai,
        question_timers=make_timers("THREADBOT_QUESTION_*", deadline=1, approval=False),
    )
    try:
        fake_openai.add(ask("Which version?"), text("I went with the latest."))
        thread_id = await b.launch("deploy", source=ANN)
        view = await until(b, thread_id, lambda v: v.state.status == "done")
        answer = next(e for e in view.events if isinstance(e, HumanResponse))
        assert answer.source == DEADLINE and answer.text == "no answer by the deadline"
        assert fake_openai.requests[1]["messages"][-1]["content"] == "no answer by the deadline"
    finally:
        await b.close()
        b.store.close()


async def test_an_approval_racing_the_deadline_has_exactly_one_outcome_50_times(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    b = bot_for(tmp_path / "race.db", fake_openai)
    try:
        n = 50

        fake_openai.add(*[deploy_then_end] * (2 * n))
        ids = [await b.launch("deploy api", source=ANN) for _ in range(n)]
        for thread_id in ids:
            await until(b, thread_id, lambda v: v.state.pending is not None)
        calls_made = {t: b.get(t).events[1] for t in ids}

        async def approve_near_the_deadline(thread_id: str) -> str:
            call = calls_made[thread_id]
            due = call.ts.timestamp() + 1
            await asyncio.sleep(max(0.0, due - time.time() + random.uniform(-0.05, 0.05)))
            try:
                await b.decide(thread_id, True, call_id=call.call_id, source=BOB)
            except AlreadyAnswered:
                return "deadline"
            return "person"

        said = await asyncio.gather(*(approve_near_the_deadline(t) for t in ids))
        wins = {"person": 0, "deadline": 0}
        for thread_id, who in zip(ids, said, strict=True):
            view = await until(b, thread_id, lambda v: v.state.status == "done")
            decisions = [e for e in view.events if isinstance(e, Approval)]
            assert len(decisions) == 1, types(view)
            assert (decisions[0].source == DEADLINE) == (who == "deadline")
            assert decisions[0].approved == (who == "person")
            wins[who] += 1
        assert ran.count("deploy api") == wins["person"]
    finally:
        await b.close()
        b.store.close()


async def test_an_overdue_deadline_fires_once_after_a_restart(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    db = tmp_path / "restart.db"
    first = bot_for(db, fake_openai)
    fake_openai.add(calls(("deploy", {"service": "api"})), text("not deployed"))
    thread_id = await first.launch("deploy api", source=ANN)
    await until(first, thread_id, lambda v: v.state.pending is not None)
    await first.close()
    first.store.close()
    await asyncio.sleep(1.3)  # the deadline passes while nothing runs
    second = bot_for(db, fake_openai)
    try:
        await second.resume_all()
        view = await until(second, thread_id, lambda v: v.state.status == "done", within=3)
        assert [e.source for e in view.events if isinstance(e, Approval)] == [DEADLINE]
    finally:
        await second.close()
        second.store.close()


# -- reminders and escalation ------------------------------------------------------


async def test_reminder_escalation_and_deadline_in_order_each_delivered_once(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    slack, email = Recorder("slack"), Recorder("email")
    b = bot_for(tmp_path / "r.db", fake_openai, outbound={"slack": slack, "email": email})
    try:
        fake_openai.add(calls(("restart", {"service": "db"})), text("Not restarted."))
        starter = Source(
            channel="slack",
            user="U0ANN",
            person="ann",
            auth="slack",
            refs={"channel": "C1", "thread_ts": "1.0"},
        )
        thread_id = await b.launch("restart db", source=starter)
        view = await until(b, thread_id, lambda v: "escalated" in types(v))
        pending = b.thread_json(thread_id, BOB)["pending"]
        assert pending["approvers"] == ["bob", "carol"]
        assert "remind_at" not in pending  # the reminder went out
        # Carol, reached only by mail, may decide now; Dan may not.
        with pytest.raises(NotAllowed):
            await b.decide(thread_id, True, source=Source(channel="http", user="x@example.com"))
        view = await until(b, thread_id, lambda v: v.state.status == "done")
        assert types(view)[1:4] == ["tool_call", "delivered", "reminder"] or "reminder" in types(
            view
        )
        reminder = next(e for e in view.events if isinstance(e, Reminder))
        escalated = next(e for e in view.events if isinstance(e, Escalated))
        assert reminder.to == ("bob",) and escalated.to == ("carol",)
        assert escalated.reach == {"email": ("carol",)}  # Slack does not reach Carol
        follow = [n for n in slack.notices if isinstance(n, FollowUp)]
        assert [n.kind for n in follow] == ["reminder", "escalation"]
        mailed = [n for n in email.notices if isinstance(n, FollowUp)]
        assert [(n.kind, [p.id for p in n.reach]) for n in mailed] == [("escalation", ["carol"])]
        # The deadline's outcome reaches every channel the request was on.
        outcomes = [n for n in slack.notices + email.notices if isinstance(n, Outcome)]
        assert {n.channel for n in outcomes} == {"slack", "email"}
        assert all(n.by_deadline and n.kind == "rejected" for n in outcomes)
        # Nothing was delivered twice.
        seen = [(n.seq, n.channel) for n in slack.notices + email.notices]
        assert len(seen) == len(set(seen))
    finally:
        await b.close()
        b.store.close()


async def test_an_approval_reaches_each_approver_on_their_own_channel(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    slack, email = Recorder("slack"), Recorder("email")
    b = bot_for(tmp_path / "x.db", fake_openai, outbound={"slack": slack, "email": email})
    try:
        fake_openai.add(calls(("drop_table", {"name": "t"})), text("dropped"))
        thread_id = await b.launch("drop t", source=DAN)  # from the API: no channel of its own
        await until(b, thread_id, lambda v: v.state.pending is not None)
        await until(b, thread_id, lambda v: len(slack.notices) + len(email.notices) >= 2)
        (on_slack,) = [n for n in slack.notices if isinstance(n, ApprovalRequest)]
        (by_mail,) = [n for n in email.notices if isinstance(n, ApprovalRequest)]
        assert sorted(p.id for p in on_slack.reach) == ["ann", "bob"]
        assert [p.id for p in by_mail.reach] == ["carol"]
        assert not on_slack.home and not by_mail.home
    finally:
        await b.close()
        b.store.close()


# -- several approvers, rules on arguments ------------------------------------------


async def test_two_of_three_approvers_are_needed(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(calls(("drop_table", {"name": "users"})), text("Dropped."))
    thread_id = await bot.launch("drop users", source=ANN)
    await until(bot, thread_id, lambda v: v.state.pending is not None)
    # Ann asked: she never counts, although she is an approver.
    with pytest.raises(NotAllowed, match="asked"):
        await bot.decide(thread_id, True, source=ANN)
    await bot.decide(thread_id, True, source=BOB)
    view = bot.get(thread_id)
    assert view.state.status == "waiting_for_approval" and ran == []
    assert bot.thread_json(thread_id, BOB)["pending"]["approved_by"] == ["bob@example.com"]
    with pytest.raises(NotAllowed, match="already approved"):
        await bot.decide(thread_id, True, source=BOB)
    with pytest.raises(UsageError, match="edited"):
        await bot.decide(thread_id, True, arguments={"name": "other"}, source=CAROL)
    await bot.decide(thread_id, True, source=CAROL)
    view = await until(bot, thread_id, lambda v: v.state.status == "done")
    assert ran == ["drop users"]
    assert [e.source.person for e in view.events if isinstance(e, Approval)] == ["bob", "carol"]


async def test_one_rejection_rejects_a_call_that_needs_two(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(calls(("drop_table", {"name": "users"})), text("Kept."))
    thread_id = await bot.launch("drop users", source=DAN)
    await until(bot, thread_id, lambda v: v.state.pending is not None)
    await bot.decide(thread_id, True, source=BOB)
    await bot.decide(thread_id, False, comment="not today", source=CAROL)
    await until(bot, thread_id, lambda v: v.state.status == "done")
    assert ran == []


async def test_a_rule_on_the_arguments_decides_whether_approval_is_needed(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(calls(("refund", {"amount": 20})), text("Refunded 20."))
    small = await bot.launch("refund 20", source=ANN)
    view = await until(bot, small, lambda v: v.state.status == "done")
    call = view.events[1]
    assert isinstance(call, ToolCall) and call.ruled is False and not call.requires_approval
    assert "no approval needed" in bot.get(small).markdown()
    fake_openai.add(calls(("refund", {"amount": 5000})), text("Refunded 5000."))
    big = await bot.launch("refund 5000", source=ANN)
    view = await until(bot, big, lambda v: v.state.pending is not None)
    assert view.events[1].ruled is True and ran == ["refund 20"]


# -- several calls at once; respond; cancel ------------------------------------------


async def test_parallel_calls_are_answered_in_any_order_and_the_model_waits_for_all(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(
        calls(("deploy", {"service": "api"}), ("deploy", {"service": "web"})),
        text("Both handled."),
    )
    thread_id = await bot.launch("deploy api and web", source=ANN)
    await until(bot, thread_id, lambda v: v.state.pending is not None)
    body = bot.thread_json(thread_id, BOB)
    assert [p["arguments"]["service"] for p in body["pending_calls"]] == ["api", "web"]
    assert body["pending"]["call_id"] == body["pending_calls"][0]["call_id"]
    first, second = (p["call_id"] for p in body["pending_calls"])
    await bot.decide(thread_id, False, comment="not web", call_id=second, source=BOB)
    await bot.settle(thread_id)
    assert len(fake_openai.requests) == 1  # one call is still open
    await bot.decide(thread_id, True, call_id=first, source=BOB)
    await until(bot, thread_id, lambda v: v.state.status == "done")
    assert ran == ["deploy api"] and len(fake_openai.requests) == 2


async def test_respond_instead_of_deciding(bot: ThreadBot, fake_openai: FakeOpenAI) -> None:
    fake_openai.add(calls(("deploy", {"service": "prod"})), text("I'll try staging first."))
    thread_id = await bot.launch("deploy prod", source=ANN)
    await until(bot, thread_id, lambda v: v.state.pending is not None)
    with pytest.raises(UsageError):
        await bot.decide(thread_id, True, respond="use staging", source=BOB)
    await bot.decide(thread_id, False, respond="use the staging cluster first", source=BOB)
    await until(bot, thread_id, lambda v: v.state.status == "done")
    assert ran == []
    told = fake_openai.requests[1]["messages"][-1]["content"]
    assert "use the staging cluster first" in told and "not run" in told


async def test_cancel_stops_a_thread_whatever_it_waits_for(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    slack = Recorder("slack")
    bot.add_channel("slack", slack)
    fake_openai.add(calls(("deploy", {"service": "api"})))
    starter = Source(
        channel="slack",
        user="U0ANN",
        person="ann",
        auth="slack",
        refs={"channel": "C1", "thread_ts": "1.0"},
    )
    thread_id = await bot.launch("deploy api", source=starter)
    await until(bot, thread_id, lambda v: len(slack.notices) == 1)
    stranger = Source(channel="http", user="eve@example.com", auth="token:e")
    with pytest.raises(NotAllowed):
        await bot.cancel(thread_id, "mine now", source=stranger)
    await bot.cancel(thread_id, "wrong service", source=starter)
    view = await until(bot, thread_id, lambda v: len(slack.notices) == 2)
    assert view.state.status == "cancelled" and view.state.due is None
    (cancellation,) = [n for n in slack.notices if isinstance(n, Cancellation)]
    assert cancellation.reason == "wrong service"
    assert [o.request.call_id for o in cancellation.requests] == [view.events[1].call_id]
    with pytest.raises(AlreadyAnswered, match="cancelled"):
        await bot.decide(thread_id, True, call_id=view.events[1].call_id, source=BOB)
    with pytest.raises(NotWaiting, match="nothing to cancel"):
        await bot.cancel(thread_id, source=starter)
    await asyncio.sleep(1.2)  # the deadline it had never fires
    await bot.settle(thread_id)
    assert bot.get(thread_id).state.status == "cancelled" and ran == []
    assert bot.threads(overdue_by=time.time()) == []


async def test_two_servers_on_one_database_fire_each_deadline_once(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Both watch the timers and both wake for every due one: the lease and
    the checked append let one of them fire it."""
    db = tmp_path / "shared.db"

    fake_openai.add(*[deploy_then_end] * 40)
    one, two = bot_for(db, fake_openai), bot_for(db, fake_openai)
    try:
        ids = [await one.launch("deploy api", source=ANN) for _ in range(20)]
        for thread_id in ids:
            await until(one, thread_id, lambda v: v.state.pending is not None)
        await two.resume_all()  # the second server starts watching too
        for thread_id in ids:
            view = await until(one, thread_id, lambda v: v.state.status == "done")
            decisions = [e for e in view.events if isinstance(e, Approval)]
            assert [d.source for d in decisions] == [DEADLINE], types(view)
    finally:
        for b in (one, two):
            await b.close()
            b.store.close()


async def test_a_tool_running_when_the_thread_is_cancelled_keeps_its_outcome(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Cancel cannot take back a side effect that started: what the tool
    reports is still recorded, and the thread stays cancelled."""
    started, release = asyncio.Event(), asyncio.Event()

    @tool
    async def charge(amount: int) -> str:
        """Charge an amount (not idempotent)."""
        started.set()
        await release.wait()
        return f"charged {amount}"

    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    b = ThreadBot(EventStore(tmp_path / "c.db"), model, Toolbox([charge]), people=People(PEOPLE))
    try:
        fake_openai.add(calls(("charge", {"amount": 5})), text("never asked"))
        thread_id = await b.launch("charge 5", source=DAN)
        await asyncio.wait_for(started.wait(), 5)
        await b.cancel(thread_id, "stop", source=DAN)
        release.set()
        view = await until(b, thread_id, lambda v: v.events[-1].type == "tool_result")
        assert types(view)[-3:] == ["tool_started", "cancelled", "tool_result"]
        assert view.state.status == "cancelled" and len(fake_openai.requests) == 1
    finally:
        await b.close()
        b.store.close()


async def test_the_requester_never_counts_even_after_a_deadline_or_an_operator_answered(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """An answer by the deadline or by an operator does not make them the one
    who asked: Ann, whose message led to the call, still does not count."""
    b = bot_for(
        tmp_path / "four.db",
        fake_openai,
        question_timers=make_timers("THREADBOT_QUESTION_*", deadline=1, approval=False),
    )
    try:
        fake_openai.add(ask("Which table?"), calls(("drop_table", {"name": "t"})))
        by_deadline = await b.launch("drop a table", source=ANN)
        await until(b, by_deadline, lambda v: v.state.status == "waiting_for_approval")
        fake_openai.add(ask("Which table?"), calls(("drop_table", {"name": "u"})))
        by_operator = await b.launch("drop another table", source=ANN)
        await until(b, by_operator, lambda v: v.state.status == "waiting_for_human")
        await b.respond(by_operator, "u")  # the operator, in the process
        await until(b, by_operator, lambda v: v.state.status == "waiting_for_approval")
        for thread_id in (by_deadline, by_operator):
            with pytest.raises(NotAllowed, match="asked"):
                await b.decide(thread_id, True, source=ANN)
        assert ran == []
    finally:
        await b.close()
        b.store.close()
