"""For the event-stream tests: a client that reads Server-Sent Events over
httpx, a model that writes slowly on cue, and threadbot's HTTP stack served
by uvicorn in a thread of this process (for settings `serve` does not take:
the cap on streams, a quick heartbeat, a model of the test's own)."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot import Model, ModelError, ModelReply, People, ThreadBot, Toolbox, Watch
from bot.context import Context
from store import EventStore

from .fakes import free_port

STREAM = {"Accept": "text/event-stream"}
ADMIN = "admin-secret-token"
"""A `LiveServer` with people takes this as its admin token (as
tests/test_identity.py's servers do)."""


@dataclass
class Frame:
    event: str | None = None
    id: str | None = None
    data: Any = None
    comment: str | None = None
    """A comment line (the heartbeat), which is a frame of its own here."""


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of an event stream as they arrive."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    current = Frame()
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                current.data = json.loads("\n".join(data))
                yield current
            current, data = Frame(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if not name:
            yield Frame(comment=value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            data.append(value)


def read_until(
    stream: Iterator[Frame], done: Callable[[Frame], bool], into: list[Frame] | None = None
) -> list[Frame]:
    """Frames up to and including the first that is `done` (the client's read
    timeout fails a stream that stalls)."""
    got = into if into is not None else []
    for f in stream:
        got.append(f)
        if done(f):
            return got
    raise AssertionError(f"the stream ended first: {got}")


def stored(got: Sequence[Frame]) -> list[Frame]:
    """The frames of stored events (those with an id)."""
    return [f for f in got if f.id is not None]


@dataclass
class GatedModel:
    """Writes each text reply word by word, and stops before its last word
    until `gate` is set: what was written so far is all a watcher can see.
    Tool calls come at once. Not an LLM."""

    replies: deque[ModelReply] = field(default_factory=deque)
    gate: threading.Event = field(default_factory=threading.Event)
    name: str = "gated test model (not an LLM)"

    def add(self, *replies: ModelReply) -> None:
        self.replies.extend(replies)

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        if not self.replies:
            raise ModelError("the gated model has no reply left")
        reply = self.replies.popleft()
        words = re.findall(r"\S+\s*", reply.text or "")
        for piece in words[:-1]:
            if on_text is not None:
                on_text(piece)
            await asyncio.sleep(0.01)
        if words:
            await asyncio.to_thread(self.gate.wait, 30)
            if on_text is not None:
                on_text(words[-1])
        return reply


class LiveServer:
    """threadbot's HTTP stack, built as `serve` builds it (API, web page,
    sign-in, guards; the agent on a thread of its own), served by uvicorn on
    127.0.0.1 from a thread of this process. Local operator: no token."""

    def __init__(
        self,
        db: Path,
        model: Model,
        *,
        tools: Toolbox | None = None,
        heartbeat: float = 15.0,
        limit: int = 1000,
        per_person: int = 16,
        people: People | None = None,
        recheck: float = 1.0,
    ) -> None:
        from channels.sse import Streams

        class Counted(Streams):
            def admit(
                self,
                watch: Callable[[], Watch],
                who: str,
                valid: Callable[[], bool] | None = None,
            ) -> Watch:
                opened = super().admit(watch, who, valid)
                server.admitted += 1
                return opened

        server = self
        self.admitted = 0
        """Streams opened since the start."""
        self.db = db
        self.model = model
        self.tools = tools
        self.people = people
        """With people: they sign in or send their tokens, and ADMIN is the
        admin token; without: everyone is the local operator."""
        self.streams = Counted(
            limit=limit, per_person=per_person, heartbeat=heartbeat, recheck=recheck
        )
        self.mailed: queue.Queue[tuple[str, str]] = queue.Queue()
        """The sign-in links mailed: (address, link)."""
        self.port = free_port()
        self.bot: ThreadBot | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_streams(self) -> tuple[int, int]:
        """How many streams the server holds, and how many watches its bot has
        (asked on the server's loop)."""
        assert self._loop is not None and self.bot is not None
        bot = self.bot

        async def count() -> tuple[int, int]:
            return len(self.streams), len(bot.live.watches())

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(10)

    def wait_open_streams(self, n: int) -> None:
        """Until the server holds `n` streams and its bot `n` watches (a
        closed client is noticed when its connection closes, at once)."""
        deadline = time.monotonic() + 10
        while (now := self.open_streams()) != (n, n):
            assert time.monotonic() < deadline, f"(streams, watches) {now}, not {n}"
            time.sleep(0.02)

    async def _main(self) -> None:
        import uvicorn

        from channels import web
        from channels.http import create_app, protect
        from channels.web.sign_in import SignInSettings, mount_sign_in

        store = EventStore(self.db)
        bot = ThreadBot(store, self.model, self.tools, people=self.people)
        self.bot = bot
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bot.run_in_thread()
        app = create_app(bot, streams=self.streams)
        web.mount(app)
        mount_sign_in(
            app,
            credentials=bot.credentials,
            people=bot.people,
            settings=SignInSettings.from_env({}),
            send_link=self._mail,
            signed_out=self.streams.signed_out,
        )
        stack = protect(
            app,
            bot,
            hosts=["127.0.0.1"],
            admin_token=ADMIN if self.people is not None else None,
            local_operator=self.people is None,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                stack,
                host="127.0.0.1",
                port=self.port,
                http="httptools",
                lifespan="off",
                log_level="warning",
            )
        )
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
            self._ready.set()
            await self._stop.wait()
            # As `serve` does when it stops: end the streams, then the server.
            self.streams.close()
            server.should_exit = True
            await serving
        except BaseException as e:
            self._failed = e
            self._ready.set()
            raise
        finally:
            await bot.close()
            store.close()

    async def _mail(self, address: str, link: str) -> None:
        self.mailed.put((address, link))

    def sign_in(self, address: str) -> tuple[httpx.Client, str]:
        """A client holding a session of the person at `address` (signed in
        by the link the server mails), and its CSRF token."""
        r = httpx.post(self.url + "/auth/email", json={"email": address})
        assert r.status_code == 202, r.text
        to, link = self.mailed.get(timeout=10)
        assert to == address
        client = httpx.Client(base_url=self.url, timeout=10)
        assert client.get(link).status_code == 303
        return client, str(client.get("/auth/me").json()["csrf"])

    def __enter__(self) -> LiveServer:
        self._thread.start()
        self._ready.wait(20)
        if self._failed is not None:
            raise self._failed
        assert self._ready.is_set(), "the server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the server did not stop"


@contextmanager
def stream(
    client: httpx.Client, path: str, headers: dict[str, str] | None = None
) -> Iterator[Iterator[Frame]]:
    """An event stream of `path`, closed on leaving."""
    with client.stream("GET", path, headers={**STREAM, **(headers or {})}) as response:
        yield frames(response)
