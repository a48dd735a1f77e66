"""Server-Sent Events: a thread's news as it happens, for the web page and any
client that follows a thread without asking again and again.

A stream is plain text, one frame after another, each ended by a blank line:

    event: tool_call            a stored event: its type, its seq as the id,
    id: 7                       and its JSON as GET /threads/{id} shows it
    data: {"seq":7,"type":"tool_call",...}

    event: delta                a piece of the reply the model is writing
    data: {"seq":8,"text":"Deploying "}

    event: activity             what the agent is doing, or null
    data: {"doing":"running deploy"}

    : still here                the heartbeat: a comment, ignored by clients

`Streams` admits the process's streams (a cap, so that a flood of
connections cannot hold memory without end) and ends them all when the
server stops: uvicorn waits for every open response before it exits. A
stream also ends once the credential it was opened with no longer holds (a
token revoked, a session signed out): it asks again from time to time, and
at once when someone signs out here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bot import Activity, Appended, Delta, News, Watch

__all__ = ["HEARTBEAT", "Busy", "EventStream", "Streams", "ThreadFeed", "frame", "with_seq"]

HEARTBEAT = b": still here\n\n"
GATHER = 0.01
"""Seconds a stream waits after news before it writes, so that what comes in
a burst (a tool starts, returns, the model is asked again) goes out in one
write: each write is a system call, and every stream of a thread writes at
the same moment."""
MEDIA_TYPE = "text/event-stream"

log = logging.getLogger(__name__)


class Busy(Exception):
    """No stream can be opened now: too many are open, or the server is stopping."""


def wants_stream(accept: str | None) -> bool:
    """Whether an Accept header asks for an event stream (as EventSource does)."""
    for part in (accept or "").split(","):
        media, _, params = part.partition(";")
        if media.strip().lower() == MEDIA_TYPE and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def frame(event: str, data: str, seq: int | None = None) -> bytes:
    """One frame. `data` is JSON on one line (JSON text has no raw line breaks)."""
    head = f"event: {event}\nid: {seq}\n" if seq is not None else f"event: {event}\n"
    return f"{head}data: {data}\n\n".encode()


def with_seq(seq: int, body: str) -> str:
    """A stored event's JSON with its seq first, as GET /threads/{id} shows it.
    The stored JSON is an object that always holds the event's type, so it
    opens with `{"`: the seq goes in front of its first member."""
    return f'{{"seq":{seq},{body[1:]}'


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Streams:
    """The open streams of this server. `admit` refuses beyond `limit`, and
    once `close` has ended them all (the server is stopping)."""

    def __init__(
        self,
        *,
        limit: int = 1000,
        per_person: int = 16,
        heartbeat: float = 15.0,
        recheck: float = 1.0,
    ) -> None:
        self.limit = limit
        self.per_person = per_person
        """Streams one person (one authenticated identity) may hold open: a
        few tabs, not every slot of the server."""
        self.heartbeat = heartbeat
        """Seconds between heartbeats on a quiet stream: a proxy or a client
        that drops idle connections sees traffic, and a gone client is found."""
        self.recheck = recheck
        """Seconds at least between two looks at whether a stream's credential
        still holds (it is looked at before news goes out, and at each
        heartbeat)."""
        self._open: dict[Watch, Holder] = {}
        """Each open stream's watch, and whose it is."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._open)

    def admit(
        self, watch: Callable[[], Watch], who: str, valid: Callable[[], bool] | None = None
    ) -> Watch:
        """A new stream for `who` (as authenticated), unless the server or
        they hold as many as they may. `valid`: whether their credential
        still holds (None: it lasts as long as the server)."""
        if self._closed:
            raise Busy("the server is stopping")
        if len(self._open) >= self.limit:
            raise Busy(f"{self.limit} event streams are open, the most this server keeps")
        if sum(1 for holder in self._open.values() if holder.who == who) >= self.per_person:
            raise Busy(f"you have {self.per_person} event streams open, the most one person may")
        opened = watch()
        self._open[opened] = Holder(who, valid)
        return opened

    def holder(self, watch: Watch) -> Holder | None:
        return self._open.get(watch)

    def release(self, watch: Watch) -> None:
        watch.close()
        self._open.pop(watch, None)

    def signed_out(self, who: str) -> None:
        """`who` signed out or lost a credential here: end at once their
        streams whose credential no longer holds."""
        for watch, holder in list(self._open.items()):
            if holder.who == who and holder.valid is not None and not _holds(holder.valid):
                watch.close()

    def close(self) -> None:
        """End every stream, and open no more."""
        self._closed = True
        for watch in list(self._open):
            watch.close()


@dataclass(frozen=True, slots=True)
class Holder:
    who: str
    valid: Callable[[], bool] | None


def _holds(valid: Callable[[], bool]) -> bool:
    try:
        return valid()
    except Exception:  # the store is away: the client comes back and is asked again
        log.exception("looking up an event stream's credential failed; ending the stream")
        return False


class EventStream(Response):
    """A response that sends `first`, then `frames(news)` for each piece of
    the watch's news, and a heartbeat whenever nothing happened for a while.

    It ends when the watch ends (the client fell behind, or the server is
    stopping: the client reconnects with the last id it saw), when `frames`
    returns None, or when the credential it was opened with no longer holds
    (a token revoked, a session signed out or expired: looked at before news
    goes out and at each heartbeat, at most once per `Streams.recheck`); a
    client that goes away closes the watch."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        streams: Streams,
        watch: Watch,
        first: bytes,
        frames: Callable[[News], bytes | None],
    ) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._streams = streams
        self._watch = watch
        self._first = first
        self._frames = frames
        self._quiet = True
        holder = streams.holder(watch)
        self._valid = holder.valid if holder is not None else None
        self._checked = time.monotonic()
        """When the credential was last found to hold (authenticated just now)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self._watch
        listener = asyncio.create_task(self._until_gone(receive))
        beating: asyncio.Task[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self._first, "more_body": True})
            beating = asyncio.create_task(self._beat(send))
            ended = False
            async for news in watch:
                await asyncio.sleep(GATHER)
                if not self._holds():
                    break
                out = []
                for item in (news, *watch.ready()):
                    data = self._frames(item)
                    if data is None:
                        ended = True
                        break
                    out.append(data)
                if any(out):
                    self._quiet = False
                    body = b"".join(out)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if ended:
                    break
            beating.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            if beating is not None:
                beating.cancel()
            self._streams.release(watch)

    def _holds(self) -> bool:
        """Whether the stream's credential still holds; once it does not, the
        watch is closed (the stream ends, and sends nothing more)."""
        if self._valid is None:
            return True
        now = time.monotonic()
        if now - self._checked < self._streams.recheck:
            return True
        self._checked = now
        holds = _holds(self._valid)
        if not holds:
            self._watch.close()
        return holds

    async def _beat(self, send: Send) -> None:
        """A heartbeat after each quiet while: its own task, so that each
        piece of news costs the stream no timer."""
        while True:
            self._quiet = True
            await asyncio.sleep(self._streams.heartbeat)
            if not self._holds():
                return
            if self._quiet:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})

    async def _until_gone(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._watch.close()


class ThreadFeed:
    """What one client following a thread is sent: each stored event once, in
    order, after `last`; the reply as the model writes it; what the agent does.

    `may_see` (for people who are not admins) is asked again whenever events
    arrive, and before a piece of the reply or of the agent's activity goes
    out if it was last asked `every` seconds ago or more (a reply comes in
    many small pieces): someone who no longer may read the thread gets
    nothing more, and the stream ends."""

    def __init__(
        self, last: int, may_see: Callable[[], bool] | None = None, *, every: float = 1.0
    ) -> None:
        self.last = last
        """The last seq sent."""
        self._read = last
        """The last seq the catch-up read from the store: pieces of a reply
        stored by then are stale."""
        self._may_see = may_see
        self._every = every
        self._asked = time.monotonic()
        """When `may_see` was last asked (the route asked it at the open)."""

    def first(self, rows: Sequence[tuple[int, str, str]]) -> bytes:
        """The stored events after `last`, read once the watch was made."""
        out = [frame(type_, with_seq(seq, body), seq) for seq, type_, body in rows]
        if rows:
            self.last = self._read = rows[-1][0]
        return b"".join(out)

    def _sees(self, *, now: bool) -> bool:
        if self._may_see is None:
            return True
        at = time.monotonic()
        if not now and at - self._asked < self._every:
            return True
        self._asked = at
        return self._may_see()

    def __call__(self, news: News) -> bytes | None:
        if isinstance(news, Appended):
            if news.first_seq > self.last + 1:
                return None  # a gap: the client reads it from the store when it reconnects
            if not self._sees(now=True):
                return None
            out = []
            for i, (type_, body) in enumerate(news.events):
                seq = news.first_seq + i
                if seq > self.last:
                    out.append(frame(type_, with_seq(seq, body), seq))
            self.last = max(self.last, news.last_seq)
            return b"".join(out)
        if isinstance(news, Delta):
            if news.seq <= self._read:
                return b""
            if not self._sees(now=False):
                return None
            piece: dict[str, Any] = {"seq": news.seq, "text": news.text}
            if news.done:
                piece["done"] = True
            return frame("delta", _json(piece))
        if isinstance(news, Activity):
            if not self._sees(now=False):
                return None
            return frame("activity", _json({"doing": news.doing}))
        return b""  # `Changed` reaches thread watchers as the events it brought
