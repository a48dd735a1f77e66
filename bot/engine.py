"""The runner on a thread of its own, with an event loop of its own.

`threadbot serve` answers HTTP requests, Slack events and mail on one event
loop and runs the agent on another. With both on one loop, a busy agent (a
hundred threads calling a fast model) queues every inbound request behind its
work, and Slack retries an event it has not seen acknowledged within three
seconds. The two sides share nothing but the database: each has its own
connection and cache, as two processes would, and an append on one side is
seen by the other through the store. The inbound side hands thread ids over
with `kick`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .notices import Outbound
from .runner import Runner

__all__ = ["Engine"]

T = TypeVar("T")


class Engine:
    """Stands in for a `Runner` on the calling side: the same methods, each
    carried out on the engine's loop."""

    def __init__(self, make_runner: Callable[[], Runner]) -> None:
        self._make_runner = make_runner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; returns once its runner is built (in that thread,
        so that its database connection belongs to it)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._runner = self._make_runner()
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="threadbot-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    @property
    def runner(self) -> Runner:
        assert self._runner is not None, "the engine has not started"
        return self._runner

    @property
    def outbound(self) -> dict[str, Outbound]:
        return self.runner.outbound

    def on_its_thread(self) -> bool:
        """Whether the caller runs on the engine's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def kick(self, thread_id: str) -> None:
        """Hand the thread over once the caller's current step on its loop is
        done. The step that appended a person's answer goes on to write the
        HTTP response (or Slack's acknowledgement) without yielding; handed
        over at once, the agent's first burst of work would compete with it
        for the interpreter, and the person would wait for both."""
        assert self._loop is not None
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:  # not called from a loop: nothing to let finish
            self._loop.call_soon_threadsafe(self.runner.kick, thread_id)
            return
        here.call_soon(self._loop.call_soon_threadsafe, self.runner.kick, thread_id)

    def watch_timers(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.runner.watch_timers)

    def send_webhooks(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.runner.send_webhooks)

    def active(self) -> list[str]:
        return self.runner.active()

    async def settle(self, thread_id: str) -> None:
        await self._there(self.runner.settle(thread_id))

    async def settle_all(self) -> None:
        await self._there(self.runner.settle_all())

    async def shutdown(
        self, grace: float = 0.0, *, then: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Let runs pause for up to `grace` seconds, cancel the rest, run
        `then` on the engine's loop (closing what lives there), close the
        engine's connection and stop its thread."""
        runner = self.runner

        async def stop() -> None:
            await runner.shutdown(grace)
            if then is not None:
                await then()
            runner.log.store.close()

        await self._there(stop())
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop (where what tools use lives)."""
        return await self._there(coro)

    async def _there(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))
