"""What the bot's mails say: questions, approval requests, reminders,
escalations and cancellations, each telling the reader how to reply.

Every mail carries a reply address of its own (see `tokens`): a reply to any
of them answers, decides, responds or cancels as the text says, so each text
spells out the words the channel reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bot import ApprovalRequest, Question, Source

__all__ = [
    "approval_text",
    "asked_too",
    "cancelled_text",
    "escalated_note",
    "question_text",
    "reminder_text",
    "started_where",
    "waiting_text",
]

_WHERE = {
    "slack": "in Slack",
    "http": "over HTTP",
    "api": "through the API",
    "email": "by email",
    "web": "on the web page",
    "mcp": "through an agent (MCP)",
}

_ON_DEADLINE = {
    "reject": "it is rejected",
    "approve": "it is approved",
    "fail": "the thread stops",
}

_HOW_TO_DECIDE = [
    'To run it, reply with "approve" (or "yes") on the first line.',
    'To stop it, reply with "reject" (or "no") and your reason; I will read it.',
    "Any other reply answers instead of deciding: it does not run, and I read what you wrote.",
    'To stop the whole conversation, reply "cancel: " and your reason.',
]


def at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def started_where(origin: Source) -> str:
    """Where a thread started and who started it, for someone reached
    outside that conversation."""
    where = _WHERE.get(origin.channel, f"on {origin.channel}")
    return f"{origin.who()} asked me for this {where}."


def _arguments(arguments: Mapping[str, Any]) -> list[str]:
    return [
        f"  {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
        for k, v in arguments.items()
    ]


def _standing(request: ApprovalRequest, *, decides: bool) -> list[str]:
    """How many approvals it needs, and until when."""
    lines = []
    if request.approvals_required > 1:
        so_far = ", ".join(s.who() for s in request.approved_by) or "nobody yet"
        lines.append(f"It needs {request.approvals_required} approvals (so far: {so_far}).")
    if request.deadline_at is not None:
        then = _ON_DEADLINE.get(request.on_deadline, "it is rejected")
        first = "Decide by" if decides else "It can be decided until"
        lines.append(f"{first} {at(request.deadline_at)}; if nobody does, {then}.")
    return lines


def _lead(lead: Sequence[str]) -> list[str]:
    return [*lead, ""] if lead else []


def question_text(question: Question, *, lead: Sequence[str] = ()) -> str:
    lines = [*_lead(lead), question.text.strip(), ""]
    if question.options:
        lines.append("Reply with one of these (the number or the text):")
        lines += [f"  {i}. {o}" for i, o in enumerate(question.options, 1)]
    else:
        lines.append("Reply to this email with your answer.")
    if question.deadline_at is not None:
        lines += [
            "",
            f"Answer by {at(question.deadline_at)}; if nobody answers by then, I go on without.",
        ]
    return "\n".join(lines)


def approval_text(request: ApprovalRequest, *, lead: Sequence[str] = ()) -> str:
    lines = [*_lead(lead), f"Approval needed before I run {request.tool}:", ""]
    lines += _arguments(request.arguments)
    if standing := _standing(request, decides=True):
        lines += ["", *standing]
    lines += ["", *_HOW_TO_DECIDE]
    return "\n".join(lines)


def waiting_text(
    request: ApprovalRequest, deciders: str, *, lead: Sequence[str] = (), home: bool = True
) -> str:
    """For someone who sees the request but may not decide it (`home`: in
    the thread's own conversation, where its answer will come)."""
    lines = [*_lead(lead), f"Before I run {request.tool}, it needs approval by {deciders}:", ""]
    lines += _arguments(request.arguments)
    if standing := _standing(request, decides=False):
        lines += ["", *standing]
    lines += [
        "",
        "I asked them, and will write here when it is decided." if home else "I asked them.",
        'To stop the whole conversation, reply "cancel: " and your reason.',
    ]
    return "\n".join(lines)


def reminder_text(request: Question | ApprovalRequest, *, lead: Sequence[str] = ()) -> str:
    """A short reminder to someone asked before."""
    if isinstance(request, Question):
        return question_text(request, lead=[*lead, "Reminder: I am still waiting for your answer."])
    lines = [*_lead(lead), f"Reminder: {request.tool} is still waiting for your decision:", ""]
    lines += _arguments(request.arguments)
    if standing := _standing(request, decides=True):
        lines += ["", *standing]
    lines += [
        "",
        'Reply "approve" to run it, "reject" and a reason to stop it, any other text to '
        'answer instead of deciding, or "cancel: " and your reason to stop the conversation.',
    ]
    return "\n".join(lines)


def escalated_note(request: Question | ApprovalRequest, named: Sequence[str]) -> str:
    """To the person who asked: who else was asked, since nobody answered in time."""
    who = ", ".join(named) or "more people"
    if isinstance(request, Question):
        return f"Nobody has answered yet, so I have asked {who} as well:\n\n{request.text.strip()}"
    return (
        f"Nobody has decided on {request.tool} yet, so I have asked {who} as well. "
        "I will write here when it is decided."
    )


def cancelled_text(by: Source, reason: str | None) -> str:
    return f"Cancelled by {by.who()}: {reason}" if reason else f"Cancelled by {by.who()}."


def asked_too(request: Question | ApprovalRequest) -> str:
    """The first line of an escalated request, to the people it was escalated to."""
    if isinstance(request, Question):
        return "Nobody has answered this in time, so I am asking you as well."
    return "Nobody has decided this in time, so I am asking you as well."
