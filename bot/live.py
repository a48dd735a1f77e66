"""News of threads as it happens, for whoever watches. Nothing here is stored.

The events are the truth and stay in the store. `Live` only tells watchers at
once what they would otherwise find by asking again:

    Appended   events were stored (with their JSON, so that a watcher need
               not read them back)
    Delta      a piece of the reply the model is writing; the reply is
               stored as one event at `seq` when it is complete
    Activity   what the agent is busy with in the thread ("is thinking",
               "running deploy"), or that it stopped

News comes from any OS thread (the agent runs on a loop of its own) and is
handed to the watchers on their loop (the one that serves requests), in one
hop however many watch. What another process wrote reaches
it as `Changed`: the events after the last seq seen are read from the store
once, and go out as `Appended`.

A watcher that falls behind is dropped rather than buffered without end
(`Watch.lost`); it reads what it missed from the store, as a client
reconnecting with the last seq it saw does.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Activity", "Appended", "Changed", "Delta", "Live", "News", "Watch"]


@dataclass(frozen=True, slots=True)
class Appended:
    thread_id: str
    first_seq: int
    events: tuple[tuple[str, str], ...]
    """Each event's type and stored JSON (without its seq), from `first_seq` on."""
    status: str
    """The thread's status once they were stored."""

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - 1


@dataclass(frozen=True, slots=True)
class Delta:
    thread_id: str
    seq: int
    """The seq the reply will have once it is stored."""
    text: str
    """The new piece (empty once `done`)."""
    done: bool = False
    """The reply is complete (stored, or failed): whatever was shown of it is
    now the stored event's to show."""


@dataclass(frozen=True, slots=True)
class Activity:
    thread_id: str
    doing: str | None
    """A few words ("is thinking", "running deploy"); None when the agent
    stopped working on the thread (it waits, or is done)."""


@dataclass(frozen=True, slots=True)
class Changed:
    """Another process may have written in the thread (in any watched
    thread, when `thread_id` is None)."""

    thread_id: str | None = None


News = Appended | Delta | Activity | Changed

Reader = Callable[[str, int], tuple[Sequence[tuple[str, str]], str]]
"""A thread's events from a seq on, as `(type, JSON)`, and its status now:
read on the watchers' loop."""


class Watch:
    """One watcher's news, in order: `async for news in watch`. Ends when
    closed, or when it fell `limit` items behind (then `lost` is True)."""

    def __init__(self, live: Live, thread_id: str | None, limit: int) -> None:
        self.thread_id = thread_id
        """None: every thread's `Appended`, and `Changed(None)` when another
        process may have written anywhere."""
        self.lost = False
        self._live = live
        self._limit = limit
        self._items: deque[News] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def _put(self, news: News) -> None:
        if self._closed:
            return
        if len(self._items) >= self._limit:
            self.lost = True
            self.close()
            return
        self._items.append(news)
        self._ready.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._live._forget(self)

    def ready(self) -> list[News]:
        """The news already waiting, taken at once without waiting for more
        (a watcher that writes to a socket sends it in one piece)."""
        items = list(self._items)
        self._items.clear()
        return items

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> News:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class Live:
    def __init__(self, read: Reader) -> None:
        """`read` runs on the watchers' loop: the one the first `watch` came from."""
        self._read = read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._watches: dict[str | None, set[Watch]] = {}
        self._seen: dict[str, int] = {}
        """Per watched thread, the last seq handed out as `Appended`."""

    def watch(self, thread_id: str | None = None, *, after: int = -1, limit: int = 1000) -> Watch:
        """Start watching a thread (every thread: None) from the loop `Live`
        was made on. `after`: the last seq the watcher has already read."""
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("every watch of a Live is made on the same event loop")
        watch = Watch(self, thread_id, limit)
        with self._lock:
            self._watches.setdefault(thread_id, set()).add(watch)
            if thread_id is not None:
                # The first watcher's place starts the thread's count; a later
                # one's own reading covers whatever it has that others lack.
                self._seen.setdefault(thread_id, after)
        return watch

    def watched(self, thread_id: str) -> bool:
        """Whether anyone watches the thread itself (news such as a `Delta`
        need not be made for nobody)."""
        return thread_id in self._watches

    def watching(self) -> bool:
        return bool(self._watches)

    def watches(self) -> list[Watch]:
        with self._lock:
            return [w for ws in self._watches.values() for w in ws]

    def _forget(self, watch: Watch) -> None:
        with self._lock:
            others = self._watches.get(watch.thread_id)
            if others is None:
                return
            others.discard(watch)
            if not others:
                del self._watches[watch.thread_id]
                if watch.thread_id is not None:
                    self._seen.pop(watch.thread_id, None)

    def publish(self, news: News) -> None:
        """Hand `news` to its watchers; from any thread, never blocking."""
        loop = self._loop
        if not self._watches or loop is None:
            return
        if isinstance(news, (Delta, Activity)) and news.thread_id not in self._watches:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._hand_out(news)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._hand_out, news)

    def _hand_out(self, news: News) -> None:
        if isinstance(news, Changed):
            self._catch_up(news.thread_id)
            return
        if isinstance(news, Appended):
            seen = self._seen.get(news.thread_id)
            if seen is not None:
                if news.last_seq <= seen:
                    return  # already handed out (read back after a `Changed`)
                if news.first_seq > seen + 1:
                    self._catch_up(news.thread_id)  # a gap: read it all from the store
                    return
                self._seen[news.thread_id] = news.last_seq
            everyone = self._watches.get(None, ())
        else:
            everyone = ()
        for watch in (*self._watches.get(news.thread_id, ()), *everyone):
            watch._put(news)

    def _catch_up(self, thread_id: str | None) -> None:
        if thread_id is None:
            for watch in tuple(self._watches.get(None, ())):
                watch._put(Changed())
            for tid in [t for t in self._watches if t is not None]:
                self._catch_up(tid)
            return
        seen = self._seen.get(thread_id)
        if seen is None:
            return  # nobody watches it itself
        try:
            rows, status = self._read(thread_id, seen + 1)
        except Exception:
            return  # the store is away: the next change, or the watcher's own look, catches up
        if rows:
            self._hand_out(Appended(thread_id, seen + 1, tuple(rows), status))
