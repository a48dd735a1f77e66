"""The events of a thread: the only state threadbot has.

A thread is an append-only list of these. Everything else (is it waiting, for
whom, for which call, how many errors in a row) is derived from the list by
`bot.thread.derive`. Events are frozen models: once made, an event is never
changed (its fields cannot be reassigned; the dicts it holds are left alone by
convention). One `TypeAdapter` reads and writes them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "DEADLINE",
    "Approval",
    "AssistantMessage",
    "Cancelled",
    "Delivered",
    "Error",
    "Escalated",
    "Event",
    "HumanResponse",
    "Reminder",
    "Source",
    "Timers",
    "ToolCall",
    "ToolDeferred",
    "ToolResult",
    "ToolStarted",
    "UserMessage",
    "by_deadline",
    "dump_event",
    "event_from_dict",
    "load_event",
    "load_events",
    "load_events_json",
]


def _now() -> datetime:
    return datetime.now(UTC)


class Source(BaseModel):
    """Who said something, and where: the audit trail of every human event."""

    model_config = ConfigDict(frozen=True)

    channel: str
    """`http`, `cli`, `slack`, `email`, `system`..."""
    user: str | None = None
    """The platform's id for the person (Slack user id, email address)."""
    name: str | None = None
    """A display name, when the platform gives one."""
    refs: dict[str, str] = Field(default_factory=dict)
    """Platform references: Slack channel and ts, email Message-ID."""
    auth: str | None = None
    """How the person was authenticated, never what a request claimed:
    `slack` (a signed request or the Socket Mode connection), `email:signed`
    (a reply to the signed address sent to them), `email:thread` (a mail
    routed by its headers: a message, never a decision), `email:from` (a new
    mail, known only by its From header), `session:email` or
    `session:slack` (the web page after sign-in), `token:ID` (an API token),
    `admin-token`, `operator` (loopback with no people configured), `cli`."""
    person: str | None = None
    """The people directory's id for them, when they are in it."""
    admin: bool | None = None
    """True when authenticated as an operator: may answer and decide anything."""
    member: bool | None = None
    """True when the channel vouches that they belong to this deployment (a
    member of the Slack workspace)."""
    by: str | None = None
    """Who acted, when an admin acted on `user`'s behalf."""

    def who(self) -> str:
        return self.name or self.user or self.channel

    def how(self) -> str:
        """Who, and how they were authenticated, for people to read."""
        who = self.who()
        if self.by:
            who = f"{who} (by {self.by})"
        return f"{who} via {self.auth}" if self.auth else who


DEADLINE = Source(channel="system", auth="deadline", name="the deadline")
"""Who settles a call whose deadline passed."""


def by_deadline(source: Source) -> bool:
    """Whether `source` is the deadline's (compared by what identifies it,
    which is much cheaper than comparing whole models)."""
    return source.auth == DEADLINE.auth and source.channel == DEADLINE.channel


class Timers(BaseModel):
    """What happens to a call nobody settles in time, copied from the tool's
    definition (or the operator's defaults) when the call was made. Seconds,
    counted from the call."""

    model_config = ConfigDict(frozen=True)

    remind_after: float | None = None
    """Remind the people who may settle it (once)."""
    escalate_after: float | None = None
    escalate_to: tuple[str, ...] = ()
    """Who may also settle it from `escalate_after` on, and is told so."""
    deadline: float | None = None
    on_deadline: Literal["reject", "approve", "fail"] = "reject"
    """An approval's fate at the deadline; a question is answered "no answer
    by the deadline" (or fails the thread with `fail`)."""


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True)

    ts: datetime = Field(default_factory=_now)
    key: str | None = None
    """The inbound delivery id (Slack event_id, email Message-ID, HTTP
    Idempotency-Key). Unique across the store: a redelivery is a no-op."""


class UserMessage(_Base):
    """A person said something that is not the answer to a pending question."""

    type: Literal["user_message"] = "user_message"
    text: str
    source: Source


class AssistantMessage(_Base):
    """The model's plain reply: the agent is done until someone writes again."""

    type: Literal["assistant_message"] = "assistant_message"
    text: str


class ToolCall(_Base):
    """The model (or threadbot itself, when it escalates) chose a tool."""

    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: dict[str, Any]
    text: str | None = None
    """What the model said alongside its calls; kept on the first call of a batch."""
    requires_approval: bool = False
    """Copied from the tool's definition when the call was made."""
    approvers: tuple[str, ...] = ()
    """Who may approve, copied from the tool's definition: people, `group:`s,
    Slack ids, addresses. Empty means the deployment's default approvers."""
    self_approval: bool | None = None
    """False when the person whose message led to the call may not approve
    it (four eyes), copied from the tool's definition."""
    approvals_required: int | None = None
    """How many different people must approve (one when absent)."""
    ruled: bool | None = None
    """Set when the tool's rule on the arguments decided whether the call
    needs approval: what it said."""
    timers: Timers | None = None
    reach: dict[str, tuple[str, ...]] | None = None
    """People to reach on channels other than the thread's own (channel →
    their ids), worked out when the call was made."""
    external: bool | None = None
    """Asked from outside (an MCP client's `ask_human` or `request_approval`),
    not by the model: nothing runs and no model is called; its answer or
    decision ends the thread."""


class ToolStarted(_Base):
    """A non-idempotent tool began. Written before the side effect, so a crash
    after it is known: the outcome is unknown and the tool is not run again."""

    type: Literal["tool_started"] = "tool_started"
    call_id: str


class ToolDeferred(_Base):
    """The tool handed back a deferred result: the outcome is posted later."""

    type: Literal["tool_deferred"] = "tool_deferred"
    call_id: str
    note: str | None = None


class ToolResult(_Base):
    """A tool's output, or its compact error."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    output: Any = None
    is_error: bool = False
    source: Source | None = None
    """Set when the result was posted from outside (a deferred result)."""


class HumanResponse(_Base):
    """The answer to a `request_human_input` call."""

    type: Literal["human_response"] = "human_response"
    call_id: str
    text: str
    option: str | None = None
    """The option chosen, when the question offered options."""
    source: Source


class Approval(_Base):
    """The decision on a call that required approval."""

    type: Literal["approval"] = "approval"
    call_id: str
    approved: bool
    comment: str | None = None
    arguments: dict[str, Any] | None = None
    """Arguments edited by the approver; the call runs with these instead of
    the model's, and the thread keeps both."""
    responded: bool | None = None
    """True when the person replied instead of deciding: the call does not
    run, and the model reads `comment`."""
    source: Source


class Delivered(_Base):
    """A question, approval request or answer was posted to a channel."""

    type: Literal["delivered"] = "delivered"
    of_seq: int
    """The seq of the event that was delivered."""
    channel: str
    refs: dict[str, str] = Field(default_factory=dict)
    """Where it landed (Slack ts, email Message-ID): used to route replies."""


class Reminder(_Base):
    """Nobody settled a call by its `remind_after`: the people who may were
    reminded (delivered like any notice)."""

    type: Literal["reminder"] = "reminder"
    call_id: str
    to: tuple[str, ...]
    """Who was reminded: people's ids, addresses, Slack ids."""
    reach: dict[str, tuple[str, ...]] | None = None
    """As on `tool_call`: who is reached on channels other than the thread's own."""


class Escalated(_Base):
    """Nobody settled a call by its `escalate_after`: `to` may settle it too
    from now on, and is told."""

    type: Literal["escalated"] = "escalated"
    call_id: str
    to: tuple[str, ...]
    reach: dict[str, tuple[str, ...]] | None = None


class Cancelled(_Base):
    """Someone stopped the thread, whatever it waited for. Its open calls are
    settled as cancelled; a tool already started has an unknown outcome."""

    type: Literal["cancelled"] = "cancelled"
    reason: str | None = None
    source: Source


class Error(_Base):
    """A model or system error in compact form; the model sees it."""

    type: Literal["error"] = "error"
    message: str
    kind: str = "model"
    fatal: bool = False
    """A fatal error stops the thread (`failed`) until someone writes again."""


Event = Annotated[
    UserMessage
    | AssistantMessage
    | ToolCall
    | ToolStarted
    | ToolDeferred
    | ToolResult
    | HumanResponse
    | Approval
    | Delivered
    | Reminder
    | Escalated
    | Cancelled
    | Error,
    Field(discriminator="type"),
]

_ONE: TypeAdapter[Event] = TypeAdapter(Event)
_MANY: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def dump_event(event: Event) -> str:
    # The event's own serializer: the union's would first find out which
    # member the event is.
    return event.__pydantic_serializer__.to_json(event, exclude_none=True).decode()


def load_event(body: str | bytes) -> Event:
    return _ONE.validate_json(body)


def load_events_json(array: str | bytes) -> list[Event]:
    """Parse a JSON array of events."""
    return _MANY.validate_json(array)


def load_events(bodies: list[str]) -> list[Event]:
    """Parse a thread's rows in one pass (one JSON array, one validation)."""
    return _MANY.validate_json("[" + ",".join(bodies) + "]")


def event_from_dict(data: dict[str, Any]) -> Event:
    """An event from its JSON object (as the HTTP API shows it, `seq` and all)."""
    return _ONE.validate_python(data)
