"""What a thread's events mean: its derived state.

`derive` is pure (and `Fold` lets a caller apply only new events); the next
step is decided from its result in `bot.step`. Tests of the agent's logic are
tests of these over event lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

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
    ToolDeferred,
    ToolResult,
    ToolStarted,
    UserMessage,
    by_deadline,
)

__all__ = [
    "HUMAN_INPUT",
    "Fold",
    "Pending",
    "Resolution",
    "Status",
    "ThreadState",
    "Timer",
    "derive",
    "waiting_summary",
]

HUMAN_INPUT = "request_human_input"
"""The built-in tool whose result is a person's answer."""

Status = Literal[
    "running",
    "waiting_for_human",
    "waiting_for_approval",
    "waiting_for_result",
    "done",
    "failed",
    "cancelled",
]
ENDED: tuple[Status, ...] = ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Pending:
    """What the thread waits for: a person's answer, a decision or a result."""

    call_id: str
    kind: Literal["question", "approval", "result"]
    name: str
    arguments: dict[str, Any]
    seq: int
    """The seq of the `tool_call` event."""
    approvers: tuple[str, ...] = ()
    """The call's own approvers."""
    escalated: tuple[str, ...] = ()
    """Those it was escalated to."""
    approved_by: tuple[Source, ...] = ()
    """Approvals so far, when more than one is required."""
    approvals_required: int = 1
    remind_at: float | None = None
    """When the reminder is due, if one is still to come (Unix time)."""
    deadline_at: float | None = None

    @property
    def question(self) -> str | None:
        q = self.arguments.get("question")
        return str(q) if self.kind == "question" and q is not None else None

    @property
    def options(self) -> list[str]:
        opts = self.arguments.get("options") if self.kind == "question" else None
        return [str(o) for o in opts] if isinstance(opts, list) else []


class OpenCall(NamedTuple):
    """A tool call without an outcome yet. (A tuple: a long thread makes
    thousands of these while it is read.)"""

    call: ToolCall
    seq: int
    approval: Approval | None = None
    """The approval that let it run (the last one, when several were needed)."""
    started: bool = False
    deferred: bool = False
    approvals: tuple[Approval, ...] = ()
    """Approvals so far, while more are required."""
    reminded: bool = False
    escalated: tuple[str, ...] = ()
    """Who it was escalated to."""
    nudges: tuple[tuple[int, tuple[str, ...]], ...] = ()
    """Its reminder and escalation: their seqs, and the channels besides the
    thread's own that each goes to."""

    def late_at(self) -> float | None:
        """When it is late if still waiting for a person: its first timer,
        fired or not."""
        t = self.call.timers
        if t is None or self.waits_for not in ("question", "approval"):
            return None
        spans = [x for x in (t.remind_after, t.escalate_after, t.deadline) if x is not None]
        return self.call.ts.timestamp() + min(spans) if spans else None

    def timers(self) -> list[Timer]:
        """What is still to happen if nobody settles it, soonest first."""
        t = self.call.timers
        if t is None or self.waits_for not in ("question", "approval"):
            return []
        start = self.call.ts.timestamp()
        out = []
        if t.remind_after is not None and not self.reminded:
            out.append(Timer(start + t.remind_after, "remind", self.call.call_id))
        if t.escalate_after is not None and t.escalate_to and not self.escalated:
            out.append(Timer(start + t.escalate_after, "escalate", self.call.call_id))
        if t.deadline is not None:
            out.append(Timer(start + t.deadline, "deadline", self.call.call_id))
        return sorted(out)

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments to run with: the approver's edit, else the model's."""
        if self.approval is not None and self.approval.arguments is not None:
            return self.approval.arguments
        return self.call.arguments

    @property
    def waits_for(self) -> Literal["question", "approval", "result"] | None:
        """What a person or system must supply before the call can settle;
        None when threadbot itself can run it."""
        if self.call.name == HUMAN_INPUT:
            return "question"
        if self.deferred:
            return "result"
        if self.call.requires_approval and self.approval is None:
            return "approval"
        return None

    @property
    def runnable(self) -> bool:
        return self.waits_for is None


class Timer(NamedTuple):
    """Something due on a call if nobody settles it first."""

    at: float
    """Unix time."""
    kind: Literal["deadline", "escalate", "remind"]
    call_id: str


class Resolution(NamedTuple):
    """How a call was settled, for "already answered by ..." replies: by an
    answer, a decision (an approved call keeps its approver after it runs),
    a reply instead of a decision, a result, or the thread's cancellation."""

    kind: Literal["result", "answer", "approved", "rejected", "responded", "cancelled"]
    seq: int
    source: Source | None
    call_seq: int = -1
    """The seq of the call settled."""


class ThreadState(NamedTuple):
    """What a thread's events mean at one point. (A tuple: one is made at
    every append.)"""

    status: Status
    pending: Pending | None
    open_calls: tuple[OpenCall, ...]
    resolved: dict[str, Resolution]
    consecutive_errors: int
    turns_since_human: int
    """Model turns since a person last spoke: bounded by the step limit."""
    last_seq: int
    origin: Source | None
    title: str
    undelivered: tuple[tuple[int, str], ...] = ()
    """(seq, channel) of what is still to be delivered: questions, approval
    requests, reminders and escalations (to the thread's own channel and to
    the channels their people are reached on), the settlements of those that
    were posted (to where they were posted), and the closing answer."""
    last_error: str | None = None
    due: Timer | None = None
    """The next timer of a call waiting for a person."""
    overdue_at: float | None = None
    """When the earliest of them became (or becomes) late: its first timer."""
    waiting: tuple[Pending, ...] = ()
    """Every call waiting for a person or a result, in the order they were
    made (`pending` is the first)."""


_WAITING: dict[str, Status] = {
    "question": "waiting_for_human",
    "approval": "waiting_for_approval",
    "result": "waiting_for_result",
}


def _title(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 80 else line[:79] + "…"


class Fold:
    """The state of a thread, built one event at a time.

    `derive` is the pure entry point; the fold itself lets a caller that
    already holds a thread's state apply only the events appended since,
    instead of reading the whole thread again.
    """

    __slots__ = (
        "_batch",
        "_batch_of",
        "_closing",
        "_delivered",
        "_delivered_shared",
        "_due",
        "_ended",
        "_failed_batches",
        "_nudge_of",
        "_previous_was_call",
        "_resolved_shared",
        "errors",
        "last_error",
        "n",
        "open_calls",
        "origin",
        "resolved",
        "title",
        "turns",
    )

    def __init__(self) -> None:
        self.n = 0
        self.open_calls: dict[str, OpenCall] = {}
        self.resolved: dict[str, Resolution] = {}
        self.errors = 0
        self.turns = 0
        self.last_error: str | None = None
        self.origin: Source | None = None
        self.title = ""
        self._ended: Literal["answer", "failed", "cancelled"] | None = None
        # The closing answer, failure or cancellation, for delivery; and
        # where each seq was delivered.
        self._closing: int | None = None
        self._delivered: dict[int, frozenset[str]] = {}
        # Settlements of posted questions and approvals, for the posts to
        # say so: (seq, channel), due until delivered.
        self._due: frozenset[tuple[int, str]] = frozenset()
        # A reminder's or escalation's seq → the seq of its call.
        self._nudge_of: dict[int, int] = {}
        # `resolved` and `_delivered` grow with the thread: a copy of the fold,
        # or a state taken from it, shares them until one side adds to them.
        self._resolved_shared = False
        self._delivered_shared = False
        self._previous_was_call = False
        # A model turn whose calls fail counts as one error, however many
        # calls it made.
        self._batch = 0
        self._batch_of: dict[str, int] = {}
        self._failed_batches: set[int] = set()

    def copy(self) -> Fold:
        other = Fold.__new__(Fold)
        other.n = self.n
        other.open_calls = self.open_calls.copy()
        other.resolved = self.resolved
        other.errors = self.errors
        other.turns = self.turns
        other.last_error = self.last_error
        other.origin = self.origin
        other.title = self.title
        other._ended = self._ended
        other._closing = self._closing
        other._delivered = self._delivered
        other._due = self._due
        other._nudge_of = self._nudge_of.copy()
        self._resolved_shared = other._resolved_shared = True
        self._delivered_shared = other._delivered_shared = True
        other._previous_was_call = self._previous_was_call
        other._batch = self._batch
        other._batch_of = self._batch_of.copy()
        other._failed_batches = self._failed_batches.copy()
        return other

    def extend(self, events: Iterable[Event]) -> Fold:
        for e in events:
            self.apply(e)
        return self

    def apply(self, e: Event) -> None:
        seq = self.n
        self.n += 1
        is_call = False
        match e:
            # Most frequent first: a case is an isinstance test.
            case ToolCall():
                is_call = True
                if not self._previous_was_call:
                    self.turns += 1
                    self._batch += 1
                self._batch_of[e.call_id] = self._batch
                self.open_calls[e.call_id] = OpenCall(e, seq)
                self._ended = None
            case ToolResult():
                # An approved call stays settled by its approver.
                if (
                    c := self.open_calls.pop(e.call_id, None)
                ) is not None and e.call_id not in self.resolved:
                    self._resolve(c, Resolution("result", seq, e.source, c.seq))
                batch = self._batch_of.pop(e.call_id, -1)
                if e.is_error:
                    if batch not in self._failed_batches:
                        self._failed_batches.add(batch)
                        self.errors += 1
                    self.last_error = str(e.output)
                else:
                    self.errors = 0
            case Approval():
                self._decided(e, seq)
            case ToolStarted():
                if (c := self.open_calls.get(e.call_id)) is not None:
                    self.open_calls[e.call_id] = c._replace(started=True)
            case Delivered():
                self._record_delivery(e.of_seq, e.channel)
            case HumanResponse():
                if (c := self.open_calls.pop(e.call_id, None)) is not None:
                    self._resolve(c, Resolution("answer", seq, e.source, c.seq))
                    if c.call.external:
                        self._ended, self._closing = "answer", seq
                self._batch_of.pop(e.call_id, None)
                if not by_deadline(e.source):
                    self.errors = self.turns = 0
            case UserMessage():
                if self.origin is None:
                    self.origin, self.title = e.source, _title(e.text)
                self.errors = self.turns = 0
                self._ended = None
            case AssistantMessage():
                self.turns += 1
                self._ended = "answer"
                self._closing = seq
            case ToolDeferred():
                if (c := self.open_calls.get(e.call_id)) is not None:
                    self.open_calls[e.call_id] = c._replace(deferred=True)
            case Reminder() | Escalated():
                if (c := self.open_calls.get(e.call_id)) is not None:
                    self._nudge_of[seq] = c.seq
                    if isinstance(e, Reminder):
                        c = c._replace(reminded=True)
                    else:
                        c = c._replace(escalated=c.escalated + e.to)
                    nudge = (seq, tuple(e.reach or ()))
                    self.open_calls[e.call_id] = c._replace(nudges=(*c.nudges, nudge))
            case Cancelled():
                for call_id, c in list(self.open_calls.items()):
                    del self.open_calls[call_id]
                    self._batch_of.pop(call_id, None)
                    if not c.started:
                        # A started tool's outcome is unknown: its result,
                        # if it comes, is still recorded.
                        self._resolve(c, Resolution("cancelled", seq, e.source, c.seq))
                self._ended = "cancelled"
                self._closing = seq
            case Error():
                self.errors += 1
                self.last_error = e.message
                if e.fatal:
                    self._ended = "failed"
                    self._closing = seq
        self._previous_was_call = is_call

    def _decided(self, e: Approval, seq: int) -> None:
        c = self.open_calls.get(e.call_id)
        if c is None:
            self.errors = self.turns = 0
            return
        if e.approved:
            approvals = (*c.approvals, e)
            if len(approvals) < (c.call.approvals_required or 1) and not by_deadline(e.source):
                self.open_calls[e.call_id] = c._replace(approvals=approvals)
            elif c.call.external:
                # Nothing runs: the decision is the thread's outcome.
                del self.open_calls[e.call_id]
                self._batch_of.pop(e.call_id, None)
                self._resolve(c, Resolution("approved", seq, e.source, c.seq))
                self._ended, self._closing = "answer", seq
            else:
                self.open_calls[e.call_id] = c._replace(approval=e, approvals=approvals)
                self._resolve(c, Resolution("approved", seq, e.source, c.seq))
        else:
            del self.open_calls[e.call_id]
            self._batch_of.pop(e.call_id, None)
            kind: Literal["rejected", "responded"] = "responded" if e.responded else "rejected"
            self._resolve(c, Resolution(kind, seq, e.source, c.seq))
            if c.call.external:
                self._ended, self._closing = "answer", seq
        if not by_deadline(e.source):
            self.errors = self.turns = 0

    def _posted_on(self, c: OpenCall) -> set[str]:
        """The channels its request, reminder or escalation was posted on."""
        out: set[str] = set()
        for s in (c.seq, *(n for n, _ in c.nudges)):
            out |= self._delivered.get(s, frozenset())
        return out

    def _record_delivery(self, of_seq: int, channel: str) -> None:
        if self._delivered_shared:
            self._delivered, self._delivered_shared = dict(self._delivered), False
        self._delivered[of_seq] = self._delivered.get(of_seq, frozenset()) | {channel}
        if (of_seq, channel) in self._due:
            self._due -= {(of_seq, channel)}
        else:
            self._settled_before_recorded(self._nudge_of.get(of_seq, of_seq), channel)

    def _settled_before_recorded(self, call_seq: int, channel: str) -> None:
        """A post recorded after its call was settled (the answer came
        between the post and its record): the settlement is due to it too.
        Only settlements later than the call are looked at, newest first."""
        for r in reversed(self.resolved.values()):
            if r.seq < call_seq:
                return
            if (
                r.call_seq == call_seq
                and r.kind != "result"
                and channel not in self._delivered.get(r.seq, ())
            ):
                self._due |= {(r.seq, channel)}
                return

    def _resolve(self, c: OpenCall, resolution: Resolution) -> None:
        if self._resolved_shared:
            self.resolved, self._resolved_shared = dict(self.resolved), False
        self.resolved[c.call.call_id] = resolution
        if resolution.kind != "result" and (posted := self._posted_on(c)):
            self._due |= {(resolution.seq, ch) for ch in posted}

    def _pending(self, c: OpenCall) -> Pending:
        kind = c.waits_for
        assert kind is not None
        t = c.call.timers
        start = c.call.ts.timestamp()
        return Pending(
            call_id=c.call.call_id,
            kind=kind,
            name=c.call.name,
            arguments=c.call.arguments,
            seq=c.seq,
            approvers=c.call.approvers,
            escalated=c.escalated,
            approved_by=tuple(a.source for a in c.approvals),
            approvals_required=c.call.approvals_required or 1,
            remind_at=(
                start + t.remind_after
                if t and t.remind_after is not None and not c.reminded and kind != "result"
                else None
            ),
            deadline_at=start + t.deadline
            if t and t.deadline is not None and kind != "result"
            else None,
        )

    def state(self) -> ThreadState:
        calls = tuple(self.open_calls.values())
        waiting: tuple[Pending, ...] = ()
        due: Timer | None = None
        status: Status
        if any(c.runnable for c in calls):
            status = "running"
        elif calls:
            waiting = tuple(self._pending(c) for c in calls)
            status = _WAITING[waiting[0].kind]
        elif self._ended == "answer":
            status = "done"
        elif self._ended == "failed":
            status = "failed"
        elif self._ended == "cancelled":
            status = "cancelled"
        else:
            status = "running"
        overdue_at: float | None = None
        for c in calls:
            if c.call.timers is None:
                continue
            if (timers := c.timers()) and (due is None or timers[0] < due):
                due = timers[0]
            if (late := c.late_at()) is not None and (overdue_at is None or late < overdue_at):
                overdue_at = late

        self._resolved_shared = True  # the state holds it from now on
        return ThreadState(
            status=status,
            pending=waiting[0] if waiting else None,
            open_calls=calls,
            resolved=self.resolved,
            consecutive_errors=self.errors,
            turns_since_human=self.turns,
            last_seq=self.n - 1,
            origin=self.origin,
            title=self.title,
            undelivered=self._undelivered(calls, status),
            last_error=self.last_error,
            due=due,
            waiting=waiting,
            overdue_at=overdue_at,
        )

    def _undelivered(
        self, calls: tuple[OpenCall, ...], status: Status
    ) -> tuple[tuple[int, str], ...]:
        """Only what is still relevant is delivered: open questions and
        approval requests and their reminders and escalations, the
        settlements of those that were posted, and the closing answer,
        failure or cancellation."""
        home = self.origin.channel if self.origin is not None else ""
        wanted: list[tuple[int, str]] = []
        for c in calls:
            if c.call.name == HUMAN_INPUT or c.call.requires_approval:
                wanted.append((c.seq, home))
                wanted.extend((c.seq, ch) for ch in c.call.reach or ())
                # Once settled, a reminder no longer matters; while open, it does.
                for n, reach in c.nudges:
                    wanted.append((n, home))
                    wanted.extend((n, ch) for ch in reach)
        if self._due:
            wanted.extend(self._due)
        if status in ENDED and self._closing is not None:
            wanted.append((self._closing, home))
        delivered = self._delivered
        out = [(s, ch) for s, ch in dict.fromkeys(wanted) if ch not in delivered.get(s, ())]
        return tuple(sorted(out)) if len(out) > 1 else tuple(out)


def waiting_summary(state: ThreadState) -> str:
    """What the thread waits for, in a few words; empty if nothing."""
    p = state.pending
    if p is None:
        return ""
    if p.kind == "question":
        q = " ".join((p.question or "").split())
        return f"an answer: {q if len(q) <= 120 else q[:119] + '…'}"
    if p.kind == "approval":
        return f"approval of {p.name}"
    return f"the result of {p.name}"


def derive(events: Iterable[Event]) -> ThreadState:
    """Fold a thread's events into its state."""
    return Fold().extend(events).state()
