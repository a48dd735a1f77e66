"""The runner: decide → perform one side effect → append its event → repeat.

It keeps nothing between runs. Each run loads the thread, and stops when the
derived state says wait or stop; a paused thread holds no task and no memory.
At most one run per thread is active in a process; between processes, each
append is checked against the seq its writer expected, so a stale writer
reloads instead of writing over the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from store import SeqConflict, StoreError

from .context import Context, message_parts, system_part
from .errors import ModelError
from .events import (
    DEADLINE,
    Approval,
    AssistantMessage,
    Delivered,
    Error,
    Escalated,
    Event,
    HumanResponse,
    Reminder,
    Source,
    Timers,
    ToolCall,
    ToolDeferred,
    ToolResult,
    ToolStarted,
)
from .live import Activity, Changed, Delta, Live
from .log import Thread, ThreadLog
from .model import Model, ModelReply
from .notices import Delivery, Outbound, Outcome, build_notice
from .people import People, Person, deciders
from .step import (
    CallModel,
    Deliver,
    Escalate,
    Fail,
    Fire,
    Interrupted,
    RunTool,
    Step,
    Stop,
    Wait,
    next_step,
)
from .thread import HUMAN_INPUT, OpenCall, ThreadState, Timer
from .tools import Toolbox, ToolContext, merge_timers
from .webhooks import Webhooks, WebhookSender

__all__ = ["Runner", "reach"]

log = logging.getLogger("threadbot.runner")

INTERRUPTED = (
    "interrupted, outcome unknown: the tool started but threadbot stopped before it "
    "reported; it was not run again. Check its effect before retrying."
)


TIMER_LOOK = 5.0
"""Seconds between looks at the store for timers that another process made
due (this process's own are seen as they are made)."""


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_live_here: weakref.WeakValueDictionary[str, Runner] = weakref.WeakValueDictionary()
"""The runners of this process that have not shut down, by lease owner:
several bots may share a database file in one process."""


def _is_dead(owner: str, me: str) -> bool:
    """Whether a lease owner is a process on this machine that no longer
    runs (a crash leaves its leases behind until they expire)."""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # Another runner of this process, or an earlier process that had our pid.
        return owner not in _live_here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _reaches(channel: Outbound | None, person: Person) -> bool:
    reaches = getattr(channel, "reaches", None)
    return bool(reaches and reaches(person))


def reach(
    people: People,
    outbound: Mapping[str, Outbound],
    origin: Source | None,
    specs: Sequence[str],
    *,
    starter_too: bool = False,
) -> dict[str, tuple[str, ...]] | None:
    """Where each person `specs` names is reached on their own (a direct
    message, a mail): on the thread's own channel if it reaches them, else
    on the first other channel that does. The person who started the thread
    is there already, unless `starter_too` (a thread whose own channel
    delivers nothing, such as an MCP client's)."""
    home = origin.channel if origin is not None else ""
    order = sorted(outbound.items(), key=lambda item: item[0] != home)
    out: dict[str, tuple[str, ...]] = {}
    for person in people.expand(specs):
        if not starter_too and origin is not None and people.named(origin, (person.id,)):
            continue
        for name, channel in order:
            if _reaches(channel, person):
                out[name] = (*out.get(name, ()), person.id)
                break
    return out or None


class Runner:
    def __init__(
        self,
        log_: ThreadLog,
        model: Model,
        tools: Toolbox,
        *,
        system_prompt: str,
        max_turns: int = 25,
        max_errors: int = 3,
        retry_delay: float = 1.0,
        outbound: Mapping[str, Outbound] | None = None,
        people: People | None = None,
        lease_ttl: float = 30.0,
        approval_timers: Timers | None = None,
        question_timers: Timers | None = None,
        live: Live | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.log = log_
        self.live = live
        """Told what the agent is doing and what the model writes, as it happens."""
        self.people = people or People()
        self.lease_ttl = lease_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This runner, as a lease holder: host, process and a random part."""
        _live_here[self.owner] = self
        self.model = model
        self.tools = tools
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_errors = max_errors
        self.retry_delay = retry_delay
        self.outbound = dict(outbound or {})
        tools.schemas()  # made now, not during the first thread's run (kept until tools change)
        self._system = system_part(system_prompt)
        self._contexts: OrderedDict[str, tuple[int, list[bytes]]] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._delivery_failures: dict[str, int] = {}
        self._held: set[str] = set()
        """Threads whose lease this runner holds."""
        self._renewal: asyncio.TimerHandle | None = None
        self.approval_timers = approval_timers
        """The operator's defaults for calls that wait for approval."""
        self.question_timers = question_timers
        """The operator's reminder and deadline for questions."""
        self._timers: asyncio.Task[None] | None = None
        self._timers_wake: asyncio.Event | None = None
        self._next_timer: float | None = None
        """When the timer task wakes next (None: at its next look)."""
        self._watchers: list[asyncio.Task[None]] = []
        """Listening for other replicas' changes; looking for orphaned threads."""
        self._lease_waits: dict[str, asyncio.Event] = {}
        """Threads waiting here for another runner's lease, woken when it is freed."""
        self._orphans: set[str] = set()
        """Threads kicked because a runner that is gone left them with work."""
        self.observe = log_.observer
        """Told what the runs do (metrics, traces)."""
        self.log.store.hold_presence(self.owner)
        self._webhooks: WebhookSender | None = None
        if webhooks is not None:
            self.log.webhooks = webhooks.urls
            self._webhooks = WebhookSender(
                self.log.store,
                webhooks,
                owner=self.owner,
                observer=self.observe,
                is_gone=lambda owner: (
                    _is_dead(owner, self.owner) or bool(self.log.store.owner_gone(owner))
                ),
            )
            self.log.on_webhook = self._webhooks.wake

    # -- webhooks -------------------------------------------------------------

    def send_webhooks(self) -> None:
        """Start sending the webhooks the outbox holds (this process's
        appends' and any other's on the same database)."""
        if self._webhooks is not None:
            self._webhooks.start()

    # -- scheduling ---------------------------------------------------------

    def kick(self, thread_id: str) -> None:
        """Make sure the thread gets a run: start one, or have the active one
        look again when it would stop."""
        if self._webhooks is not None:
            # An append made elsewhere (an answer, on the inbound side) may
            # have stored webhooks.
            self._webhooks.wake()
        if thread_id in self._tasks:
            self._again.add(thread_id)
            return
        task = asyncio.get_running_loop().create_task(self._run(thread_id))
        self._tasks[thread_id] = task
        self.watch_timers()

    # -- timers: one task for every thread's reminders, escalations, deadlines --

    def watch_timers(self) -> None:
        """Start the one task that wakes threads when a timer of theirs is
        due (the store keeps each thread's next one, indexed)."""
        if self._timers is None:
            loop = asyncio.get_running_loop()
            self._timers_wake = asyncio.Event()
            self._timers = loop.create_task(self._watch_timers())
            self._watchers.append(loop.create_task(self.log.store.listen(self._notified)))
            if self.log.store.takeover_every is not None:
                self._watchers.append(loop.create_task(self._take_over()))

    async def _watch_timers(self) -> None:
        assert self._timers_wake is not None
        store = self.log.store
        while True:
            try:
                now = time.time()
                for thread_id in store.due_ids(now):
                    self.kick(thread_id)
                following = store.next_due(now)
            except Exception:
                log.exception("looking for due timers failed; trying again shortly")
                following = None
            wait = TIMER_LOOK if following is None else min(TIMER_LOOK, following - time.time())
            self._next_timer = time.time() + wait
            self._timers_wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._timers_wake.wait()

    def _notified(self, thread_id: str, due_at: float | None) -> None:
        """Another connection changed the thread (or freed its lease)."""
        if self.live is not None:
            self.live.publish(Changed(thread_id))
        if (waiting := self._lease_waits.get(thread_id)) is not None:
            waiting.set()
        if (
            due_at is not None
            and self._timers_wake is not None
            and (self._next_timer is None or due_at < self._next_timer)
        ):
            self._timers_wake.set()

    async def _take_over(self) -> None:
        """Every few seconds, run the threads that a runner which died on
        another host (or nobody) left with work to do."""
        store = self.log.store
        assert store.takeover_every is not None
        while True:
            await asyncio.sleep(store.takeover_every)
            try:
                orphans = store.orphans(self.owner, self.outbound)
            except Exception:
                log.exception("looking for threads left by a dead runner failed")
                continue
            for thread_id in orphans:
                if thread_id not in self._tasks:
                    log.info("thread %s: taken over from a runner that is gone", thread_id)
                    self._orphans.add(thread_id)
                    self.kick(thread_id)

    def active(self) -> list[str]:
        return list(self._tasks)

    async def settle(self, thread_id: str) -> None:
        """Wait until no run of the thread is active."""
        while (task := self._tasks.get(thread_id)) is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # the caller was cancelled, not the run
                # A run stopped by a lost lease ends cancelled.

    async def settle_all(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def shutdown(self, grace: float = 0.0) -> None:
        """Let active runs reach a pause for up to `grace` seconds, then cancel
        the rest. A cancelled thread stays `running` and resumes at the next
        start (a tool cut off mid-run is then reported as interrupted)."""
        tasks = list(self._tasks.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        if self._timers is not None:
            tasks.append(self._timers)
            self._timers = None
        tasks += self._watchers
        self._watchers = []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._webhooks is not None:
            await self._webhooks.stop()
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        self.log.store.release_all(self.owner)
        _live_here.pop(self.owner, None)
        for channel in self.outbound.values():
            # Connections a channel opened for this loop's deliveries.
            aclose = getattr(channel, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _run(self, thread_id: str) -> None:
        try:
            if not await self._take_lease(thread_id):
                return
            self._held.add(thread_id)
            self._renew_later()
            self.log.pin(thread_id)
            try:
                while True:
                    self._again.discard(thread_id)
                    state = await self.run_until_paused(thread_id)
                    self._show(thread_id, state.origin, Activity(thread_id, None))
                    if state.due is not None and self._timers_wake is not None:
                        self._timers_wake.set()  # it may be sooner than the one awaited
                    if thread_id in self._again:
                        continue
                    self._held.discard(thread_id)
                    await self.log.store.release_async(thread_id, self.owner)
                    # A writer in another process that found the lease taken
                    # relies on this look after the release.
                    if self.log.load(thread_id).state.last_seq == state.last_seq:
                        break
                    if not await self._acquire(thread_id):
                        break  # that process took it
                    self._held.add(thread_id)
            except BaseException:
                self.log.store.release(thread_id, self.owner)
                raise
            finally:
                self._held.discard(thread_id)
                self.log.unpin(thread_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a tool or model error (those are events). The thread
            # keeps its status and is picked up again at the next start.
            log.exception("thread %s: the run crashed", thread_id)
        finally:
            self._tasks.pop(thread_id, None)
            self._orphans.discard(thread_id)

    # -- leases: one process runs a thread at a time --------------------------

    async def _acquire(self, thread_id: str) -> bool:
        store = self.log.store
        if await store.acquire_async(thread_id, self.owner, self.lease_ttl):
            if thread_id in self._orphans:
                self._orphans.discard(thread_id)
                self.observe.lease_taken_over()
            return True
        holder = store.lease_owner(thread_id)
        if holder is None or holder == self.owner:
            return False
        gone = store.owner_gone(holder)
        if (gone if gone is not None else _is_dead(holder, self.owner)) and store.acquire(
            thread_id, self.owner, self.lease_ttl, steal_from=holder
        ):
            self._orphans.discard(thread_id)
            self.observe.lease_taken_over()
            return True
        return False

    async def _take_lease(self, thread_id: str) -> bool:
        """Wait for the lease while the thread still has work; another
        process may be running it."""
        delay = 0.05
        freed = self._lease_waits.setdefault(thread_id, asyncio.Event())
        try:
            while True:
                freed.clear()  # before trying: a release meanwhile is not missed
                if await self._acquire(thread_id):
                    return True
                thread = self.log.load(thread_id)
                if isinstance(self._decide(thread), Wait | Stop):
                    return False  # the other process finished it
                # Woken when the lease is freed, where the store tells.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await freed.wait()
                delay = min(delay * 2, 2.0)
        finally:
            self._lease_waits.pop(thread_id, None)

    def _renew_later(self) -> None:
        """While runs last, renew their leases every third of their time, all
        at once (most runs end long before the first renewal)."""
        if self._renewal is None:
            self._renewal = asyncio.get_running_loop().call_later(self.lease_ttl / 3, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if not self._held:
            return
        try:
            kept = self.log.store.renew_all(self.owner, self.lease_ttl)
        except Exception:
            log.exception("renewing leases failed; trying again shortly")
            kept = self._held  # not known to be lost: the next renewal tells
        for thread_id in self._held - kept:
            log.error("thread %s: lease lost to another process; stopping here", thread_id)
            if (run := self._tasks.get(thread_id)) is not None:
                run.cancel()
        self._renew_later()

    # -- one run ------------------------------------------------------------

    def _decide(self, thread: Thread) -> Step:
        return next_step(
            thread.state,
            max_turns=self.max_turns,
            max_errors=self.max_errors,
            outbound=frozenset(self.outbound),
            now=time.time(),
        )

    async def run_until_paused(self, thread_id: str) -> ThreadState:
        with self.observe.span("threadbot.run", thread_id):
            return await self._run_steps(thread_id)

    async def _run_steps(self, thread_id: str) -> ThreadState:
        thread = self.log.load(thread_id)
        # What this run appends is delivered for the first time; what it
        # found undelivered may have been posted by a process that died.
        first_new = len(thread.events)
        while True:
            step = self._decide(thread)
            if isinstance(step, Wait | Stop):
                return thread.state
            with self.observe.span(
                "threadbot.step", thread_id, {"threadbot.step": type(step).__name__}
            ):
                match step:
                    case CallModel():
                        thread = await self._call_model(thread)
                    case RunTool(call=c):
                        thread = await self._run_tool(thread, c)
                    case Interrupted(call=c):
                        result = ToolResult(
                            call_id=c.call.call_id, output=INTERRUPTED, is_error=True
                        )
                        thread = await self._try_append(thread, [result])
                    case Escalate(reason=reason):
                        ask = ToolCall(
                            call_id=f"escalate_{uuid.uuid4().hex[:12]}",
                            name=HUMAN_INPUT,
                            arguments={"question": reason},
                        )
                        thread = await self._try_append(thread, [ask])
                    case Fail(reason=reason):
                        thread = await self._try_append(
                            thread, [Error(message=reason, kind="limit", fatal=True)]
                        )
                    case Fire(timer=timer):
                        thread = await self._try_append(thread, self._fire(thread, timer))
                    case Deliver():
                        delivered = await self._deliver(thread, step, fresh=step.seq >= first_new)
                        if delivered is None:
                            return thread.state
                        thread = delivered

    async def _try_append(self, thread: Thread, new: Sequence[Event]) -> Thread:
        """Append; if another writer got there first, return the fresh thread
        instead, so that the caller decides again on what is there now."""
        try:
            return await self.log.append(thread, new)
        except SeqConflict:
            return self.log.load(thread.id)

    async def _append_outcome(self, thread: Thread, new: Sequence[Event], call_id: str) -> Thread:
        """Append what a side effect produced; it happened, so it must not be
        lost to a concurrent append (nor to a cancellation that came while a
        tool ran: its outcome is still recorded). Dropped only if the call
        was settled meanwhile by someone else."""
        delay = 0.25
        while True:
            try:
                return await self.log.append(thread, new)
            except SeqConflict:
                thread = self.log.load(thread.id)
                if (r := thread.state.resolved.get(call_id)) is not None and r.kind != "approved":
                    log.warning("thread %s: call %s settled elsewhere", thread.id, call_id)
                    return thread
            except StoreError:
                raise
            except Exception:
                # The database is unreachable for a while (a restart, a
                # failover): the outcome is kept here and written when it is
                # back, for as long as this runner holds the thread.
                log.exception("thread %s: storing call %s's outcome failed", thread.id, call_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _context(self, thread: Thread) -> Context:
        """The request's messages, serializing only events new since the last request."""
        held = self._contexts.pop(thread.id, None)
        if held is not None and held[0] <= len(thread.events):
            n, parts = held
            parts = parts + message_parts(thread.events, n)
        else:
            parts = [self._system, *message_parts(thread.events)]
        self._contexts[thread.id] = (len(thread.events), parts)
        while len(self._contexts) > self.log.cached() + len(self._tasks):
            self._contexts.popitem(last=False)
        return Context(parts)

    async def _call_model(self, thread: Thread) -> Thread:
        seq = len(thread.events)
        try:
            return await self._record_reply(thread, await self._ask(thread))
        finally:
            # Whatever was shown of the reply is the stored event's to show now.
            self._show(thread.id, thread.state.origin, Delta(thread.id, seq, "", done=True))

    async def _ask(self, thread: Thread) -> list[Event]:
        """One model turn on the thread: the events its reply (or failure) makes."""
        errors = thread.state.consecutive_errors
        if errors:
            await asyncio.sleep(min(30.0, self.retry_delay * 2 ** (errors - 1)))
        origin, seq = thread.state.origin, len(thread.events)
        self._show(thread.id, origin, Activity(thread.id, "is thinking"))

        def on_text(piece: str) -> None:
            self._show(thread.id, origin, Delta(thread.id, seq, piece))

        # The reply streams only for someone to see it: a watcher of the
        # thread, or a channel that shows work in progress.
        watched = (self.live is not None and self.live.watched(thread.id)) or (
            origin is not None and hasattr(self.outbound.get(origin.channel), "show")
        )
        context = self._context(thread)
        with self.observe.span("threadbot.model", thread.id, {"threadbot.model": self.model.name}):
            started = time.perf_counter()
            try:
                reply = await self.model.complete(
                    context, self.tools.schemas(), on_text=on_text if watched else None
                )
            except ModelError as e:
                self.observe.model_called(time.perf_counter() - started, None, str(e))
                return [Error(message=str(e), kind="model", fatal=e.fatal)]
            self.observe.model_called(time.perf_counter() - started, reply.usage, None)
        return self._reply_events(thread, reply)

    def _show(self, thread_id: str, origin: Source | None, news: Delta | Activity) -> None:
        """Tell watchers, and the thread's own channel if it shows work in
        progress, what is happening now. Nothing of it is stored."""
        if self.live is not None:
            self.live.publish(news)
        channel = self.outbound.get(origin.channel) if origin is not None else None
        show = getattr(channel, "show", None)
        if show is not None:
            try:
                show(news, origin)
            except Exception:
                log.exception("thread %s: showing %s failed", thread_id, type(news).__name__)

    async def _record_reply(self, asked: Thread, new: list[Event]) -> Thread:
        """Append a reply to the thread the model was asked about."""
        try:
            return await self.log.append(asked, new)
        except SeqConflict:
            fresh = self.log.load(asked.id)
            if all(isinstance(e, Delivered) for e in fresh.events[len(asked.events) :]):
                # Only bookkeeping arrived meanwhile: the reply still fits.
                return await self._try_append(fresh, new)
            return fresh  # someone spoke meanwhile: ask the model again

    def _reply_events(self, thread: Thread, reply: ModelReply) -> list[Event]:
        if not reply.calls:
            if not reply.text:
                return [Error(message="the model returned an empty reply", kind="model")]
            return [AssistantMessage(text=reply.text)]
        taken = thread.call_ids()
        calls: list[Event] = []
        errors: list[Event] = []
        for i, mc in enumerate(reply.calls):
            call_id = mc.id or f"call_{uuid.uuid4().hex[:12]}"
            if call_id in taken:  # some servers number calls from 0 every time
                call_id = f"{call_id}_{uuid.uuid4().hex[:8]}"
            taken.add(call_id)
            problem: str | None = None
            try:
                arguments = json.loads(mc.arguments or "{}")
            except json.JSONDecodeError as e:
                arguments, problem = {}, f"arguments are not valid JSON: {e}"
            if not isinstance(arguments, dict):
                arguments, problem = {}, "arguments must be a JSON object"
            t = self.tools.get(mc.name)
            if t is None:
                problem = f"unknown tool {mc.name!r}; available: {', '.join(self.tools.names())}"
            elif problem is None:
                problem = t.validate(arguments)
            needed, ruled = (False, None)
            if t is not None and problem is None:
                needed, ruled = t.needs_approval(arguments)
            call = ToolCall(
                call_id=call_id,
                name=mc.name,
                arguments=arguments,
                text=reply.text if i == 0 else None,
                requires_approval=needed,
                approvers=t.approvers if t else (),
                self_approval=None if t is None or t.self_approval else False,
                approvals_required=t.approvals_required
                if needed and t and t.approvals_required > 1
                else None,
                ruled=ruled,
            )
            if problem is None and (needed or mc.name == HUMAN_INPUT):
                call = self._with_timers_and_reach(thread, call, t.timers if t else None)
            calls.append(call)
            if problem is not None:
                # Invalid calls never reach an approver: the model corrects them first.
                errors.append(ToolResult(call_id=call_id, output=problem, is_error=True))
        return calls + errors

    def _with_timers_and_reach(
        self, thread: Thread, call: ToolCall, own: Timers | None
    ) -> ToolCall:
        """The call as it waits for a person: its timers (the tool's, else the
        operator's), and the approvers to reach on channels other than the
        thread's own."""
        question = call.name == HUMAN_INPUT
        timers = self.question_timers if question else merge_timers(own, self.approval_timers)
        reach = None
        if not question:
            decide = deciders(self.people, call.approvers, thread.state.origin)
            if decide.by != "starter":  # the starter is in the thread already
                reach = self._reach(thread, decide.specs)
        return call.model_copy(update={"timers": timers, "reach": reach})

    def _reach(self, thread: Thread, specs: Sequence[str]) -> dict[str, tuple[str, ...]] | None:
        return reach(self.people, self.outbound, thread.state.origin, specs)

    def _fire(self, thread: Thread, timer: Timer) -> list[Event]:
        """The events a due timer makes: a reminder, an escalation, or the
        deadline's outcome."""
        c = next(c for c in thread.state.open_calls if c.call.call_id == timer.call_id)
        call, t = c.call, c.call.timers
        assert t is not None
        question = call.name == HUMAN_INPUT
        origin = thread.state.origin
        if timer.kind == "remind":
            if question:
                to: tuple[str, ...] = (
                    (origin.person or origin.user or "",) if origin else ()
                ) + c.escalated
                to = tuple(x for x in to if x)
            else:
                decide = deciders(self.people, call.approvers, origin, c.escalated)
                done = [a.source for a in c.approvals]
                to = (
                    tuple(
                        p.id
                        for p in self.people.expand(decide.specs)
                        if not any(self.people.named(a, (p.id,)) for a in done)
                    )
                    or decide.specs
                )
            return [Reminder(call_id=call.call_id, to=to, reach=self._reach(thread, to))]
        if timer.kind == "escalate":
            to = t.escalate_to
            return [Escalated(call_id=call.call_id, to=to, reach=self._reach(thread, to))]
        after = _span(t.deadline or 0)
        if question:
            answer = HumanResponse(
                call_id=call.call_id, text="no answer by the deadline", source=DEADLINE
            )
            if t.on_deadline == "fail":
                return [
                    answer,
                    Error(
                        message=f"no answer by the deadline ({after})", kind="deadline", fatal=True
                    ),
                ]
            return [answer]
        if t.on_deadline == "approve":
            return [
                Approval(
                    call_id=call.call_id,
                    approved=True,
                    comment=f"nobody decided within {after}; the tool approves itself then",
                    source=DEADLINE,
                )
            ]
        rejected = Approval(
            call_id=call.call_id,
            approved=False,
            comment=f"nobody approved it by the deadline ({after} after it was asked)",
            source=DEADLINE,
        )
        if t.on_deadline == "fail":
            return [
                rejected,
                Error(
                    message=f"nobody approved {call.name} by the deadline ({after})",
                    kind="deadline",
                    fatal=True,
                ),
            ]
        return [rejected]

    async def _run_tool(self, thread: Thread, c: OpenCall) -> Thread:
        call_id = c.call.call_id
        self._show(thread.id, thread.state.origin, Activity(thread.id, f"running {c.call.name}"))
        t = self.tools.get(c.call.name)
        if t is None:
            result = ToolResult(
                call_id=call_id, output=f"tool {c.call.name!r} is not available", is_error=True
            )
            return await self._append_outcome(thread, [result], call_id)
        if not t.idempotent:
            try:
                thread = await self.log.append(thread, [ToolStarted(call_id=call_id)])
            except SeqConflict:
                return self.log.load(thread.id)
        approved_by = c.approval.source.who() if c.approval else None
        attributes = {"threadbot.tool": t.name, "threadbot.call_id": call_id}
        with self.observe.span("threadbot.tool", thread.id, attributes):
            started = time.perf_counter()
            outcome = await t.invoke(c.arguments, ToolContext(thread.id, call_id, approved_by))
            self.observe.tool_called(t.name, time.perf_counter() - started, outcome.is_error)
        done: Event
        if outcome.deferred:
            done = ToolDeferred(call_id=call_id, note=outcome.output)
        else:
            done = ToolResult(call_id=call_id, output=outcome.output, is_error=outcome.is_error)
        return await self._append_outcome(thread, [done], call_id)

    async def _deliver(self, thread: Thread, step: Deliver, *, fresh: bool) -> Thread | None:
        channel = self.outbound[step.channel]
        notice = build_notice(
            thread.id, thread.events, step.seq, step.channel, self.people, fresh=fresh
        )
        try:
            if notice is None:
                raise ValueError(f"#{step.seq} is nothing a channel delivers")
            delivery = await channel.deliver(notice)
        except Exception as e:
            self.observe.delivered(step.channel, False)
            if isinstance(notice, Outcome):
                # Only tidies a post (its buttons go): never holds the thread up.
                log.warning(
                    "thread %s: updating the post of #%d failed: %s", thread.id, step.seq, e
                )
                delivery = Delivery(refs={"failed": str(e)[:200] or type(e).__name__})
            else:
                self._retry_delivery(thread, step)
                return None
        else:
            self.observe.delivered(step.channel, True)
        self._delivery_failures.pop(thread.id, None)
        record = Delivered(of_seq=step.seq, channel=step.channel, refs=delivery.refs)
        while True:
            try:
                return await self.log.append(thread, [record], routes=delivery.routes)
            except SeqConflict:
                thread = self.log.load(thread.id)

    def _retry_delivery(self, thread: Thread, step: Deliver) -> None:
        """The platform is down or refused: try again later, backing off."""
        attempt = self._delivery_failures.get(thread.id, 0)
        self._delivery_failures[thread.id] = attempt + 1
        delay = min(300.0, max(0.05, self.retry_delay) * 2**attempt)
        log.exception(
            "thread %s: delivering #%d to %s failed; retrying in %.1f s",
            thread.id,
            step.seq,
            step.channel,
            delay,
        )
        asyncio.get_running_loop().call_later(delay, self.kick, thread.id)
