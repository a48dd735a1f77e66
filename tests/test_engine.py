"""The engine's hand-off: a thread kicked from the request loop reaches the
agent's loop only once the kicking step is over."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.engine import Engine

pytestmark = pytest.mark.anyio


class _Recorder:
    """Stands in for the runner on the engine's thread: records kicks."""

    def __init__(self) -> None:
        self.outbound: dict[str, Any] = {}
        self.kicked: list[str] = []
        self.log = self
        self.store = self

    def kick(self, thread_id: str) -> None:
        self.kicked.append(thread_id)

    async def shutdown(self, grace: float) -> None:
        pass

    def close(self) -> None:
        pass


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


async def test_a_kick_waits_for_the_kicking_step_to_end() -> None:
    recorder = _Recorder()
    engine = Engine(lambda: recorder)  # type: ignore[arg-type, return-value]
    engine.start()
    try:
        engine.kick("t1")
        # The step goes on (a handler writing its response); the engine's
        # thread is free meanwhile and must not have started the thread.
        time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point
        assert recorder.kicked == []
        await _until(lambda: recorder.kicked == ["t1"])
        # From outside any loop there is no step to wait for.
        await asyncio.to_thread(engine.kick, "t2")
        await _until(lambda: recorder.kicked == ["t1", "t2"])
    finally:
        await engine.shutdown()
