"""Derived state and the next step: pure functions over event lists."""

from __future__ import annotations

from bot.events import (
    Approval,
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    Source,
    ToolCall,
    ToolDeferred,
    ToolResult,
    ToolStarted,
    UserMessage,
)
from bot.step import (
    CallModel,
    Deliver,
    Escalate,
    Fail,
    Interrupted,
    RunTool,
    Stop,
    Wait,
    next_step,
)
from bot.thread import Fold, derive

ANN = Source(channel="slack", user="U1", name="Ann")
BOB = Source(channel="slack", user="U7", name="Bob")


def hi(text: str = "deploy the api") -> UserMessage:
    return UserMessage(text=text, source=ANN)


def question(call_id: str = "q1") -> ToolCall:
    return ToolCall(call_id=call_id, name="request_human_input", arguments={"question": "Which?"})


def deploy(call_id: str = "d1") -> ToolCall:
    return ToolCall(
        call_id=call_id, name="deploy", arguments={"service": "api"}, requires_approval=True
    )


def status_of(events: list[Event]) -> str:
    return derive(events).status


def test_a_new_thread_is_running_and_calls_the_model() -> None:
    state = derive([hi()])
    assert state.status == "running"
    assert state.title == "deploy the api"
    assert state.origin == ANN
    assert next_step(state) == CallModel()


def test_waiting_for_human() -> None:
    state = derive([hi(), question()])
    assert state.status == "waiting_for_human"
    assert state.pending is not None
    assert (state.pending.call_id, state.pending.kind, state.pending.question) == (
        "q1",
        "question",
        "Which?",
    )
    assert isinstance(next_step(state), Wait)


def test_answered_question_runs_again() -> None:
    events = [hi(), question(), HumanResponse(call_id="q1", text="1.4.2", source=ANN)]
    state = derive(events)
    assert state.status == "running"
    assert state.pending is None
    assert state.resolved["q1"].kind == "answer"
    assert next_step(state) == CallModel()


def test_waiting_for_approval_then_approved_runs_the_tool() -> None:
    events: list[Event] = [hi(), deploy()]
    assert status_of(events) == "waiting_for_approval"
    events.append(Approval(call_id="d1", approved=True, source=BOB))
    state = derive(events)
    assert state.status == "running"
    step = next_step(state)
    assert isinstance(step, RunTool)
    assert step.call.call.call_id == "d1"


def test_approval_with_edited_arguments_runs_with_the_edit() -> None:
    events = [hi(), deploy(), Approval(call_id="d1", approved=True, arguments={"x": 1}, source=BOB)]
    step = next_step(derive(events))
    assert isinstance(step, RunTool)
    assert step.call.arguments == {"x": 1}


def test_rejection_settles_the_call() -> None:
    events = [hi(), deploy(), Approval(call_id="d1", approved=False, comment="no", source=BOB)]
    state = derive(events)
    assert state.status == "running"
    assert state.resolved["d1"].kind == "rejected"
    assert next_step(state) == CallModel()


def test_waiting_for_result() -> None:
    call = ToolCall(call_id="j1", name="start_job", arguments={})
    events: list[Event] = [hi(), call, ToolStarted(call_id="j1"), ToolDeferred(call_id="j1")]
    state = derive(events)
    assert state.status == "waiting_for_result"
    assert state.pending is not None and state.pending.kind == "result"
    events.append(ToolResult(call_id="j1", output="done", source=Source(channel="http")))
    assert status_of(events) == "running"


def test_done_after_an_answer() -> None:
    state = derive([hi(), AssistantMessage(text="ok")])
    assert state.status == "done"
    assert next_step(state) == Stop("done")


def test_failed_after_a_fatal_error_and_revived_by_a_message() -> None:
    events: list[Event] = [hi(), Error(message="bad key", fatal=True)]
    assert status_of(events) == "failed"
    assert next_step(derive(events)) == Stop("failed")
    events.append(hi("try again"))
    assert status_of(events) == "running"


def test_started_without_result_is_interrupted_not_rerun() -> None:
    events = [hi(), ToolCall(call_id="x", name="charge", arguments={}), ToolStarted(call_id="x")]
    state = derive(events)
    assert state.status == "running"
    step = next_step(state)
    assert isinstance(step, Interrupted)
    assert step.call.call.call_id == "x"


def test_runnable_calls_run_before_waiting_on_others() -> None:
    events = [
        hi(),
        question("q1"),
        ToolCall(call_id="l1", name="lookup", arguments={}),
    ]
    state = derive(events)
    assert state.status == "running"
    step = next_step(state)
    assert isinstance(step, RunTool) and step.call.call.call_id == "l1"
    events.append(ToolResult(call_id="l1", output="fine"))
    assert status_of(events) == "waiting_for_human"


def test_three_errors_in_a_row_escalate_to_a_person() -> None:
    events: list[Event] = [hi(), Error(message="503"), Error(message="503")]
    state = derive(events)
    assert state.consecutive_errors == 2
    assert next_step(state) == CallModel()
    events.append(Error(message="503 again"))
    step = next_step(derive(events))
    assert isinstance(step, Escalate)
    assert "503 again" in step.reason


def test_tool_errors_count_and_a_success_resets() -> None:
    events: list[Event] = [hi()]
    for i in range(2):
        events += [
            ToolCall(call_id=f"f{i}", name="flaky", arguments={}),
            ToolResult(call_id=f"f{i}", output="bad", is_error=True),
        ]
    assert derive(events).consecutive_errors == 2
    events += [
        ToolCall(call_id="ok", name="lookup", arguments={}),
        ToolResult(call_id="ok", output=1),
    ]
    assert derive(events).consecutive_errors == 0


def test_step_limit_fails_the_thread() -> None:
    events: list[Event] = [hi()]
    for i in range(3):
        events += [
            ToolCall(call_id=f"l{i}", name="lookup", arguments={}),
            ToolResult(call_id=f"l{i}", output=i),
        ]
    state = derive(events)
    assert state.turns_since_human == 3
    assert isinstance(next_step(state, max_turns=3), Fail)
    assert next_step(state, max_turns=4) == CallModel()


def test_a_batch_of_calls_is_one_turn() -> None:
    events = [
        hi(),
        ToolCall(call_id="a", name="lookup", arguments={}),
        ToolCall(call_id="b", name="lookup", arguments={}),
    ]
    assert derive(events).turns_since_human == 1


def test_delivery_to_the_origin_channel_comes_first() -> None:
    events: list[Event] = [hi(), question()]
    step = next_step(derive(events), outbound=frozenset({"slack"}))
    assert step == Deliver(1, "slack")
    # Channels that are not the thread's origin deliver nothing.
    assert isinstance(next_step(derive(events), outbound=frozenset({"email"})), Wait)
    events.append(Delivered(of_seq=1, channel="slack", refs={"ts": "1.2"}))
    assert isinstance(next_step(derive(events), outbound=frozenset({"slack"})), Wait)


def test_the_final_answer_is_delivered_once() -> None:
    events: list[Event] = [hi(), AssistantMessage(text="done")]
    assert next_step(derive(events), outbound=frozenset({"slack"})) == Deliver(1, "slack")
    events.append(Delivered(of_seq=1, channel="slack"))
    assert next_step(derive(events), outbound=frozenset({"slack"})) == Stop("done")


def test_settled_questions_are_no_longer_delivered() -> None:
    events = [hi(), question(), HumanResponse(call_id="q1", text="x", source=ANN)]
    assert derive(events).undelivered == ()


def test_a_turn_of_several_failing_calls_is_one_error() -> None:
    events: list[Event] = [hi()]
    events += [ToolCall(call_id=c, name="x", arguments={}) for c in "abc"]
    events += [ToolResult(call_id=c, output="bad", is_error=True) for c in "abc"]
    assert derive(events).consecutive_errors == 1


def test_an_approved_call_stays_settled_by_its_approver() -> None:
    events: list[Event] = [
        hi(),
        deploy(),
        Approval(call_id="d1", approved=True, source=BOB),
        ToolStarted(call_id="d1"),
    ]
    assert derive(events).resolved["d1"].source == BOB
    events.append(ToolResult(call_id="d1", output="ok"))
    resolution = derive(events).resolved["d1"]
    assert (resolution.kind, resolution.source, resolution.seq) == ("approved", BOB, 2)


def test_a_fold_copy_carries_every_field() -> None:
    fold = Fold().extend([hi(), question(), deploy()])
    copy = fold.copy()
    for name in Fold.__slots__:
        value = getattr(copy, name)
        assert value == getattr(fold, name)
        if isinstance(value, dict | set) and name not in ("resolved", "_delivered"):
            assert value is not getattr(fold, name)


def test_a_fold_and_its_copies_and_states_never_see_each_others_events() -> None:
    """The maps that grow with a thread are shared until one side adds to
    them; each side sees only its own events."""
    fold = Fold().extend([hi(), question(), deploy()])
    before = fold.state()
    answered = fold.copy().extend(
        [HumanResponse(call_id="q1", text="1.4", source=BOB), Delivered(of_seq=1, channel="x")]
    )
    approved = fold.copy().extend([Approval(call_id="d1", approved=True, source=BOB)])
    assert set(before.resolved) == set(fold.state().resolved) == set()
    assert set(answered.state().resolved) == {"q1"}
    assert set(approved.state().resolved) == {"d1"}
    assert before.undelivered == fold.state().undelivered == approved.state().undelivered
    assert (1, "slack") not in answered.state().undelivered
    assert (1, "slack") in before.undelivered
    later = answered.state()
    answered.extend([Approval(call_id="d1", approved=False, source=BOB)])
    assert set(later.resolved) == {"q1"}  # a state taken earlier keeps its view
    assert set(answered.state().resolved) == {"q1", "d1"}


# -- timers, several deliveries, several approvals, cancel ----------------------


def _timed(**timers: object) -> ToolCall:
    from datetime import UTC, datetime

    from bot.events import Timers

    return ToolCall(
        call_id="t1",
        name="deploy",
        arguments={},
        requires_approval=True,
        approvers=("bob",),
        timers=Timers(**timers),  # type: ignore[arg-type]
        reach={"email": ("carol",)},
        ts=datetime.fromtimestamp(1000, UTC),
    )


def test_timers_come_due_in_order_and_each_fires_once() -> None:
    from bot.events import Escalated, Reminder
    from bot.step import Fire

    call = _timed(remind_after=10, escalate_after=20, escalate_to=("carol",), deadline=30)
    events: list[Event] = [hi(), call]
    state = derive(events)
    assert state.due is not None and (state.due.kind, state.due.at) == ("remind", 1010)
    assert state.overdue_at == 1010 and state.pending.deadline_at == 1030
    assert next_step(state, now=1009.9) == Wait(state.pending)
    assert next_step(state, now=1010) == Fire(state.due)
    events.append(Reminder(call_id="t1", to=("bob",)))
    state = derive(events)
    assert (state.due.kind, state.due.at) == ("escalate", 1020)
    assert state.pending.remind_at is None  # the reminder went out
    events.append(Escalated(call_id="t1", to=("carol",)))
    state = derive(events)
    assert (state.due.kind, state.due.at) == ("deadline", 1030)
    assert state.pending.escalated == ("carol",)
    events.append(Approval(call_id="t1", approved=True, source=BOB))
    assert derive(events).due is None and derive(events).overdue_at is None


def test_a_due_timer_fires_before_a_delivery_that_may_be_failing() -> None:
    from bot.step import Fire

    state = derive([hi(), _timed(deadline=5)])
    assert state.undelivered == ((1, "email"), (1, "slack"))
    assert next_step(state, outbound=frozenset({"slack", "email"}), now=2000) == Fire(state.due)
    assert next_step(state, outbound=frozenset({"email"}), now=0) == Deliver(1, "email")


def test_a_settlement_is_due_wherever_the_request_and_its_reminder_were_posted() -> None:
    from bot.events import Reminder

    events: list[Event] = [
        hi(),
        _timed(remind_after=1),
        Delivered(of_seq=1, channel="email"),
        Reminder(call_id="t1", to=("bob",), reach={"email": ("bob",)}),
        Delivered(of_seq=3, channel="slack"),
    ]
    assert derive(events).undelivered == ((1, "slack"), (3, "email"))
    events.append(Approval(call_id="t1", approved=False, source=BOB))
    assert derive(events).undelivered == ((5, "email"), (5, "slack"))
    # A post recorded after the settlement still gets the outcome.
    events.append(Delivered(of_seq=3, channel="email"))
    assert derive(events).undelivered == ((5, "email"), (5, "slack"))


def test_several_approvals_and_a_cancel() -> None:
    from bot.events import Cancelled

    call = deploy().model_copy(update={"approvals_required": 2})
    events: list[Event] = [hi(), call, Approval(call_id="d1", approved=True, source=BOB)]
    state = derive(events)
    assert state.status == "waiting_for_approval" and state.pending.approved_by == (BOB,)
    events.append(Approval(call_id="d1", approved=True, source=ANN))
    assert derive(events).status == "running"
    events = [hi(), question(), deploy(), Cancelled(reason="no", source=ANN)]
    state = derive(events)
    assert state.status == "cancelled" and state.open_calls == ()
    assert {r.kind for r in state.resolved.values()} == {"cancelled"}
    assert next_step(state) == Stop("cancelled")
    events.append(UserMessage(text="start again", source=ANN))
    assert derive(events).status == "running"
