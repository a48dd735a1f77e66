"""The live news of threads (`ThreadBot.watch`): appends, the reply as the
model writes it, and what the agent is doing. Nothing of it is stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import (
    Activity,
    Appended,
    Changed,
    Delta,
    News,
    ScriptedModel,
    ThreadBot,
    ThreadNotFound,
    Toolbox,
    Watch,
    tool,
)
from bot.model import ask, call, say
from store import EventStore

pytestmark = pytest.mark.anyio


@tool(idempotent=True)
def lookup(name: str) -> str:
    """Look a name up."""
    return f"{name} is on call"


def _bot(db: Path, *replies: object) -> ThreadBot:
    return ThreadBot(EventStore(db), ScriptedModel.of(*replies), Toolbox([lookup]))  # type: ignore[arg-type]


async def _collect(watch: Watch, done: Callable[[list[News]], bool]) -> list[News]:
    """News until `done(news so far)`, within 10 s."""
    got: list[News] = []
    async with asyncio.timeout(10):
        async for news in watch:
            got.append(news)
            if done(got):
                return got
    raise AssertionError(f"the watch ended first: {got}")


def _status(status: str) -> Callable[[list[News]], bool]:
    return lambda got: any(isinstance(n, Appended) and n.status == status for n in got)


def _stored(got: list[News]) -> list[tuple[int, str]]:
    return [
        (a.first_seq + i, type_)
        for a in got
        if isinstance(a, Appended)
        for i, (type_, _) in enumerate(a.events)
    ]


@pytest.mark.parametrize("engine", [False, True], ids=["one loop", "engine thread"])
async def test_a_watcher_sees_every_append_once_in_order_the_reply_as_written_and_the_work(
    tmp_path: Path, engine: bool
) -> None:
    bot = _bot(
        tmp_path / "t.db",
        call("lookup", name="ann"),
        say("Ann is on call this week."),
        ask("Page her?"),
    )
    if engine:
        bot.run_in_thread()
    try:
        thread_id = await bot.launch("who is on call?")
        watch = bot.watch(thread_id, after=0)
        # The agent stops after its answer; a message starts it again.
        got = await _collect(
            watch, lambda got: isinstance(got[-1], Activity) and got[-1].doing is None
        )
        assert _status("done")(got)
        await bot.send(thread_id, "page her if needed")
        got += await _collect(watch, _status("waiting_for_human"))
        watch.close()
        events = bot.get(thread_id).events
    finally:
        await bot.close()
        bot.store.close()

    stored = _stored(got)
    assert stored == [(s, e.type) for s, e in enumerate(events) if s > 0], stored
    # Each Appended carries the stored JSON of its events.
    first = next(a for a in got if isinstance(a, Appended))
    assert json.loads(first.events[0][1])["name"] == "lookup"
    # The answer came word by word before it was stored, at the seq it got.
    answer_seq = next(s for s, e in enumerate(events) if e.type == "assistant_message")
    pieces = [d for d in got if isinstance(d, Delta) and not d.done]
    assert "".join(d.text for d in pieces) == "Ann is on call this week."
    assert {d.seq for d in pieces} == {answer_seq}
    assert len(pieces) == 6
    stored_at = next(
        i for i, n in enumerate(got) if isinstance(n, Appended) and n.first_seq == answer_seq
    )
    assert all(got.index(d) < stored_at for d in pieces)
    doing = [n.doing for n in got if isinstance(n, Activity)]
    assert doing[:3] == ["is thinking", "running lookup", "is thinking"]
    assert doing.count(None) >= 1


async def test_a_write_by_another_process_reaches_the_watcher(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    bot = _bot(db, say("hello"), say("again"))
    other = _bot(db, say("from elsewhere"))
    try:
        thread_id = await bot.launch("hi")
        await asyncio.wait_for(bot.settle(thread_id), 10)
        watch = bot.watch(thread_id, after=len(bot.get(thread_id).events) - 1)
        everything = bot.watch()
        # A second bot on the same file stands for another process (the CLI).
        await other.send(thread_id, "a message from the CLI")
        got = await _collect(watch, lambda got: isinstance(got[-1], Appended))
        assert _stored(got)[0] == (2, "user_message")  # (its agent may have answered too)
        await _collect(everything, lambda got: isinstance(got[-1], Changed))
    finally:
        await other.close()
        other.store.close()
        await bot.close()
        bot.store.close()


async def test_a_watcher_that_falls_behind_is_dropped_not_buffered(tmp_path: Path) -> None:
    bot = _bot(tmp_path / "t.db", say("one two three four five six seven eight"))
    try:
        thread_id = await bot.launch("count")
        watch = bot.watch(thread_id, limit=3)
        await asyncio.wait_for(bot.settle(thread_id), 10)
        seen = [n async for n in watch]  # ends: it fell behind
        assert watch.lost and len(seen) == 3
        assert not bot.live.watching()
    finally:
        await bot.close()
        bot.store.close()


async def test_events_after_reads_the_store_and_refuses_an_unknown_thread(tmp_path: Path) -> None:
    bot = _bot(tmp_path / "t.db", say("hello"))
    try:
        thread_id = await bot.launch("hi")
        await asyncio.wait_for(bot.settle(thread_id), 10)
        rows = bot.events_after(thread_id, 0)
        assert [(s, t) for s, t, _ in rows] == [(1, "assistant_message")]
        assert json.loads(rows[0][2])["text"] == "hello"
        assert bot.events_after(thread_id, 1) == []
        assert [s for s, _, _ in bot.events_after(thread_id, -1)] == [0, 1]
        with pytest.raises(ThreadNotFound):
            bot.events_after("nope", -1)
    finally:
        await bot.close()
        bot.store.close()


async def test_closing_the_bot_ends_every_watch(tmp_path: Path) -> None:
    bot = _bot(tmp_path / "t.db", say("hello"))
    thread_id = await bot.launch("hi")
    await asyncio.wait_for(bot.settle(thread_id), 10)
    watch = bot.watch(thread_id)
    await bot.close()
    bot.store.close()
    assert [n async for n in watch] == []


async def test_a_place_past_the_end_blinds_no_watcher(tmp_path: Path) -> None:
    bot = _bot(tmp_path / "t.db", say("hello"), say("again"))
    try:
        thread_id = await bot.launch("hi")
        await asyncio.wait_for(bot.settle(thread_id), 10)
        far = bot.watch(thread_id, after=10_000)
        near = bot.watch(thread_id, after=1)
        await bot.send(thread_id, "more")
        for watch in (far, near):
            got = await _collect(watch, lambda got: isinstance(got[-1], Appended))
            assert _stored(got)[0] == (2, "user_message")
    finally:
        await bot.close()
        bot.store.close()
