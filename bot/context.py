"""The prompt: a thread's events turned into Chat Completions messages.

threadbot owns its context window. Rules the model API enforces, kept here:
every assistant message with `tool_calls` is followed at once by one `tool`
message per call id, and a call without an outcome yet is never sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json

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

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "Context",
    "build_context",
    "build_messages",
    "message_parts",
    "system_part",
]

Message = dict[str, Any]

DEFAULT_SYSTEM_PROMPT = (
    "You are threadbot, an assistant working with a team in chat and email. "
    "Use the tools you are given. When you lack information or need a person to "
    "choose, call request_human_input instead of guessing. Some tools need a "
    "person's approval before they run; if a call is rejected, respect the reason. "
    "Answer briefly."
)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else to_json(value).decode()


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
            case Approval() if e.responded:
                out.setdefault(
                    e.call_id,
                    f"not run: {e.source.who()} replied instead of deciding: {e.comment or ''}",
                )
            case Approval():
                reason = e.comment or "no reason given"
                out.setdefault(
                    e.call_id, f"rejected by {e.source.who()}: {reason}. The tool did not run."
                )
            case _:
                pass
    return out


class Context:
    """The messages of one model request, each already serialized (UTF-8 JSON).

    A thread only grows, so the serialized messages of its past are kept
    and only the new events are turned into messages for the next request.
    """

    __slots__ = ("_messages", "parts")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self._messages: list[Message] | None = None

    @property
    def messages(self) -> list[Message]:
        """The messages as objects (for models that read them)."""
        if self._messages is None:
            self._messages = [json.loads(p) for p in self.parts]
        return self._messages

    def __len__(self) -> int:
        return len(self.parts)


def _dumps(message: Message) -> bytes:
    # Bytes, as they will be sent: a request body is then one join of the
    # parts, with no encoding of the whole context per request. (pydantic's
    # encoder: compact UTF-8, five times faster than `json.dumps` here.)
    return to_json(message)


def message_parts(events: Sequence[Event], start: int = 0) -> list[bytes]:
    """The serialized messages for `events[start:]`. `start` must be 0 or a
    point at which every earlier call had its outcome (where a model request
    was last built)."""
    tail = events[start:]
    outcomes = _outcomes(tail)
    parts: list[bytes] = []
    batch: list[ToolCall] = []

    def flush() -> None:
        done = [c for c in batch if c.call_id in outcomes]
        text = batch[0].text if batch else None
        if done:
            parts.append(
                _dumps(
                    {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [
                            {
                                "id": c.call_id,
                                "type": "function",
                                "function": {
                                    "name": c.name,
                                    "arguments": to_json(c.arguments).decode(),
                                },
                            }
                            for c in done
                        ],
                    }
                )
            )
            parts.extend(
                _dumps({"role": "tool", "tool_call_id": c.call_id, "content": outcomes[c.call_id]})
                for c in done
            )
        elif text:
            parts.append(_dumps({"role": "assistant", "content": text}))
        batch.clear()

    for e in tail:
        if isinstance(e, ToolCall):
            batch.append(e)
            continue
        if batch:
            flush()
        match e:
            case UserMessage():
                parts.append(_dumps({"role": "user", "content": e.text}))
            case AssistantMessage():
                parts.append(_dumps({"role": "assistant", "content": e.text}))
            case Error():
                parts.append(_dumps({"role": "user", "content": f"[threadbot] error: {e.message}"}))
            case _:
                pass
    if batch:
        flush()
    return parts


def system_part(system_prompt: str) -> bytes:
    return _dumps({"role": "system", "content": system_prompt})


def build_context(events: Sequence[Event], system_prompt: str) -> Context:
    return Context([system_part(system_prompt), *message_parts(events)])


def build_messages(events: Sequence[Event], system_prompt: str) -> list[Message]:
    """The request's messages as objects: system prompt, then the thread."""
    return build_context(events, system_prompt).messages
