"""The next step of a thread: a pure function of its derived state.

The runner asks after every append and does what it is told: call the model,
run a tool, record an interrupted one, ask a person, stop on the step limit,
deliver, wait or stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .thread import ENDED, OpenCall, Pending, Status, ThreadState, Timer

__all__ = [
    "CallModel",
    "Deliver",
    "Escalate",
    "Fail",
    "Fire",
    "Interrupted",
    "RunTool",
    "Step",
    "Stop",
    "Wait",
    "next_step",
]


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
class Fire:
    """A call's reminder, escalation or deadline is due."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Wait:
    pending: Pending


@dataclass(frozen=True, slots=True)
class Stop:
    status: Status


Step = CallModel | RunTool | Interrupted | Escalate | Fail | Deliver | Fire | Wait | Stop


def next_step(
    state: ThreadState,
    *,
    max_turns: int = 25,
    max_errors: int = 3,
    outbound: frozenset[str] = frozenset(),
    now: float = 0.0,
) -> Step:
    """Decide what the runner does next. `outbound` names the channels that
    can deliver to people: what is undelivered to one of them is delivered
    first. `now` (Unix time) is compared with the thread's timers: a due
    one fires before anything is delivered, so that a channel that is down
    never holds a deadline up."""
    if state.due is not None and state.due.at <= now:
        return Fire(state.due)
    for seq, channel in state.undelivered:
        if channel in outbound:
            return Deliver(seq, channel)
    for c in state.open_calls:
        if c.runnable:
            return Interrupted(c) if c.started else RunTool(c)
    if state.pending is not None:
        return Wait(state.pending)
    if state.status in ENDED:
        return Stop(state.status)
    if state.consecutive_errors >= max_errors:
        return Escalate(
            f"I ran into {state.consecutive_errors} errors in a row "
            f"(the last: {state.last_error}). How should I continue?"
        )
    if state.turns_since_human >= max_turns:
        return Fail(f"step limit: {max_turns} model turns without a person; stopped")
    return CallModel()
