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

__all__ = [
    "HUMAN_INPUT",
    "Fold",
    "Pending",
    "Resolution",
    "Status",
    "ThreadState",
    "derive",
    "waiting_summary",
]

HUMAN_INPUT = "request_human_input"
"""The built-in tool whose result is a person's answer."""

Status = Literal[
    "running", "waiting_for_human", "waiting_for_approval", "waiting_for_result", "done", "failed"
]
STATUSES: tuple[Status, ...] = (
    "running",
    "waiting_for_human",
    "waiting_for_approval",
    "waiting_for_result",
    "done",
    "failed",
)


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
    started: bool = False
    deferred: bool = False

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


class Resolution(NamedTuple):
    """How a call was settled, for "already answered by ..." replies: by an
    answer, a decision (an approved call keeps its approver after it runs),
    or a result."""

    kind: Literal["result", "answer", "approved", "rejected"]
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
    undelivered: tuple[int, ...] = ()
    """Seqs of questions, approval requests, settlements of posted ones and
    answers not yet delivered to the thread's origin channel."""
    last_error: str | None = None


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
        self._ended: Literal["answer", "failed"] | None = None
        # The closing answer or failure, for delivery; and what was delivered.
        self._closing: int | None = None
        self._delivered: set[int] = set()
        # Settlements of posted questions and approvals, for the post to
        # say so: due until delivered.
        self._due: frozenset[int] = frozenset()
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
                    self._resolve(e.call_id, Resolution("result", seq, e.source, c.seq))
                batch = self._batch_of.pop(e.call_id, -1)
                if e.is_error:
                    if batch not in self._failed_batches:
                        self._failed_batches.add(batch)
                        self.errors += 1
                    self.last_error = str(e.output)
                else:
                    self.errors = 0
            case Approval():
                c = self.open_calls.get(e.call_id)
                if c is not None and e.approved:
                    self.open_calls[e.call_id] = OpenCall(c.call, c.seq, e)
                    self._resolve(e.call_id, Resolution("approved", seq, e.source, c.seq))
                elif c is not None:
                    del self.open_calls[e.call_id]
                    self._batch_of.pop(e.call_id, None)
                    self._resolve(e.call_id, Resolution("rejected", seq, e.source, c.seq))
                if c is not None and c.seq in self._delivered:
                    self._due |= {seq}
                self.errors = self.turns = 0
            case ToolStarted():
                if (c := self.open_calls.get(e.call_id)) is not None:
                    self.open_calls[e.call_id] = OpenCall(c.call, c.seq, c.approval, started=True)
            case Delivered():
                if self._delivered_shared:
                    self._delivered, self._delivered_shared = set(self._delivered), False
                self._delivered.add(e.of_seq)
                if e.of_seq in self._due:
                    self._due -= {e.of_seq}
                else:
                    self._settled_before_recorded(e.of_seq)
            case HumanResponse():
                if (c := self.open_calls.pop(e.call_id, None)) is not None:
                    self._resolve(e.call_id, Resolution("answer", seq, e.source, c.seq))
                    if c.seq in self._delivered:
                        self._due |= {seq}
                self._batch_of.pop(e.call_id, None)
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
                    self.open_calls[e.call_id] = OpenCall(c.call, c.seq, c.approval, deferred=True)
            case Error():
                self.errors += 1
                self.last_error = e.message
                if e.fatal:
                    self._ended = "failed"
                    self._closing = seq
        self._previous_was_call = is_call

    def _settled_before_recorded(self, call_seq: int) -> None:
        """A post recorded after its call was settled (the answer came
        between the post and its record): the settlement is due to it too.
        Only settlements later than the call are looked at, newest first."""
        for r in reversed(self.resolved.values()):
            if r.seq < call_seq:
                return
            if r.call_seq == call_seq and r.kind != "result" and r.seq not in self._delivered:
                self._due |= {r.seq}
                return

    def _resolve(self, call_id: str, resolution: Resolution) -> None:
        if self._resolved_shared:
            self.resolved, self._resolved_shared = dict(self.resolved), False
        self.resolved[call_id] = resolution

    def state(self) -> ThreadState:
        calls = tuple(self.open_calls.values())
        pending: Pending | None = None
        status: Status
        if any(c.runnable for c in calls):
            status = "running"
        elif calls:
            first = calls[0]
            kind = first.waits_for
            assert kind is not None  # no call is runnable: each waits for something
            pending = Pending(
                call_id=first.call.call_id,
                kind=kind,
                name=first.call.name,
                arguments=first.call.arguments,
                seq=first.seq,
                approvers=first.call.approvers,
            )
            status = _WAITING[kind]
        elif self._ended == "answer":
            status = "done"
        elif self._ended == "failed":
            status = "failed"
        else:
            status = "running"

        self._resolved_shared = True  # the state holds it from now on
        # Only what is still relevant is delivered: open questions and
        # approval requests, the settlements of those that were posted, and
        # the closing answer or failure.
        wanted = [c.seq for c in calls if c.call.name == HUMAN_INPUT or c.call.requires_approval]
        if self._due:
            wanted = sorted([*wanted, *self._due])
        if status in ("done", "failed") and self._closing is not None:
            wanted.append(self._closing)
        return ThreadState(
            status=status,
            pending=pending,
            open_calls=calls,
            resolved=self.resolved,
            consecutive_errors=self.errors,
            turns_since_human=self.turns,
            last_seq=self.n - 1,
            origin=self.origin,
            title=self.title,
            undelivered=tuple(s for s in wanted if s not in self._delivered),
            last_error=self.last_error,
        )


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
