"""Appending and running leave nothing for the cycle collector.

Reference counting frees what an append or a run makes as soon as it is
done with. What is left in cycles waits for the collector, which stops the
whole process while it looks; so nothing on these paths should make cycles.
The collector keeps what it finds (`DEBUG_SAVEALL`) so that a failure says
what it was.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot import ScriptedModel, Source, ThreadBot, Toolbox, tool
from bot.events import HumanResponse, ToolCall, ToolResult, UserMessage
from bot.log import ThreadLog
from bot.model import ask, call, say
from store import EventStore

pytestmark = pytest.mark.anyio

ANN = Source(channel="slack", user="U1", name="Ann")


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """Collect what was in cycles before, then keep (rather than free) every
    object found in a cycle until the end of the block; the list holds them."""
    found: list[object] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def kinds(objects: list[object]) -> Counter[str]:
    return Counter(type(o).__qualname__ for o in objects)


async def test_appends_make_no_cycles(tmp_path: Path) -> None:
    log = ThreadLog(EventStore(tmp_path / "t.db"))
    thread = await log.create("t1", [UserMessage(text="deploy the api", source=ANN)])

    def turn(i: int) -> list[ToolCall | ToolResult | HumanResponse]:
        call_id = f"c{i}"
        return [
            ToolCall(call_id=call_id, name="deploy", arguments={"service": "api", "n": [i]}),
            ToolResult(call_id=call_id, output={"deployed": i}),
            HumanResponse(call_id=call_id, text="thanks", source=ANN),
        ]

    thread = await log.append(thread, turn(0))  # warm up
    thread = log.append_sync(thread, turn(1))
    with cyclic_garbage() as garbage:
        for i in range(2, 52, 2):
            thread = await log.append(thread, turn(i))
            thread = log.append_sync(thread, turn(i + 1))
            thread = log.load("t1")
    assert len(thread.events) == 1 + 3 * 52
    assert garbage == [], kinds(garbage)
    log.store.close()


@tool(requires_approval=True)
def deploy(service: str, version: str) -> str:
    """Deploy a service."""
    return f"deployed {service} {version}"


async def test_a_launch_question_approval_round_trip_makes_no_cycles(tmp_path: Path) -> None:
    """A thread launched, asked a question, answered, asked for approval,
    approved, its tool run and its answer recorded, through the Python API."""
    model = ScriptedModel()
    bot = ThreadBot(EventStore(tmp_path / "t.db"), model, Toolbox([deploy]))

    async def round_trip() -> None:
        model.enqueue(
            ask("Which version?"), call("deploy", service="api", version="1.4.2"), say("Done.")
        )
        thread_id = await bot.launch("deploy the api", source=ANN)
        steps: list[Callable[[], Awaitable[object]]] = [
            lambda: bot.respond(thread_id, "1.4.2", source=ANN),
            lambda: bot.decide(thread_id, True, source=ANN.model_copy(update={"admin": True})),
        ]
        for step in steps:
            await bot.settle(thread_id)
            await step()
        await bot.settle(thread_id)
        assert bot.get(thread_id).state.status == "done"

    await round_trip()  # warm up
    with cyclic_garbage() as garbage:
        for _ in range(10):
            await round_trip()
    await bot.close()
    bot.store.close()
    assert garbage == [], kinds(garbage)
