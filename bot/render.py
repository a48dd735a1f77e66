"""A thread for people (Markdown) and for programs (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .events import (
    Approval,
    AssistantMessage,
    Cancelled,
    Delivered,
    Error,
    Escalated,
    Event,
    HumanResponse,
    Reminder,
    ToolCall,
    ToolDeferred,
    ToolResult,
    ToolStarted,
    UserMessage,
    event_from_dict,
)
from .thread import HUMAN_INPUT, Pending, ThreadState

__all__ = [
    "event_json",
    "event_line",
    "iso_utc",
    "pending_json",
    "thread_json",
    "thread_markdown",
]


def iso_utc(at: float | None) -> str | None:
    """Unix time as ISO 8601 in UTC, as the API shows times."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pending_json(p: Pending | None) -> dict[str, Any] | None:
    if p is None:
        return None
    out: dict[str, Any] = {"call_id": p.call_id, "kind": p.kind, "seq": p.seq}
    if p.kind == "question":
        out["question"] = p.question
        out["options"] = p.options
    else:
        out["tool"] = p.name
        out["arguments"] = p.arguments
        if p.approvers or p.escalated:
            out["approvers"] = [*p.approvers, *p.escalated]
    if p.kind == "approval" and p.approvals_required > 1:
        out["approvals_required"] = p.approvals_required
        out["approved_by"] = [s.who() for s in p.approved_by]
    if p.deadline_at is not None:
        out["deadline"] = iso_utc(p.deadline_at)
    if p.remind_at is not None:
        out["remind_at"] = iso_utc(p.remind_at)
    return out


def event_json(seq: int, e: Event) -> dict[str, Any]:
    return {"seq": seq, **e.model_dump(mode="json", exclude_none=True)}


def thread_json(thread_id: str, state: ThreadState, events: Sequence[Event]) -> dict[str, Any]:
    return {
        "id": thread_id,
        "status": state.status,
        "title": state.title,
        "pending": pending_json(state.pending),
        "pending_calls": [pending_json(p) for p in state.waiting],
        "events": [event_json(i, e) for i, e in enumerate(events)],
    }


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


def _args(arguments: dict[str, Any]) -> str:
    return "`" + json.dumps(arguments, ensure_ascii=False) + "`"


def _line(e: Event) -> str | None:
    match e:
        case UserMessage():
            return f"**{e.source.who()}** ({e.source.channel}):\n\n{_quote(e.text)}"
        case AssistantMessage():
            return f"**threadbot**:\n\n{_quote(e.text)}"
        case ToolCall() if e.name == HUMAN_INPUT:
            q = str(e.arguments.get("question", ""))
            opts = e.arguments.get("options")
            line = f"**threadbot asks** (`{e.call_id}`): {q}"
            return line + (f"  \nOptions: {', '.join(map(str, opts))}" if opts else "")
        case ToolCall():
            gate = " — *needs approval*" if e.requires_approval else ""
            if e.ruled is False:
                gate = " — no approval needed (its rule on the arguments)"
            prefix = f"**threadbot**: {e.text}\n\n" if e.text else ""
            return f"{prefix}🔧 `{e.name}` {_args(e.arguments)} (`{e.call_id}`){gate}"
        case ToolStarted():
            return f"▶ `{e.call_id}` started"
        case ToolDeferred():
            return f"⏳ `{e.call_id}` deferred" + (f": {e.note}" if e.note else "")
        case ToolResult():
            mark = "✗ error" if e.is_error else "✓ result"
            out = e.output if isinstance(e.output, str) else json.dumps(e.output)
            by = f" (posted by {e.source.how()})" if e.source else ""
            return f"{mark} `{e.call_id}`{by}: {out}"
        case HumanResponse():
            return f"**{e.source.how()}** answered (`{e.call_id}`):\n\n{_quote(e.text)}"
        case Approval() if e.responded:
            who = e.source.how()
            return f"💬 **{who}** replied instead of deciding (`{e.call_id}`):\n\n" + _quote(
                e.comment or ""
            )
        case Approval():
            verdict = "✅ approved" if e.approved else "❌ rejected"
            line = f"{verdict} `{e.call_id}` by **{e.source.how()}**"
            if e.comment:
                line += f": {e.comment}"
            if e.arguments is not None:
                line += f" — with edited arguments {_args(e.arguments)}"
            return line
        case Delivered():
            return None
        case Reminder():
            return f"⏰ reminder on `{e.call_id}` to {', '.join(e.to) or 'nobody'}"
        case Escalated():
            return f"⤴ `{e.call_id}` escalated to {', '.join(e.to)}"
        case Cancelled():
            line = f"⏹ cancelled by **{e.source.how()}**"
            return line + (f": {e.reason}" if e.reason else "")
        case Error():
            return f"⚠ {'failed' if e.fatal else 'error'} ({e.kind}): {e.message}"


def thread_markdown(thread_id: str, state: ThreadState, events: Sequence[Event]) -> str:
    title = state.title or thread_id
    lines = [f"# {title}", "", f"Thread `{thread_id}` — **{state.status}**", ""]
    day = None
    for e in events:
        line = _line(e)
        if line is None:
            continue
        if e.ts.date() != day:
            day = e.ts.date()
            lines += [f"### {day:%Y-%m-%d} (UTC)", ""]
        lines += [f"`{e.ts:%H:%M:%S}` {line}", ""]
    p = state.pending
    if p is not None:
        if p.kind == "question":
            lines.append(f"**Waiting for an answer** to `{p.call_id}`: {p.question}")
        elif p.kind == "approval":
            lines.append(f"**Waiting for approval** of `{p.name}` {_args(p.arguments)}")
        else:
            lines.append(f"**Waiting for the result** of `{p.name}` (`{p.call_id}`)")
        if p.deadline_at is not None:
            lines.append(f"  \nDeadline: {iso_utc(p.deadline_at)}")
    return "\n".join(lines).rstrip() + "\n"


def event_line(data: dict[str, Any]) -> str | None:
    """One event, from its JSON object, for a terminal."""
    line = _line(event_from_dict(data))
    return (
        None
        if line is None
        else line.replace("**", "").replace("\n\n> ", " ").replace("\n> ", " / ")
    )
