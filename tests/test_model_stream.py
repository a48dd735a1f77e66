"""The model's reply as it is written: the real `openai` client asks the local
fake server for a stream (`stream: true`), hands each piece of text on as it
arrives and puts the tool calls together from their pieces. The stream is
only for show: what is stored is the whole reply, once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import Delta, ModelError, News, OpenAIModel, ThreadBot
from bot.context import Context, system_part
from bot.model import ModelReply

from .conftest import settled
from .fakes import REPO, FakeOpenAI, Reply, ServerProcess, ask, calls, chunks, text
from .test_http import env_for, wait_status

pytestmark = pytest.mark.anyio

CONTEXT = Context(
    [system_part("You are a test."), json.dumps({"role": "user", "content": "hi"}).encode()]
)

# Two calls whose arguments are long enough to come in many pieces.
TWO_CALLS: Reply = {
    "text": "Checking both services first.",
    "calls": [
        ("service_status", {"service": "api", "note": "before the deploy of 1.4.2"}),
        ("deploy", '{"service": "worker", "version": "1.4.2-rc.1"}'),
    ],
}


@pytest.fixture
async def model(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIModel]:
    m = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test", max_retries=0)
    yield m
    await m.aclose()


async def test_text_reaches_on_text_piece_by_piece_while_the_model_writes(
    fake_openai: FakeOpenAI, model: OpenAIModel
) -> None:
    # The fake holds back the rest of the reply until the first word has
    # been handed on: a client that waited for the whole reply would stall.
    hold = threading.Event()
    fake_openai.add({"text": "Deployed 1.4.2 to the api, all checks green.", "hold": hold})
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        hold.set()

    reply = await model.complete(CONTEXT, [], on_text=on_text)

    assert fake_openai.released == [True]
    assert pieces == ["Deployed ", "1.4.2 ", "to ", "the ", "api, ", "all ", "checks ", "green."]
    assert reply == ModelReply(text="Deployed 1.4.2 to the api, all checks green.")
    assert fake_openai.requests[0]["stream"] is True
    # Token counts are not asked for: some compatible servers refuse the field (400).
    assert "stream_options" not in fake_openai.requests[0]


async def _whole(fake: FakeOpenAI, model: OpenAIModel, reply: Reply) -> ModelReply:
    """The reply as a server that does not stream sends it."""
    fake.streams = False
    fake.add(reply)
    try:
        return await model.complete(CONTEXT, [])
    finally:
        fake.streams = True


def _calls(reply: ModelReply) -> list[tuple[str, Any]]:
    return [(c.name, c.arguments) for c in reply.calls]


@pytest.mark.parametrize("indexless", [False, True], ids=["openai", "no index"])
async def test_two_tool_calls_in_many_pieces_make_the_reply_a_whole_completion_does(
    fake_openai: FakeOpenAI, model: OpenAIModel, indexless: bool
) -> None:
    streamed_reply = {**TWO_CALLS, "indexless": indexless}
    sent = chunks(streamed_reply, {})
    pieces = [c for c in sent if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert len(pieces) == (2 if indexless else 17)  # each call's head, then its arguments
    fake_openai.add(streamed_reply)
    said: list[str] = []

    streamed = await model.complete(CONTEXT, [], on_text=said.append)
    whole = await _whole(fake_openai, model, TWO_CALLS)

    assert streamed.text == whole.text == "".join(said) == "Checking both services first."
    assert _calls(streamed) == _calls(whole)
    assert [json.loads(c.arguments) for c in streamed.calls] == [
        {"service": "api", "note": "before the deploy of 1.4.2"},
        {"service": "worker", "version": "1.4.2-rc.1"},
    ]
    ids = [c.id for c in streamed.calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2


async def test_a_chunk_with_only_token_counts_is_read_past(
    fake_openai: FakeOpenAI, model: OpenAIModel
) -> None:
    fake_openai.add({"text": "Fine.", "usage": True})
    assert await model.complete(CONTEXT, [], on_text=lambda piece: None) == ModelReply(text="Fine.")


async def test_with_nobody_to_show_it_to_the_reply_is_asked_for_whole(
    fake_openai: FakeOpenAI, model: OpenAIModel
) -> None:
    fake_openai.add(text("Nobody watches."))
    assert await model.complete(CONTEXT, []) == ModelReply(text="Nobody watches.")
    assert "stream" not in fake_openai.requests[0]


async def test_a_server_that_answers_plain_json_still_works(
    fake_openai: FakeOpenAI, model: OpenAIModel
) -> None:
    said: list[str] = []
    fake_openai.streams = False
    fake_openai.add(text("In one piece."), calls(("deploy", {"service": "api"})))

    assert await model.complete(CONTEXT, [], on_text=said.append) == ModelReply(
        text="In one piece."
    )
    assert _calls(await model.complete(CONTEXT, [])) == [("deploy", '{"service": "api"}')]
    assert fake_openai.requests[0]["stream"] is True  # it was asked for a stream all the same
    assert said == []  # nothing to show before the reply is whole


@pytest.mark.parametrize(
    ("how", "said"),
    [("cut", "the model's reply broke off"), ("end", "the model's stream ended before")],
    ids=["connection dropped", "body ended early"],
)
async def test_a_stream_that_breaks_midway_is_a_model_error(
    fake_openai: FakeOpenAI, model: OpenAIModel, how: str, said: str
) -> None:
    fake_openai.add({"text": "This reply will not get to its end.", how: 4})
    pieces: list[str] = []
    with pytest.raises(ModelError, match=said) as e:
        await model.complete(CONTEXT, [], on_text=pieces.append)
    assert not e.value.fatal
    assert pieces == ["This ", "reply ", "will "]


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (['{"choices": [{"delta": {"content": "Hel'], "is not JSON"),
        (['{"choices": "all of them"}'], "is not a chat completion"),
        (['["a", "list"]'], "is not a chat completion"),
        (["null"], "is not a chat completion"),
    ],
    ids=["cut JSON", "choices a string", "a list", "null"],
)
async def test_a_stream_of_something_else_is_a_model_error(
    fake_openai: FakeOpenAI, model: OpenAIModel, raw: list[str], said: str
) -> None:
    fake_openai.add({"raw": raw})
    with pytest.raises(ModelError, match=said) as e:
        await model.complete(CONTEXT, [], on_text=lambda piece: None)
    assert not e.value.fatal


@pytest.mark.parametrize(
    ("status", "fatal"), [(400, True), (401, True), (404, True), (422, True), (503, False)]
)
async def test_an_error_status_keeps_its_meaning(
    fake_openai: FakeOpenAI, model: OpenAIModel, status: int, fatal: bool
) -> None:
    fake_openai.add({"status": status, "error": "no such model"})
    with pytest.raises(ModelError, match=f"model error {status}") as e:
        await model.complete(CONTEXT, [])
    assert e.value.fatal is fatal


async def test_a_thread_whose_stream_breaks_asks_again_and_keeps_one_reply(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    hold = threading.Event()
    fake_openai.add(
        {"text": "Half a reply that breaks off here.", "cut": 5, "hold": hold},
        text("The whole reply."),
    )
    thread_id = await bot.launch("hi")
    watch = bot.watch(thread_id, after=0)
    hold.set()  # the watch is in place: let the stream go on (and break)
    view = await settled(bot, thread_id)
    watch.close()
    got: list[News] = [n async for n in watch]

    assert view.state.status == "done"
    assert [e.type for e in view.events] == ["user_message", "error", "assistant_message"]
    assert view.events[1].message.startswith("the model's reply broke off")
    assert view.events[2].text == "The whole reply."
    assert len(fake_openai.requests) == 2
    # Watchers saw the broken reply closed before the new one began.
    deltas = [(d.seq, d.text, d.done) for d in got if isinstance(d, Delta)]
    assert (1, "", True) in deltas
    closed = deltas.index((1, "", True))
    shown = [t for _, t, _ in deltas[:closed]]  # its first word may have come before the watch
    assert shown in (["a ", "reply ", "that "], ["Half ", "a ", "reply ", "that "])
    assert "".join(t for s, t, done in deltas[closed + 1 :] if s == 2) == "The whole reply."
    assert deltas[-1] == (2, "", True)


async def test_a_length_stop_with_no_content_is_an_empty_reply(
    bot: ThreadBot, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add({"text": None, "finish": "length"}, text("Shorter, then."))
    thread_id = await bot.launch("hi")
    view = await settled(bot, thread_id)
    assert [e.type for e in view.events] == ["user_message", "error", "assistant_message"]
    assert view.events[1].message == "the model returned an empty reply"


def test_a_server_killed_mid_stream_keeps_no_half_reply(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    """SIGKILL while the model streams to someone following the thread: the
    half reply was only shown, never stored; the restarted server asks the
    model again and stores one reply."""
    hold = threading.Event()
    half = "Halfway-words never stored, " * 20
    fake_openai.add(
        ask("Which one?"),
        {"text": half, "pause": 0.05, "hold": hold},
        text("Asked again, answered once."),
    )
    env = env_for(db_path, fake_openai, ledger)
    server = ServerProcess(env).start()
    try:
        with httpx.Client(base_url=server.url) as c:
            thread_id = c.post("/threads", json={"text": "tell me"}).json()["id"]
            wait_status(c, thread_id, "waiting_for_human")
            # Someone follows the thread: the model's next reply streams to them.
            events = f"/threads/{thread_id}/events"
            with c.stream("GET", events, headers={"Accept": "text/event-stream"}) as follow:
                assert follow.status_code == 200
                answered = c.post(f"/threads/{thread_id}/responses", json={"text": "the first"})
                assert answered.status_code == 202
                assert fake_openai.holding.wait(10)  # its first word is out, the rest to come
                assert fake_openai.requests[-1]["stream"] is True
                assert c.get(f"/threads/{thread_id}").json()["status"] == "running"
                server.kill()
    finally:
        hold.set()  # the rest goes to a dead connection

    restarted = ServerProcess(env, port=server.port).start()
    try:
        assert "resumed 1 running thread" in restarted.output()
        with httpx.Client(base_url=restarted.url) as c:
            body = wait_status(c, thread_id, "done")
    finally:
        restarted.stop()
    types = [e["type"] for e in body["events"]]
    assert types == ["user_message", "tool_call", "human_response", "assistant_message"]
    assert body["events"][-1]["text"] == "Asked again, answered once."
    _, first, again = fake_openai.requests
    assert first["messages"] == again["messages"]
    stored = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert b"tell me" in stored and b"Halfway-words" not in stored


async def test_the_demo_model_writes_its_text_replies_word_by_word() -> None:
    from bot.demo import DemoModel

    hello = json.dumps({"role": "user", "content": "hello"}).encode()
    pieces: list[str] = []
    reply = await DemoModel().complete(
        Context([system_part("x"), hello]), [], on_text=pieces.append
    )
    assert reply.text is not None and reply.text.startswith("(demo model) ")
    assert "".join(pieces) == reply.text and len(pieces) == len(reply.text.split())


def test_the_stream_cost_benchmark_runs_small() -> None:
    """`python -m tests.bench.stream_cost` runs and prints its table and JSON
    (figures are not asserted)."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.stream_cost", "--calls", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, _, rest = out.stdout.partition("\n[")
    assert "CPU streamed" in table
    rows = json.loads("[" + rest)
    assert [r["chunks"] for r in rows] == [56, 53, 503]
    assert all(r["streamed_cpu_ms"] > 0 and r["whole_cpu_ms"] > 0 for r in rows)
