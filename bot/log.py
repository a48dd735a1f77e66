"""Typed access to the store: a thread's events and derived state, kept in step.

A thread is read once and then only caught up: events are immutable and the
log is append-only, so a thread held in memory is always a correct prefix, and
one indexed query fetches whatever was appended since (by this process or
another). The cache is bounded; a paused thread that falls out of it costs
nothing but its rows.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from store import NewRow, SeqConflict, Store, UnknownThread

from .errors import ThreadNotFound
from .events import Event, dump_event, load_events, load_events_json
from .live import Appended, Live
from .observe import Observer
from .thread import Fold, Status, ThreadState, waiting_summary
from .webhooks import webhook_rows

__all__ = ["Thread", "ThreadLog", "deliver_to"]


@dataclass(frozen=True, slots=True)
class Thread:
    """A thread as read at one moment: its events and what they mean."""

    id: str
    events: list[Event]
    """Never changed in place: an append makes a new `Thread`."""
    fold: Fold
    state: ThreadState

    def call_ids(self) -> set[str]:
        return set(self.fold.open_calls) | set(self.fold.resolved)


def _rows(events: Iterable[Event]) -> list[NewRow]:
    return [NewRow(e.type, dump_event(e), e.key) for e in events]


def _projection(thread: Thread) -> dict[str, Any]:
    """The thread's row as its events make it (what an append changes in it
    besides its last seq)."""
    state = thread.state
    return {
        "status": state.status,
        "deliver_to": deliver_to(state),
        "waiting": waiting_summary(state),
        "due_at": state.due.at if state.due else None,
        "overdue_at": state.overdue_at,
    }


def deliver_to(state: ThreadState) -> str:
    """The channels the thread holds something undelivered for, as the
    store keeps them (" slack email ")."""
    if not state.undelivered:
        return ""
    return " " + " ".join(sorted({ch for _, ch in state.undelivered})) + " "


class ThreadLog:
    def __init__(
        self,
        store: Store,
        *,
        cache_events: int = 20_000,
        live: Live | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.live = live
        """Told of every append made through this log."""
        self.observer = observer or Observer()
        """Told of every append and how long it took, and of lost races."""
        self.webhooks: tuple[str, ...] = ()
        """URLs told of the changes of status that appends make: each such
        append stores one webhook per URL in its transaction (`bot.webhooks`)."""
        self.on_webhook: Callable[[], None] | None = None
        """Called after an append that stored webhooks (the sender wakes)."""
        self.cache_events = cache_events
        """Events kept in memory (about 1.5 KB each), besides pinned threads'."""
        self._cache: OrderedDict[str, Thread] = OrderedDict()
        self._held = 0
        """Events of the unpinned threads in the cache."""
        self._pinned: set[str] = set()
        self._fresh: set[str] = set()
        """Cached threads known to be current: nothing was committed by
        another connection since they were last read or written here."""

    def pin(self, thread_id: str) -> None:
        """Keep the thread cached until `unpin`: a thread being run is read
        again at every step, whatever else goes through the cache meanwhile."""
        if thread_id not in self._pinned:
            self._pinned.add(thread_id)
            if (held := self._cache.get(thread_id)) is not None:
                self._held -= len(held.events)

    def unpin(self, thread_id: str) -> None:
        if thread_id in self._pinned:
            self._pinned.discard(thread_id)
            if (held := self._cache.get(thread_id)) is not None:
                self._held += len(held.events)
                self._evict()

    def cached(self) -> int:
        """How many threads are held."""
        return len(self._cache)

    def _keep(self, thread: Thread) -> Thread:
        cache = self._cache
        old = cache.get(thread.id)
        if old is not None and len(old.events) > len(thread.events):
            return thread  # a later read of the thread is cached already
        cache[thread.id] = thread
        cache.move_to_end(thread.id)
        self._fresh.add(thread.id)
        if thread.id not in self._pinned:
            self._held += len(thread.events) - (len(old.events) if old else 0)
            self._evict()
        return thread

    def _evict(self) -> None:
        cache = self._cache
        skipped = 0
        while self._held > self.cache_events and skipped < len(cache):
            oldest = next(iter(cache))
            if oldest in self._pinned:
                cache.move_to_end(oldest)
                skipped += 1
                continue
            self._held -= len(cache.pop(oldest).events)
            self._fresh.discard(oldest)

    def changed_elsewhere(self) -> bool:
        """Whether another connection committed since the last look (then
        every cached thread is read again before it is used)."""
        if self.store.changed_elsewhere():
            self._fresh.clear()
            return True
        return False

    def load(self, thread_id: str) -> Thread:
        """The thread as it is now in the store."""
        self.changed_elsewhere()
        held = self._cache.get(thread_id)
        if held is None:
            array = self.store.load_json(thread_id)
            if array is None:
                raise ThreadNotFound(thread_id)
            events = load_events_json(array)
            fold = Fold().extend(events)
            return self._keep(Thread(thread_id, events, fold, fold.state()))
        if thread_id in self._fresh:
            self._cache.move_to_end(thread_id)
            return held
        bodies = self.store.load_from(thread_id, len(held.events))
        if not bodies:
            self._cache.move_to_end(thread_id)
            self._fresh.add(thread_id)
            return held
        new = load_events(bodies)
        fold = held.fold.copy().extend(new)
        return self._keep(Thread(thread_id, held.events + new, fold, fold.state()))

    def load_upto(self, thread_id: str, seq: int) -> list[Event]:
        bodies = self.store.load(thread_id, upto=seq)
        if not bodies:
            raise ThreadNotFound(thread_id)
        return load_events(bodies)

    def _prepare_create(
        self, thread_id: str, events: Sequence[Event], parent: tuple[str, int] | None
    ) -> tuple[Thread, dict[str, Any]]:
        fold = Fold().extend(events)
        thread = Thread(thread_id, list(events), fold, fold.state())
        origin = thread.state.origin
        projection = {
            **_projection(thread),
            "title": thread.state.title,
            "origin": origin.model_dump_json(exclude_none=True) if origin else "{}",
            "parent": parent,
        }
        return thread, projection

    async def create(
        self,
        thread_id: str,
        events: Sequence[Event],
        *,
        parent: tuple[str, int] | None = None,
        routes: Iterable[str] = (),
    ) -> Thread:
        """Store a new thread; returns once it is on disk."""
        thread, projection = self._prepare_create(thread_id, events, parent)
        rows = _rows(events)
        outbox = self._outbox(None, thread)
        started = time.perf_counter()
        await self.store.create_async(thread_id, rows, routes=routes, **outbox, **projection)
        self.observer.appended([r.type for r in rows], time.perf_counter() - started)
        self._tell(thread, 0, rows, outbox)
        return self._keep(thread)

    def create_sync(
        self,
        thread_id: str,
        events: Sequence[Event],
        *,
        parent: tuple[str, int] | None = None,
        routes: Iterable[str] = (),
    ) -> Thread:
        """`create` on the caller's thread (scripts, fixtures)."""
        thread, projection = self._prepare_create(thread_id, events, parent)
        rows = _rows(events)
        outbox = self._outbox(None, thread)
        started = time.perf_counter()
        self.store.create(thread_id, rows, routes=routes, **outbox, **projection)
        self.observer.appended([r.type for r in rows], time.perf_counter() - started)
        self._tell(thread, 0, rows, outbox)
        return self._keep(thread)

    def preview(self, thread: Thread, new: Sequence[Event]) -> Thread:
        """The thread as it will be once `new` is appended after what it
        holds; nothing is stored."""
        fold = thread.fold.copy().extend(new)
        return Thread(thread.id, thread.events + list(new), fold, fold.state())

    async def append(
        self,
        thread: Thread,
        new: Sequence[Event],
        *,
        routes: Iterable[str] = (),
    ) -> Thread:
        """Append `new` after what `thread` holds and return the thread with
        them, once they are on disk. Raises `SeqConflict` if another writer
        got there first."""
        after = self.preview(thread, new)
        rows = _rows(new)
        outbox = self._outbox(thread.state.status, after)
        started = time.perf_counter()
        try:
            await self.store.append_async(
                thread.id, len(thread.events), rows, routes=routes, **outbox, **_projection(after)
            )
        except UnknownThread as e:
            raise ThreadNotFound(thread.id) from e
        except SeqConflict:
            self._fresh.discard(thread.id)  # read it again, whatever else says
            self.observer.append_conflict()
            raise
        self.observer.appended([r.type for r in rows], time.perf_counter() - started)
        self._tell(after, len(thread.events), rows, outbox)
        return self._keep(after)

    def append_sync(
        self, thread: Thread, new: Sequence[Event], *, routes: Iterable[str] = ()
    ) -> Thread:
        """`append` on the caller's thread (scripts, fixtures)."""
        after = self.preview(thread, new)
        rows = _rows(new)
        outbox = self._outbox(thread.state.status, after)
        started = time.perf_counter()
        try:
            seq = len(thread.events)
            self.store.append(thread.id, seq, rows, routes=routes, **outbox, **_projection(after))
        except UnknownThread as e:
            raise ThreadNotFound(thread.id) from e
        except SeqConflict:
            self._fresh.discard(thread.id)
            self.observer.append_conflict()
            raise
        self.observer.appended([r.type for r in rows], time.perf_counter() - started)
        self._tell(after, seq, rows, outbox)
        return self._keep(after)

    def _outbox(self, before: Status | None, after: Thread) -> dict[str, Any]:
        """The store's `outbox` argument for an append that takes the thread
        from status `before` (None: it is new) to `after`'s; empty if it
        makes no webhook."""
        if not self.webhooks:
            return {}
        rows = webhook_rows(self.webhooks, after.id, before, after.state, after.events)
        return {"outbox": rows} if rows else {}

    def _tell(
        self,
        thread: Thread,
        first_seq: int,
        rows: Sequence[NewRow],
        outbox: dict[str, Any] | None = None,
    ) -> None:
        if outbox and self.on_webhook is not None:
            self.on_webhook()
        if self.live is not None and self.live.watching():
            events = tuple((r.type, r.body) for r in rows)
            self.live.publish(Appended(thread.id, first_seq, events, thread.state.status))
