"""The prompt: a thread's events turned into Chat Completions messages.

threadbot owns its context window. Rules the model API enforces, kept here:
every assistant message with `tool_calls` is followed at once by one `tool`
message per call id, and a call without an outcome yet is never sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .events import (
    Approval,
    AssistantMessage,
    Error,
    Event,
    HumanResponse,
    ToolCall,
    ToolResult,
    UserMessage,
)

__all__ = ["DEFAULT_SYSTEM_PROMPT", "build_messages"]

Message = dict[str, Any]

DEFAULT_SYSTEM_PROMPT = (
    "You are threadbot, an assistant working with a team in chat and email. "
    "Use the tools you are given. When you lack information or need a person to "
    "choose, call request_human_input instead of guessing. Some tools need a "
    "person's approval before they run; if a call is rejected, respect the reason. "
    "Answer briefly."
)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _outcomes(events: Sequence[Event]) -> dict[str, str]:
    """The `tool` message content of every call that has an outcome."""
    approvals: dict[str, Approval] = {}
    out: dict[str, str] = {}
    for e in events:
        match e:
            case ToolResult():
                content = _text(e.output) if e.output is not None else ""
                if e.is_error:
                    content = f"error: {content}"
                if (a := approvals.get(e.call_id)) is not None:
                    note = f"approved by {a.source.who()}"
                    if a.comment:
                        note += f": {a.comment}"
                    if a.arguments is not None:
                        note += f"; it ran with edited arguments {_text(a.arguments)}"
                    content = f"{content}\n({note})"
                out.setdefault(e.call_id, content)
            case HumanResponse():
                out.setdefault(e.call_id, e.text)
            case Approval() if e.approved:
                approvals[e.call_id] = e
            case Approval():
                reason = e.comment or "no reason given"
                out.setdefault(
                    e.call_id, f"rejected by {e.source.who()}: {reason}. The tool did not run."
                )
            case _:
                pass
    return out


def build_messages(events: Sequence[Event], system_prompt: str) -> list[Message]:
    outcomes = _outcomes(events)
    messages: list[Message] = [{"role": "system", "content": system_prompt}]
    batch: list[ToolCall] = []

    def flush() -> None:
        done = [c for c in batch if c.call_id in outcomes]
        text = batch[0].text if batch else None
        if done:
            messages.append(
                {
                    "role": "assistant",
                    "content": text,
                    "tool_calls": [
                        {
                            "id": c.call_id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in done
                    ],
                }
            )
            messages.extend(
                {"role": "tool", "tool_call_id": c.call_id, "content": outcomes[c.call_id]}
                for c in done
            )
        elif text:
            messages.append({"role": "assistant", "content": text})
        batch.clear()

    for e in events:
        if isinstance(e, ToolCall):
            batch.append(e)
            continue
        if batch:
            flush()
        match e:
            case UserMessage():
                messages.append({"role": "user", "content": e.text})
            case AssistantMessage():
                messages.append({"role": "assistant", "content": e.text})
            case Error():
                messages.append({"role": "user", "content": f"[threadbot] error: {e.message}"})
            case _:
                pass
    if batch:
        flush()
    return messages
