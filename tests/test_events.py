"""Every event type survives JSON and the store unchanged."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest

from bot.events import (
    Approval,
    AssistantMessage,
    Cancelled,
    Delivered,
    Error,
    Escalated,
    Event,
    HumanResponse,
    Reminder,
    Source,
    ToolCall,
    ToolDeferred,
    ToolResult,
    ToolStarted,
    UserMessage,
    dump_event,
    event_from_dict,
    load_event,
    load_events,
)
from bot.log import ThreadLog
from store import EventStore

SRC = Source(channel="slack", user="U1", name="Ann", refs={"channel": "C9", "ts": "17.1"})

SAMPLES: list[Event] = [
    UserMessage(text="deploy the api ✨", source=SRC, key="slack:Ev1"),
    AssistantMessage(text="Deployed."),
    ToolCall(
        call_id="c1",
        name="deploy",
        arguments={"service": "api", "nested": {"a": [1, 2.5, None, True]}},
        text="On it.",
        requires_approval=True,
        approvers=("U7",),
    ),
    ToolStarted(call_id="c1"),
    ToolDeferred(call_id="c1", note="queued"),
    ToolResult(call_id="c1", output={"ok": True, "lines": ["a", "b"]}),
    ToolResult(call_id="c2", output=None, is_error=True, source=Source(channel="http")),
    HumanResponse(call_id="c3", text="1.4.2", option="1.4.2", source=SRC, key="slack:Ev2"),
    Approval(
        call_id="c1",
        approved=True,
        comment="go",
        arguments={"service": "api", "version": "1.4.3"},
        source=SRC,
    ),
    Approval(call_id="c4", approved=False, source=SRC),
    Delivered(of_seq=2, channel="slack", refs={"ts": "17.2"}),
    Error(message="model error 503", kind="model", fatal=False),
    Reminder(call_id="c2", to=("bob",), reach={"email": ("bob",)}),
    Escalated(call_id="c2", to=("group:oncall",)),
    Cancelled(reason="wrong service", source=Source(channel="http", user="ann", auth="token:a")),
]


def test_samples_cover_every_event_type() -> None:
    union = typing.get_args(typing.get_args(Event)[0])
    declared = {typing.get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert {e.type for e in SAMPLES} == declared


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trips_through_json(event: Event) -> None:
    assert load_event(dump_event(event)) == event
    assert event_from_dict({"seq": 3, **event.model_dump(mode="json")}) == event


def test_round_trips_through_the_store(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    log = ThreadLog(store)
    log.append_sync(log.create_sync("t1", SAMPLES[:1]), SAMPLES[1:])
    # A fresh connection reads exactly what was written.
    again = EventStore(tmp_path / "t.db")
    assert load_events(again.load("t1")) == SAMPLES


def test_events_are_immutable() -> None:
    with pytest.raises(Exception, match="frozen"):
        SAMPLES[1].text = "changed"  # type: ignore[misc, union-attr]


def test_unknown_type_is_refused() -> None:
    with pytest.raises(Exception, match="does not match any of the expected tags"):
        load_event('{"type": "nope"}')


def test_a_cached_thread_catches_up_with_another_connections_append(tmp_path: Path) -> None:
    mine = ThreadLog(EventStore(tmp_path / "t.db"))
    theirs = ThreadLog(EventStore(tmp_path / "t.db"))
    mine.create_sync("t1", SAMPLES[:1])
    assert len(mine.load("t1").events) == 1
    theirs.append_sync(theirs.load("t1"), SAMPLES[1:3])
    assert mine.load("t1").events == SAMPLES[:3]
    mine.append_sync(mine.load("t1"), SAMPLES[3:4])
    assert theirs.load("t1").events == SAMPLES[:4]


@pytest.mark.anyio
async def test_two_logs_on_one_loop_see_each_others_appends(tmp_path: Path) -> None:
    from store import SeqConflict

    a = ThreadLog(EventStore(tmp_path / "t.db"))
    b = ThreadLog(EventStore(tmp_path / "t.db"))
    a.create_sync("t1", SAMPLES[:1])
    stale = b.load("t1")
    await a.append(a.load("t1"), SAMPLES[1:2])
    await asyncio.sleep(0)  # the next pass of the loop
    assert b.load("t1").events == SAMPLES[:2]
    # An append from a stale read is refused, and the next read is current.
    held = b.load("t1")
    await a.append(a.load("t1"), SAMPLES[2:3])
    with pytest.raises(SeqConflict):
        await b.append(held, SAMPLES[3:4])
    assert b.load("t1").events == SAMPLES[:3]
    with pytest.raises(SeqConflict):
        await b.append(stale, SAMPLES[3:4])
    assert len((await b.append(b.load("t1"), SAMPLES[3:4])).events) == 4


def test_an_event_changed_into_a_cycle_is_still_freed(tmp_path: Path) -> None:
    """Events are frozen only on the surface: `arguments`, `refs` and a tool's
    output are plain containers that code can change. Nothing relies on more
    than that: the cycle collector sees events as it sees any object, so an
    event made to refer to itself (created, appended, or read by another log)
    is freed once nothing else holds it."""
    import gc
    import weakref

    mine = ThreadLog(EventStore(tmp_path / "t.db"))
    theirs = ThreadLog(EventStore(tmp_path / "t.db"))
    first = UserMessage(text="hi", source=Source(channel="http"))
    mine.create_sync("t1", [first])
    theirs.load("t1")
    appended = [
        ToolCall(call_id="c9", name="deploy", arguments={"service": "api"}),
        ToolResult(call_id="c9", output={"rows": [1, 2]}),
        HumanResponse(call_id="c9", text="yes", source=Source(channel="slack", refs={"a": "1"})),
    ]
    mine.append_sync(mine.load("t1"), appended)
    caught_up = theirs.load("t1").events  # read back from the store by another log

    for events in ([first, *appended], caught_up):
        message, call, result, answer = events
        assert isinstance(call, ToolCall) and isinstance(result, ToolResult)
        call.arguments["self"] = call
        result.output["event"] = result
        message.source.refs["thread"] = typing.cast(str, events)
        answer.source.refs["answer"] = typing.cast(str, answer)
    alive = [weakref.ref(e) for e in [first, *appended, *caught_up]]
    del first, appended, caught_up, events, message, call, result, answer
    mine.store.close()
    theirs.store.close()
    del mine, theirs
    gc.collect()
    assert [r() for r in alive] == [None] * len(alive)
