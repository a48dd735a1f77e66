"""The prompt threadbot builds: the tool_calls/tool pairing rule, and what the model reads."""

from __future__ import annotations

import json
from typing import Any

from bot.context import build_messages
from bot.events import (
    Approval,
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    Source,
    ToolCall,
    ToolResult,
    ToolStarted,
    UserMessage,
)

ANN = Source(channel="slack", user="U1", name="Ann")
BOB = Source(channel="slack", user="U7", name="Bob")


def assert_paired(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool_calls message is followed at once by one tool message per id."""
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            following = messages[i + 1 : i + 1 + len(ids)]
            assert [f["role"] for f in following] == ["tool"] * len(ids)
            assert [f["tool_call_id"] for f in following] == ids
    sent = {c["id"] for m in messages for c in m.get("tool_calls") or ()}
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert sorted(answered) == sorted(sent)


def test_a_full_thread_is_paired_and_in_order() -> None:
    events: list[Event] = [
        UserMessage(text="deploy the api", source=ANN),
        ToolCall(call_id="q", name="request_human_input", arguments={"question": "Which?"}),
        Delivered(of_seq=1, channel="slack"),
        HumanResponse(call_id="q", text="1.4.2", source=ANN),
        ToolCall(call_id="d", name="deploy", arguments={"v": "1.4.2"}, requires_approval=True),
        Approval(call_id="d", approved=True, source=BOB),
        ToolStarted(call_id="d"),
        ToolResult(call_id="d", output="deployed"),
        AssistantMessage(text="Deployed 1.4.2."),
    ]
    messages = build_messages(events, "SYS")
    assert_paired(messages)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert messages[0]["content"] == "SYS"
    assert messages[3]["content"] == "1.4.2"
    assert messages[5]["content"].startswith("deployed")
    assert "approved by Bob" in messages[5]["content"]
    function = messages[2]["tool_calls"][0]["function"]
    assert function["name"] == "request_human_input"
    assert json.loads(function["arguments"]) == {"question": "Which?"}


def test_a_pending_call_is_never_sent() -> None:
    events: list[Event] = [
        UserMessage(text="hi", source=ANN),
        ToolCall(call_id="a", name="lookup", arguments={}),
        ToolCall(call_id="b", name="request_human_input", arguments={"question": "?"}),
        ToolResult(call_id="a", output={"ok": 1}),
    ]
    messages = build_messages(events, "SYS")
    assert_paired(messages)
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["a"]
    assert json.loads(messages[3]["content"]) == {"ok": 1}
    # With nothing settled, the call is left out altogether.
    only_pending = build_messages(events[:3], "SYS")
    assert [m["role"] for m in only_pending] == ["system", "user"]


def test_results_arriving_after_a_follow_up_stay_next_to_their_call() -> None:
    events: list[Event] = [
        UserMessage(text="hi", source=ANN),
        ToolCall(call_id="a", name="lookup", arguments={}, text="Looking."),
        UserMessage(text="also check web", source=ANN),
        ToolResult(call_id="a", output="fine"),
    ]
    messages = build_messages(events, "SYS")
    assert_paired(messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2]["content"] == "Looking."


def test_rejection_comment_reaches_the_model() -> None:
    events: list[Event] = [
        UserMessage(text="drop it", source=ANN),
        ToolCall(call_id="d", name="drop", arguments={}, requires_approval=True),
        Approval(call_id="d", approved=False, comment="not during the freeze", source=BOB),
    ]
    messages = build_messages(events, "SYS")
    assert_paired(messages)
    assert "not during the freeze" in messages[-1]["content"]
    assert "rejected by Bob" in messages[-1]["content"]
    assert "did not run" in messages[-1]["content"]


def test_errors_reach_the_model() -> None:
    events: list[Event] = [
        UserMessage(text="hi", source=ANN),
        ToolCall(call_id="x", name="flaky", arguments={}),
        ToolResult(call_id="x", output="it broke", is_error=True),
        Error(message="model error 503"),
    ]
    messages = build_messages(events, "SYS")
    assert_paired(messages)
    assert messages[3]["content"] == "error: it broke"
    assert messages[4] == {"role": "user", "content": "[threadbot] error: model error 503"}
