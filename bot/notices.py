"""What the core hands a channel: typed notices, built from a thread's events.

A channel only translates a notice to its platform and says where it landed
(a `Delivery`); it reads no events and no store. The runner records each
delivery as a `delivered` event, so a notice goes out once per pause, and
again only after a crash that came between the post and the record (then
`fresh` is False).

    Question         the agent asks a person (`request_human_input`)
    ApprovalRequest  a call waits for a decision: who may decide, and what
    Answer           the agent's reply: it is done until someone writes
    Failure          the thread stopped
    Outcome          a question or approval that was posted got settled
                     (by a click, a reply, another channel, the API): the
                     post should say so and offer nothing more
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from .events import (
    Approval,
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    Source,
    ToolCall,
    UserMessage,
)
from .people import Deciders, People, deciders, may_settle
from .thread import HUMAN_INPUT

__all__ = [
    "Answer",
    "ApprovalRequest",
    "Delivery",
    "Failure",
    "Notice",
    "Outbound",
    "Outcome",
    "Question",
    "Said",
    "build_notice",
    "find_call",
    "pick_option",
    "read_decision",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a channel posted a notice: recorded in `delivered`."""

    refs: dict[str, str] = field(default_factory=dict)
    routes: tuple[str, ...] = ()
    """References that should route replies to this thread."""


class Said(NamedTuple):
    """One message of the thread on a channel: a person's (inbound) or the
    channel's own post, with the platform's references."""

    inbound: bool
    refs: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    thread_id: str
    seq: int
    """The event this notice delivers: with the thread id, the post's identity."""
    origin: Source
    """Who started the thread, and where: a channel posts there."""
    channel: str
    fresh: bool = True
    """False when an earlier process may have posted this and stopped before
    recording it: a channel that can look, looks first."""
    delivered: Mapping[str, str] | None = None
    """Where this channel posted it, once recorded (the latest record)."""
    deliveries: tuple[Mapping[str, str], ...] = ()
    """Every record of it on this channel (a resend after a crash adds one)."""
    answers: tuple[Source, ...] = ()
    """People's messages on this channel since its last post: what this
    notice replies to."""
    trail: tuple[Said, ...] = ()
    """The thread's messages on this channel so far, oldest first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Question(Notice):
    call_id: str
    text: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequest(Notice):
    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    deciders: Deciders
    """Who decides, as the rule applies it (approvers, the starter, the admins)."""
    named: tuple[str, ...]
    """The deciders as people read them (names, `group ops`, addresses)."""
    may_decide: Callable[[Source], bool] = field(compare=False, repr=False)
    """The core's rule for this call: whether that person may decide it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(Notice):
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure(Notice):
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Notice):
    request: Question | ApprovalRequest
    """What was asked; `request.delivered` is where it was posted."""
    kind: Literal["answered", "approved", "rejected"]
    by: Source
    text: str | None = None
    """The answer, or the reason given with a decision."""


def find_call(events: Sequence[Event], call_id: str) -> int | None:
    """The seq of the call `call_id`, or None."""
    for seq in range(len(events) - 1, -1, -1):
        e = events[seq]
        if isinstance(e, ToolCall) and e.call_id == call_id:
            return seq
    return None


def build_notice(
    thread_id: str,
    events: Sequence[Event],
    seq: int,
    channel: str,
    people: People,
    *,
    fresh: bool = True,
) -> Notice | None:
    """The notice that delivers `events[seq]` through `channel`, or None if
    that event is nothing a channel delivers."""
    if not 0 <= seq < len(events):
        return None
    origin = next((e.source for e in events if isinstance(e, UserMessage)), None)
    if origin is None:
        return None
    deliveries: list[Mapping[str, str]] = []
    trail: list[Said] = []
    answers: list[Source] = []
    for e in events:
        if isinstance(e, UserMessage | HumanResponse) and e.source.channel == channel:
            trail.append(Said(True, e.source.refs))
            answers.append(e.source)
        elif isinstance(e, Delivered) and e.channel == channel:
            trail.append(Said(False, e.refs))
            if e.of_seq == seq:
                deliveries.append(e.refs)
            if not isinstance(events[e.of_seq], HumanResponse | Approval):
                answers = []  # an outcome's update replies to nobody
    common: dict[str, Any] = {
        "thread_id": thread_id,
        "seq": seq,
        "origin": origin,
        "channel": channel,
        "fresh": fresh,
        "delivered": deliveries[-1] if deliveries else None,
        "deliveries": tuple(deliveries),
        "answers": tuple(answers),
        "trail": tuple(trail),
    }
    event = events[seq]
    if isinstance(event, ToolCall) and event.name == HUMAN_INPUT:
        options = event.arguments.get("options")
        return Question(
            **common,
            call_id=event.call_id,
            text=str(event.arguments.get("question", "")),
            options=tuple(str(o) for o in options) if isinstance(options, list) else (),
        )
    if isinstance(event, ToolCall) and event.requires_approval:
        decide = deciders(people, event.approvers, origin)
        named = decide.specs if decide.by == "approvers" else ()

        def may_decide(source: Source) -> bool:
            return (
                may_settle(
                    people,
                    events,
                    kind="approval",
                    call_seq=seq,
                    approvers=event.approvers,
                    self_approval=event.self_approval is not False,
                    source=source,
                )
                is None
            )

        return ApprovalRequest(
            **common,
            call_id=event.call_id,
            tool=event.name,
            arguments=event.arguments,
            deciders=decide,
            named=tuple(people.describe(named)),
            may_decide=may_decide,
        )
    if isinstance(event, AssistantMessage):
        return Answer(**common, text=event.text)
    if isinstance(event, Error):
        return Failure(**common, message=event.message)
    if isinstance(event, HumanResponse | Approval):
        call_seq = find_call(events[:seq], event.call_id)
        request = (
            build_notice(thread_id, events[:seq], call_seq, channel, people)
            if call_seq is not None
            else None
        )
        if not isinstance(request, Question | ApprovalRequest):
            return None
        if isinstance(event, HumanResponse):
            return Outcome(
                **common, request=request, kind="answered", by=event.source, text=event.text
            )
        return Outcome(
            **common,
            request=request,
            kind="approved" if event.approved else "rejected",
            by=event.source,
            text=event.comment,
        )
    return None


class Outbound(Protocol):
    """A channel that delivers notices to people."""

    async def deliver(self, notice: Notice) -> Delivery:
        """Post the notice where the thread's people are; say where it landed.
        Raise if the platform is down or refused: the runner tries again later."""
        ...


# -- reading a person's free-text reply ---------------------------------------

_APPROVE = {"approve", "approved", "yes", "y", "ok", "lgtm"}
_REJECT = {"reject", "rejected", "no", "n", "deny", "denied"}
_FIRST_WORD = re.compile(r"^\s*([A-Za-z]+)[\s.,:;!-]*(.*)$", re.DOTALL)


def pick_option(text: str, options: Sequence[str]) -> tuple[str, str | None]:
    """An answer to a question; a number or the text of an option picks it."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if options and first.rstrip(".)").isdigit():
        n = int(first.rstrip(".)"))
        if 1 <= n <= len(options):
            return options[n - 1], options[n - 1]
    for option in options:
        if first.lower() == option.lower():
            return option, option
    return text, None


def read_decision(text: str) -> tuple[bool, str | None] | None:
    """approve/yes → (True, rest); reject/no → (False, the reason); else None."""
    found = _FIRST_WORD.match(text.strip())
    if not found:
        return None
    word, rest = found.group(1).lower(), found.group(2).strip()
    if word in _APPROVE:
        return True, rest or None
    if word in _REJECT:
        return False, rest or None
    return None
