"""What a thread's events mean: its derived state, and the next step.

Both functions are pure. The runner calls `derive` and `next_step` after every
append; tests of the agent's logic are tests of these over event lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
    "CallModel",
    "Deliver",
    "Escalate",
    "Fail",
    "Interrupted",
    "Pending",
    "Resolution",
    "RunTool",
    "Status",
    "Step",
    "Stop",
    "ThreadState",
    "Wait",
    "derive",
    "next_step",
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


@dataclass(frozen=True, slots=True)
class OpenCall:
    """A tool call without an outcome yet."""

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
    def runnable(self) -> bool:
        if self.call.name == HUMAN_INPUT or self.deferred:
            return False
        return not self.call.requires_approval or self.approval is not None


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a call was settled, for "already answered by ..." replies."""

    kind: Literal["result", "answer", "approved", "rejected"]
    seq: int
    source: Source | None


@dataclass(frozen=True)
class ThreadState:
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
    undelivered: tuple[int, ...] = field(default=())
    """Seqs of questions, approval requests and answers not yet delivered to
    the thread's origin channel."""
    last_error: str | None = None


_WAITING: dict[str, Status] = {
    "question": "waiting_for_human",
    "approval": "waiting_for_approval",
    "result": "waiting_for_result",
}


def _pending_kind(c: OpenCall) -> Literal["question", "approval", "result"]:
    if c.call.name == HUMAN_INPUT:
        return "question"
    if c.deferred:
        return "result"
    return "approval"


def _title(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 80 else line[:79] + "…"


def derive(events: Sequence[Event]) -> ThreadState:
    """Fold a thread's events into its state."""
    open_calls: dict[str, OpenCall] = {}
    resolved: dict[str, Resolution] = {}
    errors = 0
    turns = 0
    last_error: str | None = None
    origin: Source | None = None
    title = ""
    ended: Literal["answer", "failed"] | None = None
    # Events a channel should deliver, and those it did.
    deliverable: list[int] = []
    delivered: set[int] = set()
    previous: Event | None = None
    # A model turn whose calls fail counts as one error, however many calls
    # it made.
    batch = 0
    batch_of: dict[str, int] = {}
    failed_batches: set[int] = set()

    for seq, e in enumerate(events):
        match e:
            case UserMessage():
                if origin is None:
                    origin, title = e.source, _title(e.text)
                errors = turns = 0
                ended = None
            case AssistantMessage():
                turns += 1
                ended = "answer"
                deliverable.append(seq)
            case ToolCall():
                if not isinstance(previous, ToolCall):
                    turns += 1
                    batch += 1
                batch_of[e.call_id] = batch
                open_calls[e.call_id] = OpenCall(e, seq)
                ended = None
                if e.name == HUMAN_INPUT or e.requires_approval:
                    deliverable.append(seq)
            case ToolStarted():
                if (c := open_calls.get(e.call_id)) is not None:
                    open_calls[e.call_id] = OpenCall(c.call, c.seq, c.approval, started=True)
            case ToolDeferred():
                if (c := open_calls.get(e.call_id)) is not None:
                    open_calls[e.call_id] = OpenCall(c.call, c.seq, c.approval, deferred=True)
            case ToolResult():
                if open_calls.pop(e.call_id, None) is not None:
                    resolved[e.call_id] = Resolution("result", seq, e.source)
                if e.is_error:
                    b = batch_of.get(e.call_id, -1)
                    if b not in failed_batches:
                        failed_batches.add(b)
                        errors += 1
                    last_error = str(e.output)
                else:
                    errors = 0
            case HumanResponse():
                if open_calls.pop(e.call_id, None) is not None:
                    resolved[e.call_id] = Resolution("answer", seq, e.source)
                errors = turns = 0
            case Approval():
                c = open_calls.get(e.call_id)
                if c is not None and e.approved:
                    open_calls[e.call_id] = OpenCall(c.call, c.seq, e)
                    resolved[e.call_id] = Resolution("approved", seq, e.source)
                elif c is not None:
                    del open_calls[e.call_id]
                    resolved[e.call_id] = Resolution("rejected", seq, e.source)
                errors = turns = 0
            case Delivered():
                delivered.add(e.of_seq)
            case Error():
                errors += 1
                last_error = e.message
                if e.fatal:
                    ended = "failed"
                    deliverable.append(seq)
        previous = e

    calls = tuple(open_calls.values())
    pending: Pending | None = None
    status: Status
    if any(c.runnable for c in calls):
        status = "running"
    elif calls:
        first = calls[0]
        kind = _pending_kind(first)
        pending = Pending(
            call_id=first.call.call_id,
            kind=kind,
            name=first.call.name,
            arguments=first.call.arguments,
            seq=first.seq,
            approvers=first.call.approvers,
        )
        status = _WAITING[kind]
    elif ended == "answer":
        status = "done"
    elif ended == "failed":
        status = "failed"
    else:
        status = "running"

    # Only what is still relevant is delivered: open questions and approval
    # requests, and the closing answer or failure.
    open_seqs = {c.seq for c in calls}
    tail = deliverable[-1:] if status in ("done", "failed") else []
    undelivered = tuple(
        s for s in deliverable if s not in delivered and (s in open_seqs or s in tail)
    )
    return ThreadState(
        status=status,
        pending=pending,
        open_calls=calls,
        resolved=resolved,
        consecutive_errors=errors,
        turns_since_human=turns,
        last_seq=len(events) - 1,
        origin=origin,
        title=title,
        undelivered=undelivered,
        last_error=last_error,
    )


# -- the next step -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallModel:
    pass


@dataclass(frozen=True, slots=True)
class RunTool:
    call: OpenCall


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A non-idempotent tool started and never reported: do not run it again."""

    call: OpenCall


@dataclass(frozen=True, slots=True)
class Escalate:
    """Too many errors in a row: ask a person instead of looping."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    seq: int
    channel: str


@dataclass(frozen=True, slots=True)
class Wait:
    pending: Pending


@dataclass(frozen=True, slots=True)
class Stop:
    status: Status


Step = CallModel | RunTool | Interrupted | Escalate | Fail | Deliver | Wait | Stop


def next_step(
    state: ThreadState,
    *,
    max_turns: int = 25,
    max_errors: int = 3,
    outbound: frozenset[str] = frozenset(),
) -> Step:
    """Decide what the runner does next. `outbound` names the channels that
    can deliver to people; a thread that came from one of them gets its
    questions and answers delivered there."""
    if state.undelivered and state.origin is not None and state.origin.channel in outbound:
        return Deliver(state.undelivered[0], state.origin.channel)
    for c in state.open_calls:
        if c.runnable:
            return Interrupted(c) if c.started else RunTool(c)
    if state.pending is not None:
        return Wait(state.pending)
    if state.status in ("done", "failed"):
        return Stop(state.status)
    if state.consecutive_errors >= max_errors:
        return Escalate(
            f"I ran into {state.consecutive_errors} errors in a row "
            f"(the last: {state.last_error}). How should I continue?"
        )
    if state.turns_since_human >= max_turns:
        return Fail(f"step limit: {max_turns} model turns without a person; stopped")
    return CallModel()
