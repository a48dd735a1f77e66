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
                     (by a click, a reply, another channel, the API, the
                     deadline): the posts should say so and offer nothing more
    FollowUp         nobody settled it in time: a reminder to the same
                     people, or an escalation to more
    Cancellation     someone cancelled the thread: its posts offer nothing
                     more, and the thread is told

A question or approval request (and its reminder and escalation) goes to
the thread's own channel (`home`: its conversation) and to each approver on
their own (`reach`: a direct message, a mail), on the thread's channel if it
reaches them, else on one that does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

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
    Source,
    ToolCall,
    UserMessage,
    by_deadline,
)
from .people import Deciders, People, Person, deciders, may_settle
from .thread import HUMAN_INPUT, derive

__all__ = [
    "Answer",
    "ApprovalRequest",
    "Cancellation",
    "Delivery",
    "Failure",
    "FollowUp",
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
    reach: tuple[Person, ...] = ()
    """The people to reach on this channel each on their own (a direct
    message, a mail), besides the thread's own conversation when `home`."""

    @property
    def home(self) -> bool:
        """Whether this goes to the thread's own channel (its Slack thread,
        its mail conversation)."""
        return self.channel == self.origin.channel


@dataclass(frozen=True, slots=True, kw_only=True)
class Question(Notice):
    call_id: str
    text: str
    options: tuple[str, ...] = ()
    deadline_at: float | None = None
    """When it is answered "no answer by the deadline" (Unix time)."""


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
    approvals_required: int = 1
    approved_by: tuple[Source, ...] = ()
    """Approvals so far, when more than one is required."""
    deadline_at: float | None = None
    on_deadline: str = "reject"


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
    kind: Literal["answered", "approved", "rejected", "responded", "cancelled"]
    by: Source
    text: str | None = None
    """The answer, the reason given with a decision, or the reply instead of one."""
    posts: tuple[Mapping[str, str], ...] = ()
    """Every post of the request, its reminder and escalation on this
    channel (their delivery records), for each to say so."""

    @property
    def by_deadline(self) -> bool:
        """Settled because nobody did in time."""
        return by_deadline(self.by)


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowUp(Notice):
    request: Question | ApprovalRequest
    """What still waits (as it stands: an escalation's people may decide it)."""
    kind: Literal["reminder", "escalation"]
    to: tuple[str, ...]
    """Who is reminded, or who it was escalated to: ids as the event names them."""
    named: tuple[str, ...]
    """The same, as people read them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancellation(Notice):
    by: Source
    reason: str | None = None
    requests: tuple[Outcome, ...] = ()
    """The posted questions and approval requests it settled, each with its
    posts on this channel."""


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
            if not isinstance(events[e.of_seq], HumanResponse | Approval | Cancelled):
                answers = []  # an outcome's update replies to nobody
    event = events[seq]
    reach: tuple[Person, ...] = ()
    if isinstance(event, ToolCall | Reminder | Escalated):
        reach = tuple(people.expand((event.reach or {}).get(channel, ())))
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
        "reach": reach,
    }
    match event:
        case ToolCall(name=name) if name == HUMAN_INPUT:
            return _question(common, event)
        case ToolCall(requires_approval=True):
            return _approval_request(common, events, seq, event, people, origin)
        case AssistantMessage():
            return Answer(**common, text=event.text)
        case Error():
            return Failure(**common, message=event.message)
        case HumanResponse() | Approval():
            request = _request(thread_id, events, seq, event.call_id, channel, people)
            if request is None:
                return None
            return _outcome(common, request, event, events, seq, channel)
        case Reminder() | Escalated():
            request = _request(thread_id, events, len(events), event.call_id, channel, people)
            if request is None:
                return None
            return FollowUp(
                **common,
                request=request,
                kind="reminder" if isinstance(event, Reminder) else "escalation",
                to=event.to,
                named=tuple(people.describe(event.to)),
            )
        case Cancelled():
            settled = []
            for call_id in _cancelled_by(events, seq):
                request = _request(thread_id, events, seq, call_id, channel, people)
                if request is not None:
                    outcome = _outcome(common, request, None, events, seq, channel)
                    if outcome.posts:
                        settled.append(outcome)
            return Cancellation(
                **common, by=event.source, reason=event.reason, requests=tuple(settled)
            )
    return None


def _timers_at(call: ToolCall) -> dict[str, Any]:
    t = call.timers
    if t is None or t.deadline is None:
        return {}
    return {"deadline_at": call.ts.timestamp() + t.deadline}


def _question(common: dict[str, Any], call: ToolCall) -> Question:
    options = call.arguments.get("options")
    return Question(
        **common,
        call_id=call.call_id,
        text=str(call.arguments.get("question", "")),
        options=tuple(str(o) for o in options) if isinstance(options, list) else (),
        **_timers_at(call),
    )


def _approval_request(
    common: dict[str, Any],
    events: Sequence[Event],
    seq: int,
    call: ToolCall,
    people: People,
    origin: Source,
) -> ApprovalRequest:
    escalated: tuple[str, ...] = ()
    approved_by: tuple[Source, ...] = ()
    for e in events[seq + 1 :]:
        if isinstance(e, Escalated) and e.call_id == call.call_id:
            escalated += e.to
        elif isinstance(e, Approval) and e.call_id == call.call_id and e.approved:
            approved_by += (e.source,)
    decide = deciders(people, call.approvers, origin, escalated)
    named = decide.specs if decide.by == "approvers" else ()
    required = call.approvals_required or 1

    def may_decide(source: Source) -> bool:
        return (
            may_settle(
                people,
                events,
                kind="approval",
                call_seq=seq,
                approvers=call.approvers,
                self_approval=call.self_approval is not False,
                source=source,
                escalated=escalated,
                approvals_required=required,
                approved_by=approved_by,
            )
            is None
        )

    return ApprovalRequest(
        **common,
        call_id=call.call_id,
        tool=call.name,
        arguments=call.arguments,
        deciders=decide,
        named=tuple(people.describe(named)),
        may_decide=may_decide,
        approvals_required=required,
        approved_by=approved_by if required > 1 else (),
        on_deadline=call.timers.on_deadline if call.timers else "reject",
        **_timers_at(call),
    )


def _request(
    thread_id: str,
    events: Sequence[Event],
    upto: int,
    call_id: str,
    channel: str,
    people: People,
) -> Question | ApprovalRequest | None:
    """The question or approval request of `call_id`, as it stood before `upto`."""
    call_seq = find_call(events[:upto], call_id)
    if call_seq is None:
        return None
    request = build_notice(thread_id, events[:upto], call_seq, channel, people)
    return request if isinstance(request, Question | ApprovalRequest) else None


def _outcome(
    common: dict[str, Any],
    request: Question | ApprovalRequest,
    event: HumanResponse | Approval | None,
    events: Sequence[Event],
    seq: int,
    channel: str,
) -> Outcome:
    """The outcome of `request` settled by `event` (None: by a cancellation)."""
    nudges = {
        i
        for i, e in enumerate(events[:seq])
        if isinstance(e, Reminder | Escalated) and e.call_id == request.call_id
    }
    nudges.add(request.seq)
    posts = tuple(
        e.refs
        for e in events
        if isinstance(e, Delivered) and e.channel == channel and e.of_seq in nudges
    )
    fields: dict[str, Any] = {**common, "request": request, "posts": posts}
    match event:
        case HumanResponse():
            return Outcome(**fields, kind="answered", by=event.source, text=event.text)
        case Approval(responded=True):
            return Outcome(**fields, kind="responded", by=event.source, text=event.comment)
        case Approval():
            kind: Literal["approved", "rejected"] = "approved" if event.approved else "rejected"
            return Outcome(**fields, kind=kind, by=event.source, text=event.comment)
    cancel = events[seq]
    assert isinstance(cancel, Cancelled)
    return Outcome(**fields, kind="cancelled", by=cancel.source, text=cancel.reason)


def _cancelled_by(events: Sequence[Event], seq: int) -> list[str]:
    """The calls the cancellation at `seq` settled, as the thread's state has them."""
    resolved = derive(events[: seq + 1]).resolved
    return [call_id for call_id, r in resolved.items() if r.kind == "cancelled" and r.seq == seq]


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
