"""The public Python API: launch, answer, decide, post results, continue, read, fork.

Every method that writes appends one event and wakes the thread's runner;
none waits for the agent. A write that does not fit what the thread waits for
raises a `Refused` error and writes nothing.

Channels come in through the same methods (`reply` takes a person's free
text and decides what it is) and go out through `Outbound.deliver`, which
the runner hands a typed notice (`bot.notices`). A `ThreadBot` belongs to the
thread (and event loop) that made it, and reads and writes through the store
it was given; `run_in_thread` gives the agent a thread, a loop and a
connection of its own, opened there and closed when the bot closes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from store import Credentials, DuplicateKey, SeqConflict, Store, ThreadRow

from .context import DEFAULT_SYSTEM_PROMPT
from .engine import Engine
from .errors import (
    AlreadyAnswered,
    NotAllowed,
    NotWaiting,
    Refused,
    ThreadNotFound,
    UsageError,
)
from .events import (
    Approval,
    Cancelled,
    Delivered,
    Escalated,
    Event,
    HumanResponse,
    Reminder,
    Source,
    Timers,
    ToolCall,
    ToolResult,
    UserMessage,
    load_events_json,
)
from .live import Changed, Live, Watch
from .log import ThreadLog, deliver_to
from .model import Model
from .notices import (
    Notice,
    Outbound,
    build_notice,
    find_call,
    pick_option,
    read_decision,
)
from .observe import Observer
from .people import ADMINS, People, deciders, may_settle, takes_part
from .render import pending_json, thread_json, thread_markdown
from .runner import Runner, reach
from .thread import ENDED, HUMAN_INPUT, OpenCall, Pending, ThreadState, derive, waiting_summary
from .tools import Toolbox, merge_timers
from .webhooks import Webhooks

__all__ = ["IN_PROCESS", "AwaitingDecision", "Receipt", "ThreadBot", "ThreadView"]

logger = logging.getLogger("threadbot")

T = TypeVar("T")


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


IN_PROCESS = Source(channel="api", auth="python", admin=True)
"""Calls made by code in this process, without a source of their own: the
operator's."""

LOOK_ELSEWHERE = 1.0
"""Seconds between looks for other processes' writes while someone watches."""

READY_WITHIN = 2.0
"""Seconds the store has to answer a readiness check (`not_ready`)."""

Kind = Literal["question", "approval", "result"]

_KIND_NOUN = {"question": "an answer", "approval": "a decision", "result": "a result"}


class AwaitingDecision(NotWaiting):
    """A reply that is no decision came while the thread waits for one: the
    channel tells the person how to decide (buttons, a reply word)."""

    def __init__(self, message: str, *, tool: str, call_id: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.call_id = call_id


@dataclass(frozen=True, slots=True)
class Receipt:
    thread_id: str
    seq: int
    duplicate: bool = False
    """True when the delivery key was seen before and nothing was written."""


@dataclass(frozen=True, slots=True)
class ThreadView:
    id: str
    state: ThreadState
    events: list[Event]

    def json(self) -> dict[str, Any]:
        return thread_json(self.id, self.state, self.events)

    def markdown(self) -> str:
        return thread_markdown(self.id, self.state, self.events)


class ThreadBot:
    def __init__(
        self,
        store: Store,
        model: Model,
        tools: Toolbox | None = None,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_turns: int = 25,
        max_errors: int = 3,
        retry_delay: float = 1.0,
        outbound: Mapping[str, Outbound] | None = None,
        people: People | None = None,
        approval_timers: Timers | None = None,
        question_timers: Timers | None = None,
        webhooks: Webhooks | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.live = Live(self._read_live)
        """What happens in threads as it happens (`watch`); nothing of it is stored."""
        self.observer = observer or Observer()
        """Told of appends, model and tool calls, deliveries (metrics, traces)."""
        self._log = ThreadLog(store, live=self.live, observer=self.observer)
        if webhooks is not None:
            self._log.webhooks = webhooks.urls
        self._home = threading.get_ident()
        self.model = model
        self.tools = tools or Toolbox()
        self.people = people or People()
        """Who is who across channels, and who approves by default."""
        self._runner_settings: dict[str, Any] = {
            "system_prompt": system_prompt,
            "max_turns": max_turns,
            "max_errors": max_errors,
            "retry_delay": retry_delay,
            "approval_timers": approval_timers,
            "question_timers": question_timers,
            "webhooks": webhooks,
        }
        self.runner: Runner | Engine = Runner(
            self._log,
            model,
            self.tools,
            outbound=outbound,
            people=self.people,
            live=self.live,
            **self._runner_settings,
        )
        self._looking: asyncio.Task[None] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        """Called on the agent's loop at close, after the runs (`close_with`)."""
        self.credentials = Credentials(store)
        """People's API tokens, web sessions and sign-in links."""

    @property
    def log(self) -> ThreadLog:
        """The bot's view of the store, on the thread that made the bot."""
        if threading.get_ident() != self._home:
            raise UsageError(
                "a ThreadBot is used on the thread that made it; the agent's own "
                "thread (run_in_thread) has a connection of its own"
            )
        return self._log

    @property
    def store(self) -> Store:
        """The store the bot was given (its owner closes it)."""
        return self._log.store

    def run_in_thread(self) -> None:
        """Run the agent on a thread and event loop of its own, so that
        requests to this loop are answered at once however busy it is (what
        `threadbot serve` does; see `bot.engine`). Call before the first
        launch; channels added before are kept."""
        if isinstance(self.runner, Engine):
            return
        if self.store.url == ":memory:":
            raise UsageError("an in-memory store cannot be shared with another thread")
        outbound = self.runner.outbound
        engine = Engine(
            # Built on the engine's thread, with a connection of its own that
            # the engine closes when it stops.
            lambda: Runner(
                ThreadLog(self.store.reopen(), live=self.live, observer=self.observer),
                self.model,
                self.tools,
                outbound=outbound,
                people=self.people,
                live=self.live,
                **self._runner_settings,
            )
        )
        engine.start()
        self.runner = engine

    async def on_agent_loop(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` on the agent's loop (the engine's, once `run_in_thread`
        gave it one; else this one): what tools keep open between calls, such
        as MCP sessions, lives there."""
        if isinstance(self.runner, Engine):
            return await self.runner.run(_awaited(work))
        return await work()

    def close_with(self, aclose: Callable[[], Awaitable[None]]) -> None:
        """Have `close` call `aclose` on the agent's loop once the runs have stopped."""
        self._closers.append(aclose)

    # -- launching and continuing ------------------------------------------

    async def launch(
        self,
        text: str,
        *,
        source: Source | None = None,
        key: str | None = None,
        routes: Iterable[str] = (),
    ) -> str:
        """Start a thread; the agent runs in the background. Returns its id.
        With a `key` already used, returns the thread that key started."""
        if not text.strip():
            raise UsageError("a thread starts with a non-empty message")
        first = UserMessage(text=text, source=source or IN_PROCESS, key=key)
        thread_id = uuid.uuid4().hex[:16]
        try:
            await self.log.create(thread_id, [first], routes=routes)
        except DuplicateKey as e:
            return e.thread_id
        self.runner.kick(thread_id)
        return thread_id

    async def ask(
        self,
        question: str,
        *,
        options: Sequence[str] = (),
        person: str | None = None,
        source: Source,
    ) -> str:
        """Start a thread that only asks a person `question` (an MCP
        client's `ask_human`): no model runs, and the answer ends the thread.
        `person` (the people directory's id or a `group:`) is asked and may
        answer; else the person `source` is, if the directory knows them;
        else whoever decides approvals by default (the deployment's
        approvers, else the admins). They are reached on their channels like
        any question. Returns the id."""
        question = question.strip()
        if not question:
            raise UsageError("a question cannot be empty")
        choices = [str(o).strip() for o in options]
        if any(not o for o in choices) or len(set(choices)) != len(choices):
            raise UsageError("options must be different non-empty texts")
        if person is None and self.people.identify(source) is not None:
            person = source.person or source.user
        named = self._known(() if person is None else (person,))
        arguments: dict[str, Any] = {"question": question}
        if choices:
            arguments["options"] = choices
        call = ToolCall(
            call_id=f"call_{uuid.uuid4().hex[:12]}",
            name=HUMAN_INPUT,
            arguments=arguments,
            approvers=named,
            timers=self._runner_settings["question_timers"],
            external=True,
        )
        return await self._start_waiting(question, call, source)

    async def ask_approval(
        self,
        action: str,
        details: str,
        *,
        approvers: Sequence[str] = (),
        source: Source,
    ) -> str:
        """Start a thread that only waits for a decision on `action` (an MCP
        client's `request_approval`): nothing runs and no model is called;
        the decision ends the thread. `approvers` (people's ids, `group:`s)
        decide, else the deployment's rule for calls that name nobody; the
        operator's approval timers apply. Returns the id."""
        action = action.strip()
        if not action or len(action) > 200 or len(action.splitlines()) != 1:
            raise UsageError("an action is one line of at most 200 characters")
        named = self._known(approvers)
        allowed = self.people.approvers
        if allowed and not source.admin:
            # A caller narrows the deployment's approvers; it never widens them.
            for spec in named:
                person = None if spec.startswith("group:") else self.people.find(spec)
                if spec not in allowed and not (person and any(map(person.matches, allowed))):
                    raise UsageError(
                        f"{spec!r} is not among this deployment's approvers (THREADBOT_APPROVERS)"
                    )
        if not named and not allowed:
            # Not the asker: an agent holding its person's token would approve itself.
            named = (f"group:{ADMINS}",)
        call = ToolCall(
            call_id=f"call_{uuid.uuid4().hex[:12]}",
            name=action,
            arguments={"details": details.strip()},
            requires_approval=True,
            approvers=named,
            # Four eyes: whoever asked through the client never decides it.
            self_approval=False,
            timers=merge_timers(None, self._runner_settings["approval_timers"]),
            external=True,
        )
        text = f"Approval requested: {action}"
        if details.strip():
            text += f"\n\n{details.strip()}"
        return await self._start_waiting(text, call, source)

    def _known(self, specs: Sequence[str]) -> tuple[str, ...]:
        """`specs` as the directory names them; refused if anyone is unknown."""
        out = []
        for spec in (s.strip() for s in specs):
            if spec.startswith("group:"):
                if not any(p.matches(spec) for p in self.people.persons):
                    raise UsageError(f"{spec!r} is no group of the people file")
                out.append(spec)
                continue
            found = self.people.find(spec)
            if found is None:
                raise UsageError(f"{spec!r} is not someone this deployment knows")
            out.append(found.id)
        return tuple(dict.fromkeys(out))

    async def _start_waiting(self, text: str, call: ToolCall, source: Source) -> str:
        """A thread whose first message is `text` and which waits on `call`
        at once, its people reached on their channels (its own channel, the
        asker's, delivers nothing of it)."""
        first = UserMessage(text=text, source=source)
        decide = deciders(self.people, call.approvers, source)
        call = call.model_copy(
            update={
                "reach": reach(
                    self.people, self.runner.outbound, source, decide.specs, starter_too=True
                )
            }
        )
        thread_id = uuid.uuid4().hex[:16]
        await self.log.create(thread_id, [first, call])
        self.runner.kick(thread_id)
        return thread_id

    async def send(
        self,
        thread_id: str,
        text: str,
        *,
        source: Source | None = None,
        key: str | None = None,
        members_only: bool = True,
    ) -> Receipt:
        """Continue a thread with a new message: after an answer, after a
        failure, or while the agent is working. A thread waiting for a person
        takes an answer or a decision instead. Only someone who may see the
        thread may write in it, unless `members_only` is False (a channel
        whose conversation anyone present may join, such as a Slack thread)."""
        if not text.strip():
            raise UsageError("a message cannot be empty")
        src = source or IN_PROCESS
        event = UserMessage(text=text, source=src, key=key)

        def build(state: ThreadState, events: list[Event]) -> Event:
            self._may_write(thread_id, state, events, src, members_only)
            return event

        return await self._write(thread_id, key, build)

    async def reply(
        self,
        thread_id: str,
        text: str,
        *,
        source: Source,
        key: str | None = None,
        to: int | None = None,
        members_only: bool = True,
    ) -> Receipt:
        """A person's free text in a thread, from a channel; the core decides
        what it is, against the thread as it stands:

        - to a question: the answer (a number or an option's text picks it);
        - to an approval request: a decision if it starts with approve/yes or
          reject/no (the rest is the reason), taken only from a reply to that
          request (`to`, or its reminder or escalation); other text in such a
          reply responds instead (the call does not run, the model reads it);
          without `to`, anything else raises `AwaitingDecision`;
        - otherwise a new message (see `send`).

        `to` is the seq of the post replied to, when the channel knows it (a
        signed email reply address does); else what the thread waits for now."""
        if not text.strip():
            raise UsageError("a reply cannot be empty")

        def build(state: ThreadState, events: list[Event]) -> Event:
            call: ToolCall | None = None
            if to is not None:
                if not 0 <= to < len(events):
                    raise NotWaiting(f"thread {thread_id} has no event {to}")
                target = events[to]
                if isinstance(target, Reminder | Escalated):
                    # A reply to a reminder or an escalation answers its call.
                    found = find_call(events, target.call_id)
                    target = events[found] if found is not None else target
                if isinstance(target, ToolCall):
                    call = target
            elif state.pending is not None and state.pending.kind != "result":
                call = next(
                    c.call for c in state.open_calls if c.call.call_id == state.pending.call_id
                )
            if call is None:
                self._may_write(thread_id, state, events, source, members_only)
                return UserMessage(text=text, source=source, key=key)
            if call.name == HUMAN_INPUT:
                c = self._allowed(thread_id, state, events, "question", call.call_id, source)
                options = c.call.arguments.get("options")
                answer, option = pick_option(
                    text, [str(o) for o in options] if isinstance(options, list) else []
                )
                return HumanResponse(
                    call_id=call.call_id, text=answer, option=option, source=source, key=key
                )
            decision = read_decision(text) if to is not None else None
            if decision is None and to is not None:
                # Neither approve nor reject, in reply to the request: the
                # person's answer instead of a decision.
                self._allowed(thread_id, state, events, "approval", call.call_id, source)
                return Approval(
                    call_id=call.call_id,
                    approved=False,
                    responded=True,
                    comment=text.strip(),
                    source=source,
                    key=key,
                )
            if decision is None:
                raise AwaitingDecision(
                    f"thread {thread_id} is waiting for a decision on {call.name}, not a message",
                    tool=call.name,
                    call_id=call.call_id,
                )
            self._allowed(thread_id, state, events, "approval", call.call_id, source)
            approved, comment = decision
            return Approval(
                call_id=call.call_id, approved=approved, comment=comment, source=source, key=key
            )

        return await self._write(thread_id, key, build)

    # -- settling what the thread waits for ----------------------------------

    async def respond(
        self,
        thread_id: str,
        text: str,
        *,
        call_id: str | None = None,
        option: str | None = None,
        source: Source | None = None,
        key: str | None = None,
    ) -> Receipt:
        """Answer a question the agent asked (`request_human_input`)."""
        src = source or IN_PROCESS

        def make(c: OpenCall) -> Event:
            return HumanResponse(
                call_id=c.call.call_id, text=text, option=option, source=src, key=key
            )

        return await self._settle(thread_id, "question", call_id, src, make, key)

    async def decide(
        self,
        thread_id: str,
        approved: bool,
        *,
        comment: str | None = None,
        call_id: str | None = None,
        arguments: dict[str, Any] | None = None,
        respond: str | None = None,
        source: Source | None = None,
        key: str | None = None,
    ) -> Receipt:
        """Approve or reject a call waiting for approval. A rejection's
        comment reaches the model; an approval may edit the arguments. With
        `respond` (and `approved` False), the person answers instead of
        deciding: the call does not run and the model reads their text."""
        src = source or IN_PROCESS
        if respond is not None and (approved or not respond.strip()):
            raise UsageError(
                "a response instead of a decision is a non-empty text, not an approval"
            )

        def make(c: OpenCall) -> Event:
            if arguments is not None:
                if (c.call.approvals_required or 1) > 1:
                    raise UsageError(
                        f"{c.call.name} needs several approvers: its arguments cannot be edited"
                    )
                t = self.tools.get(c.call.name)
                if t is not None and (problem := t.validate(arguments)) is not None:
                    raise UsageError(f"edited arguments do not fit {c.call.name}: {problem}")
            if respond is not None:
                return Approval(
                    call_id=c.call.call_id,
                    approved=False,
                    responded=True,
                    comment=respond.strip(),
                    source=src,
                    key=key,
                )
            return Approval(
                call_id=c.call.call_id,
                approved=approved,
                comment=comment,
                arguments=arguments if approved else None,
                source=src,
                key=key,
            )

        return await self._settle(thread_id, "approval", call_id, src, make, key)

    async def post_result(
        self,
        thread_id: str,
        call_id: str,
        output: Any,
        *,
        is_error: bool = False,
        source: Source | None = None,
        key: str | None = None,
    ) -> Receipt:
        """Post the outcome of a deferred call."""
        src = source or IN_PROCESS

        def make(c: OpenCall) -> Event:
            return ToolResult(
                call_id=c.call.call_id, output=output, is_error=is_error, source=src, key=key
            )

        return await self._settle(thread_id, "result", call_id, src, make, key)

    async def cancel(
        self,
        thread_id: str,
        reason: str | None = None,
        *,
        source: Source | None = None,
        key: str | None = None,
    ) -> Receipt:
        """Stop the thread, whatever it waits for: its open questions and
        approvals are settled as cancelled (a tool already started keeps an
        unknown outcome). Whoever may write in the thread or settle what it
        waits for may cancel it; someone writing again starts it anew."""
        src = source or IN_PROCESS

        def build(state: ThreadState, events: list[Event]) -> Event:
            if state.status in ENDED:
                raise NotWaiting(f"thread {thread_id} is {state.status}: nothing to cancel")
            if not src.admin and not self._sees(thread_id, state, events, src):
                self._may_write(thread_id, state, events, src, True, check_state=False)
            return Cancelled(reason=(reason or "").strip() or None, source=src, key=key)

        return await self._write(thread_id, key, build)

    async def _settle(
        self,
        thread_id: str,
        kind: Kind,
        call_id: str | None,
        source: Source,
        make: Callable[[OpenCall], Event],
        key: str | None,
    ) -> Receipt:
        def build(state: ThreadState, events: list[Event]) -> Event:
            return make(self._allowed(thread_id, state, events, kind, call_id, source))

        return await self._write(thread_id, key, build)

    def check(
        self, thread_id: str, kind: Kind, *, call_id: str | None = None, source: Source
    ) -> None:
        """Raise the `Refused` error that an answer, decision or result from
        `source` would meet now; write nothing. (A channel asks before it
        opens a form.)"""
        thread = self.log.load(thread_id)
        self._allowed(thread_id, thread.state, thread.events, kind, call_id, source)

    def may_settle(self, thread_id: str, source: Source, *, view: ThreadView | None = None) -> bool:
        """Whether `source` may settle what the thread waits for now."""
        view = view or self.get(thread_id)
        pending = view.state.pending
        if pending is None:
            return False
        try:
            self._allowed(thread_id, view.state, view.events, pending.kind, None, source)
        except Refused:
            return False
        return True

    def may_see(self, thread_id: str, source: Source) -> bool:
        """Whether `source` may read the thread: an operator, someone who
        takes part in it, or someone who may settle what it waits for."""
        if source.admin:
            return True
        thread = self.log.load(thread_id)
        return self._sees(thread_id, thread.state, thread.events, source)

    def _sees(
        self, thread_id: str, state: ThreadState, events: list[Event], source: Source
    ) -> bool:
        if source.admin or takes_part(self.people, events, source):
            return True
        return any(
            c.waits_for is not None and self._why_not(c, c.waits_for, events, source) is None
            for c in state.open_calls
        )

    def _may_write(
        self,
        thread_id: str,
        state: ThreadState,
        events: list[Event],
        source: Source,
        members_only: bool,
        *,
        check_state: bool = True,
    ) -> None:
        """Refuse a new message that does not fit now, or comes from someone
        who may not write in the thread: whoever may answer its questions
        (its people, the deployment's approvers, the admins)."""
        if members_only:
            why = may_settle(
                self.people,
                events,
                kind="question",
                call_seq=len(events),
                approvers=(),
                self_approval=True,
                source=source,
            )
            if why is not None:
                raise NotAllowed(f"{source.who()} may not write in thread {thread_id}: {why}")
        if check_state and state.pending is not None and state.pending.kind != "result":
            raise NotWaiting(
                f"thread {thread_id} is {state.status} (call {state.pending.call_id}); "
                f"send {_KIND_NOUN[state.pending.kind]} instead of a new message"
            )

    def thread_json(self, thread_id: str, source: Source) -> dict[str, Any]:
        """The thread as the HTTP API shows it to `source`: `pending.allowed`
        says whether they may settle it, an approval's `pending.deciders` who
        may, by name."""
        view = self.get(thread_id)
        body = view.json()
        body["pending_calls"] = [
            self._pending_json(thread_id, source, view, p) for p in view.state.waiting
        ]
        body["pending"] = body["pending_calls"][0] if body["pending_calls"] else None
        return body

    def pending_json(
        self, thread_id: str, source: Source, *, view: ThreadView | None = None
    ) -> dict[str, Any] | None:
        """What the thread waits for, as the HTTP API shows it to `source`."""
        view = view or self.get(thread_id)
        pending = view.state.pending
        return None if pending is None else self._pending_json(thread_id, source, view, pending)

    def _pending_json(
        self, thread_id: str, source: Source, view: ThreadView, pending: Pending
    ) -> dict[str, Any]:
        body = pending_json(pending) or {}
        try:
            self._allowed(thread_id, view.state, view.events, pending.kind, pending.call_id, source)
            body["allowed"] = True
        except Refused:
            body["allowed"] = False
        if pending.kind == "approval":
            decide = deciders(self.people, pending.approvers, view.state.origin, pending.escalated)
            named = decide.specs if decide.by == "approvers" else ()
            body["deciders"] = self.people.describe(named)
            if named:
                body["approvers"] = list(named)
        return body

    # -- what channels look up -------------------------------------------------

    def notice(self, thread_id: str, seq: int, channel: str) -> Notice | None:
        """The notice that delivers the thread's event `seq` through
        `channel` (whether or not it was delivered), or None."""
        events = self.log.load(thread_id).events
        return build_notice(thread_id, events, seq, channel, self.people)

    def request(self, thread_id: str, call_id: str, channel: str) -> Notice | None:
        """The question or approval request of call `call_id`, as a notice."""
        events = self.log.load(thread_id).events
        seq = find_call(events, call_id)
        if seq is None:
            return None
        return build_notice(thread_id, events, seq, channel, self.people)

    def find_post(
        self, thread_id: str, channel: str, match: Callable[[Mapping[str, str]], bool]
    ) -> Notice | None:
        """What `channel` delivered where `match` finds its references (a
        mail's Message-ID, a post's ts), as a notice; None if nothing."""
        thread = self.log.load(thread_id)
        for e in thread.events:
            if isinstance(e, Delivered) and e.channel == channel and match(e.refs):
                return build_notice(thread_id, thread.events, e.of_seq, channel, self.people)
        return None

    def routed(self, route: str) -> str | None:
        """The thread a channel's reference (a Slack thread, a Message-ID) leads to."""
        return self.store.route(route)

    def received(self, key: str) -> bool:
        """Whether something with this delivery key was stored already."""
        return self.store.find_key(key) is not None

    # -- a channel's note about a thread ------------------------------------------

    def note(self, thread_id: str, channel: str) -> str | None:
        """What `channel` noted about the thread (`keep_note`), if anything."""
        return self._store_here().note(thread_id, channel)

    def keep_note(self, thread_id: str, channel: str, value: str | None) -> None:
        """Keep a channel's small note about a thread across restarts (None
        removes it): what it showed there that a crash could leave
        half-done, such as the message a reply is being streamed into. Not
        part of the thread, and written without the durability of an
        append (a crashed process's note survives, as a lease does). From
        the bot's thread, or from the agent's (`run_in_thread`), where
        channels show work and deliver."""
        self._store_here().keep_note(thread_id, channel, value)

    def _store_here(self) -> Store:
        """The connection of the calling thread: the bot's or the agent's."""
        runner = self.runner
        if isinstance(runner, Engine) and runner.on_its_thread():
            return runner.runner.log.store
        return self.log.store

    def exists(self, thread_id: str) -> bool:
        return self.store.thread(thread_id) is not None

    def secret(self, name: str) -> str:
        """A random secret kept in the store under `name` (made on first use):
        the same for every process on this database."""
        return self.store.meta(f"{name}_secret", secrets.token_hex(32))

    async def not_ready(self) -> dict[str, str]:
        """What keeps this process from doing its work, by name (empty when
        nothing does): the store, read on a connection opened for the look,
        and each channel that says whether it is connected (`ready()`)."""
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_WITHIN):
                # A thread of its own: a database that does not answer must
                # not hold this loop.
                await asyncio.to_thread(self.store.ping, READY_WITHIN)
        except TimeoutError:
            problems["store"] = f"no answer within {READY_WITHIN:g} s"
        except Exception as e:
            # The kind of failure only: the message may name the database's host.
            problems["store"] = f"unreachable ({type(e).__name__})"
        for name, channel in list(self.runner.outbound.items()):
            ready = getattr(channel, "ready", None)
            if ready is not None and (why := await ready()) is not None:
                problems[name] = why
        return problems

    def add_channel(self, name: str, channel: Outbound) -> None:
        """Deliver questions and answers of threads that started in `name` through `channel`."""
        self.runner.outbound[name] = channel

    def _allowed(
        self,
        thread_id: str,
        state: ThreadState,
        events: list[Event],
        kind: Kind,
        call_id: str | None,
        source: Source,
    ) -> OpenCall:
        """The open call `source` would settle, if it may."""
        c = self._find(thread_id, state, kind, call_id)
        why = self._why_not(c, kind, events, source)
        if why is not None:
            raise NotAllowed(
                f"{source.who()} may not give {_KIND_NOUN[kind]} on call {c.call.call_id}: {why}"
            )
        return c

    def _why_not(self, c: OpenCall, kind: Kind, events: list[Event], source: Source) -> str | None:
        """Why `source` may not settle the open call `c`; None if they may."""
        return may_settle(
            self.people,
            events,
            kind=kind,
            call_seq=c.seq,
            approvers=c.call.approvers,
            self_approval=c.call.self_approval is not False,
            source=source,
            escalated=c.escalated,
            approvals_required=c.call.approvals_required or 1,
            approved_by=[a.source for a in c.approvals],
        )

    def _find(
        self, thread_id: str, state: ThreadState, kind: Kind, call_id: str | None
    ) -> OpenCall:
        if call_id is not None:
            # Settled first: an approved call is still open while it runs.
            if (r := state.resolved.get(call_id)) is not None:
                by = r.source.who() if r.source else "threadbot"
                user = r.source.user if r.source else None
                raise AlreadyAnswered(
                    f"call {call_id} was already settled ({r.kind}) by {by}", by, user
                )
            for c in state.open_calls:
                if c.call.call_id == call_id:
                    if c.waits_for != kind:
                        waits = c.waits_for
                        raise NotWaiting(
                            f"call {call_id} waits for "
                            f"{_KIND_NOUN[waits] if waits else 'nothing: it is running'}, "
                            f"not {_KIND_NOUN[kind]}"
                        )
                    return c
            raise NotWaiting(f"thread {thread_id} has no call {call_id}")
        for c in state.open_calls:
            if c.waits_for == kind:
                return c
        # Nothing of that kind is open: say who settled the last one, if anyone.
        wanted = {
            "question": ("answer",),
            "approval": ("approved", "rejected"),
            "result": ("result",),
        }[kind]
        last = max(
            (r for r in state.resolved.values() if r.kind in wanted),
            key=lambda r: r.seq,
            default=None,
        )
        message = f"thread {thread_id} is {state.status}, not waiting for {_KIND_NOUN[kind]}"
        if last is not None and last.source is not None:
            by = last.source.who()
            raise AlreadyAnswered(f"{message}; the last one came from {by}", by, last.source.user)
        raise NotWaiting(message)

    async def _write(
        self,
        thread_id: str,
        key: str | None,
        build: Callable[[ThreadState, list[Event]], Event],
    ) -> Receipt:
        """Check against the thread as it is and append; on a race, check
        again against what the other writer left."""
        thread = self.log.load(thread_id)
        while True:
            try:
                new = build(thread.state, thread.events)
            except Refused:
                # A redelivery meets a thread that has moved on since the
                # original; the original's result is what the caller wants.
                if key is not None and (found := self.store.find_key(key)) is not None:
                    return Receipt(found[0], found[1], duplicate=True)
                raise
            try:
                thread = await self.log.append(thread, [new])
            except DuplicateKey as e:
                return Receipt(e.thread_id, e.seq, duplicate=True)
            except SeqConflict:
                # Someone else wrote first: check again against what is there now.
                thread = self.log.load(thread_id)
                continue
            self.runner.kick(thread_id)
            return Receipt(thread_id, len(thread.events) - 1)

    # -- reading -------------------------------------------------------------

    def get(self, thread_id: str) -> ThreadView:
        thread = self.log.load(thread_id)
        return ThreadView(thread_id, thread.state, thread.events)

    # -- watching ------------------------------------------------------------

    def watch(self, thread_id: str | None = None, *, after: int = -1, limit: int = 1000) -> Watch:
        """News of a thread (of every thread: None) from now on: `Appended`
        events, `Delta`s of the reply the model is writing, `Activity`.
        `after` is the last seq the watcher has; read what came before with
        `events_after` once the watch is made, and nothing falls between.
        On the loop of the thread that made the bot."""
        if thread_id is not None and (row := self.store.thread(thread_id)) is not None:
            after = min(after, row.last_seq)  # a place past the end is the end
        watch = self.live.watch(thread_id, after=after, limit=limit)
        if self._looking is None or self._looking.done():
            self._looking = asyncio.get_running_loop().create_task(self._look_elsewhere())
        return watch

    def events_after(self, thread_id: str, seq: int) -> list[tuple[int, str, str]]:
        """The thread's stored events after `seq`: `(seq, type, JSON without the seq)`."""
        rows = self.store.events_from(thread_id, max(seq + 1, 0))
        if not rows and not self.exists(thread_id):
            raise ThreadNotFound(thread_id)
        first = max(seq + 1, 0)
        return [(first + i, type_, body) for i, (type_, body) in enumerate(rows)]

    def _read_live(self, thread_id: str, seq: int) -> tuple[list[tuple[str, str]], str]:
        row = self.store.thread(thread_id)
        return self.store.events_from(thread_id, seq), row.status if row else ""

    async def _look_elsewhere(self) -> None:
        """While anyone watches: every `LOOK_ELSEWHERE` seconds, whether
        another process wrote (this process's own appends are told as they
        are made; another replica's on PostgreSQL as it notifies)."""
        while self.live.watching():
            await asyncio.sleep(LOOK_ELSEWHERE)
            try:
                if self.log.changed_elsewhere():
                    self.live.publish(Changed())
            except Exception:
                logger.exception("looking for other processes' writes failed")

    def thread_row(self, thread_id: str) -> ThreadRow | None:
        """One thread's row as `threads` lists it, or None if there is no such thread."""
        return self.store.thread(thread_id)

    def threads(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        overdue_by: float | None = None,
        due_first: bool = False,
    ) -> list[ThreadRow]:
        """Threads by most recent activity, or soonest due first; with
        `overdue_by` (Unix time), only those waiting past their first timer."""
        return self.store.threads(
            status=status, limit=limit, overdue_by=overdue_by, due_first=due_first
        )

    async def fork(self, thread_id: str, at: int, *, key: str | None = None) -> str:
        """A new thread holding a copy of events 0..at, pointing at its parent.
        It runs from there like any thread (delivery keys are not copied).
        With a `key` already used, returns the thread that key forked."""
        events = self.log.load_upto(thread_id, min(max(at, 0), 2**62))
        if at < 0 or at >= len(events):
            raise UsageError(f"thread {thread_id} has no event {at} (it has 0..{len(events) - 1})")
        copies = [e.model_copy(update={"key": None}) for e in events]
        # The key rides on the last copy, as a launch's rides on its message:
        # the store's unique index then makes a repeat find the first fork.
        copies[-1] = copies[-1].model_copy(update={"key": key})
        new_id = uuid.uuid4().hex[:16]
        try:
            await self.log.create(new_id, copies, parent=(thread_id, at))
        except DuplicateKey as e:
            return e.thread_id
        self.runner.kick(new_id)
        return new_id

    def reindex(self) -> int:
        """Rebuild every thread's projection from its events. Returns how many changed."""
        changed = 0
        for thread_id in self.store.all_thread_ids():
            while True:
                row = self.store.thread(thread_id)
                events = load_events_json(self.store.load_json(thread_id) or b"[]")
                state = derive(events)
                if self.store.rewrite_projection(
                    thread_id,
                    len(events) - 1,
                    status=state.status,
                    title=state.title,
                    deliver_to=deliver_to(state),
                    waiting=waiting_summary(state),
                    due_at=state.due.at if state.due else None,
                    overdue_at=state.overdue_at,
                ):
                    break
            if row is None or (row.status, row.title, row.last_seq) != (
                state.status,
                state.title,
                len(events) - 1,
            ):
                changed += 1
        return changed

    # -- lifecycle -------------------------------------------------------------

    async def resume_all(self) -> list[str]:
        """At start-up: every thread left `running` gets a run, and so does
        every thread with something its channels have not delivered yet; and
        timers are watched (those that came due while nothing ran fire now)."""
        ids = list(
            dict.fromkeys(
                self.store.thread_ids(status="running")
                + self.store.undelivered_ids(self.runner.outbound)
            )
        )
        for thread_id in ids:
            self.runner.kick(thread_id)
        self.runner.watch_timers()  # overdue ones fire at once
        self.runner.send_webhooks()
        return ids

    async def settle(self, thread_id: str | None = None) -> None:
        """Wait until the thread's run (or every run) has paused or stopped."""
        if thread_id is None:
            await self.runner.settle_all()
        else:
            await self.runner.settle(thread_id)

    async def close(self, grace: float = 0.0) -> None:
        """Stop: give active runs `grace` seconds to pause, then cancel them,
        and close the model's connections."""
        if self._looking is not None:
            self._looking.cancel()
            self._looking = None
        for watch in self.live.watches():
            watch.close()
        model_aclose = getattr(self.model, "aclose", None)
        closers = [*self._closers, *([model_aclose] if model_aclose is not None else [])]

        async def aclose() -> None:
            for close in closers:
                try:
                    await close()
                except Exception:
                    logger.exception("closing %r failed", close)

        if isinstance(self.runner, Engine):
            # The model's connections (and the closers') live on the engine's loop.
            await self.runner.shutdown(grace, then=aclose)
            return
        await self.runner.shutdown(grace)
        await aclose()
