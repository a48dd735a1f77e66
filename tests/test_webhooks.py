"""Signed webhooks: stored with the append that causes them, sent to a real
receiver that checks every signature with the `standardwebhooks` package,
at least once across a SIGKILL and exactly once when nothing fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import ThreadBot
from bot.api import IN_PROCESS
from bot.errors import UsageError
from bot.events import AssistantMessage, UserMessage
from bot.log import ThreadLog
from bot.webhooks import Webhooks, new_secret
from store import EventStore, Outbox, SeqConflict, Store

from .conftest import make_bot, settled
from .fakes import REPO, FakeOpenAI, ServerProcess, ask, clean_environ, free_port, text
from .test_http import env_for, wait_status
from .webhook_receiver import Receiver

pytestmark = pytest.mark.anyio

SECRET = new_secret()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET).serve() as r:
        yield r


def hooks(*urls: str, **timing: float) -> Webhooks:
    timing.setdefault("first_retry", 0.05)
    return Webhooks(urls, SECRET, **timing)


@pytest.fixture
async def hooked(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, receiver: Receiver
) -> AsyncIterator[ThreadBot]:
    b = make_bot(db_path, fake_openai, webhooks=hooks(receiver.url))
    await b.resume_all()  # starts the sender, as `threadbot serve` does
    yield b
    await b.close()
    b.store.close()


async def wait_delivered(bot: ThreadBot, receiver: Receiver) -> None:
    """Until nothing is left to send (every webhook stored was delivered or
    given up), looked at after each request the receiver gets."""
    store = bot.store.reopen()
    try:
        await asyncio.to_thread(receiver.wait_for, lambda _: not Outbox(store).pending())
    finally:
        store.close()


async def test_each_change_of_status_is_sent_once_signed_in_order(
    hooked: ThreadBot, fake_openai: FakeOpenAI, receiver: Receiver
) -> None:
    fake_openai.add(ask("Which version?", ["1.4", "1.5"]), text("Deployed 1.5."))
    thread_id = await hooked.launch("deploy the api")
    await settled(hooked, thread_id)
    await asyncio.to_thread(receiver.wait_for, lambda r: len(r.got) == 1)
    await hooked.respond(thread_id, "1.5")
    view = await settled(hooked, thread_id)
    assert view.state.status == "done"
    await wait_delivered(hooked, receiver)

    assert receiver.refused == []
    assert receiver.types() == ["thread.waiting", "thread.resumed", "thread.done"]
    waiting, resumed, done = receiver.got
    # The id names the event after which the thread had that status.
    assert waiting.id == f"msg_{thread_id}_1"
    assert waiting.data["data"]["status"] == "waiting_for_human"
    assert waiting.data["data"]["previous_status"] == "running"
    assert waiting.data["data"]["pending"]["question"] == "Which version?"
    assert waiting.data["data"]["pending"]["options"] == ["1.4", "1.5"]
    assert resumed.id == f"msg_{thread_id}_2"
    assert resumed.data["data"]["previous_status"] == "waiting_for_human"
    assert done.id == f"msg_{thread_id}_{len(view.events) - 1}"
    assert done.data["data"] == {
        "thread_id": thread_id,
        "seq": len(view.events) - 1,
        "status": "done",
        "previous_status": "running",
        "title": "deploy the api",
        "reply": "Deployed 1.5.",
    }
    # Exactly once each: three webhooks, three attempts, all delivered.
    attempts = Outbox(hooked.store).attempts()
    assert sorted((a.id, a.attempt, a.status, a.state) for a in attempts) == sorted(
        (r.id, 1, 204, "delivered") for r in receiver.got
    )


async def test_failed_and_cancelled_threads_are_told(
    hooked: ThreadBot, fake_openai: FakeOpenAI, receiver: Receiver
) -> None:
    fake_openai.add({"status": 401, "error": "invalid api key"})  # the thread fails
    failing = await hooked.launch("anything")
    assert (await settled(hooked, failing)).state.status == "failed"
    fake_openai.add(ask("Which version?"))
    waiting = await hooked.launch("deploy")
    await settled(hooked, waiting)
    await hooked.cancel(waiting, "not today")
    await settled(hooked, waiting)
    await wait_delivered(hooked, receiver)
    by_thread = {(r.data["data"]["thread_id"], r.type): r.data["data"] for r in receiver.got}
    assert set(by_thread) == {
        (failing, "thread.failed"),
        (waiting, "thread.waiting"),
        (waiting, "thread.cancelled"),
    }
    assert "401" in by_thread[failing, "thread.failed"]["error"]
    assert by_thread[waiting, "thread.cancelled"]["previous_status"] == "waiting_for_human"


async def test_a_receiver_that_fails_gets_it_again_with_the_same_id(
    hooked: ThreadBot, fake_openai: FakeOpenAI, receiver: Receiver
) -> None:
    receiver.answers.extend([500, 503])
    fake_openai.add(ask("Which version?"))
    thread_id = await hooked.launch("deploy")
    await settled(hooked, thread_id)
    await wait_delivered(hooked, receiver)
    assert [(r.id, r.answered) for r in receiver.got] == [
        (f"msg_{thread_id}_1", 500),
        (f"msg_{thread_id}_1", 503),
        (f"msg_{thread_id}_1", 204),
    ]
    log = sorted(Outbox(hooked.store).attempts(), key=lambda a: a.attempt)
    assert [(a.attempt, a.status, a.error) for a in log] == [
        (1, 500, "HTTP 500"),
        (2, 503, "HTTP 503"),
        (3, 204, None),
    ]
    assert {a.state for a in log} == {"delivered"}


async def test_a_webhook_signed_with_another_secret_is_refused_by_the_receiver(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, receiver: Receiver
) -> None:
    """The receiver's check is real: the same webhooks signed with a key it
    does not hold are refused, and the sender keeps trying, then gives up."""
    wrong = Webhooks((receiver.url,), new_secret(), first_retry=0.05, give_up_after=0.3)
    b = make_bot(db_path, fake_openai, webhooks=wrong)
    try:
        await b.resume_all()
        fake_openai.add(ask("Which version?"))
        thread_id = await b.launch("deploy")
        await settled(b, thread_id)
        await wait_delivered(b, receiver)
    finally:
        await b.close()
    log = Outbox(b.store).attempts()
    b.store.close()
    assert receiver.got == []
    assert receiver.refused and set(receiver.refused) == {"No matching signature found"}
    assert len(log) == len(receiver.refused) >= 2
    assert {(a.status, a.state) for a in log} == {(401, "failed")}


async def test_a_tampered_body_or_an_old_timestamp_does_not_verify(receiver: Receiver) -> None:
    """What the receiver checks, beside the key: the body and the time."""
    from datetime import UTC, datetime, timedelta

    from standardwebhooks import Webhook

    body = json.dumps({"type": "thread.done", "data": {"thread_id": "x"}})
    now = datetime.now(UTC)
    good = Webhook(SECRET).sign("msg_x_1", now, body)
    headers = {"webhook-id": "msg_x_1", "webhook-timestamp": str(int(now.timestamp()))}
    async with httpx.AsyncClient() as c:
        ok = await c.post(
            receiver.url, content=body, headers={**headers, "webhook-signature": good}
        )
        tampered = await c.post(
            receiver.url,
            content=body.replace('"x"', '"y"'),
            headers={**headers, "webhook-signature": good},
        )
        old = now - timedelta(minutes=10)
        stale = await c.post(
            receiver.url,
            content=body,
            headers={
                "webhook-id": "msg_x_1",
                "webhook-timestamp": str(int(old.timestamp())),
                "webhook-signature": Webhook(SECRET).sign("msg_x_1", old, body),
            },
        )
    assert (ok.status_code, tampered.status_code, stale.status_code) == (204, 401, 401)
    assert receiver.refused == ["No matching signature found", "Message timestamp too old"]


async def test_a_receiver_that_is_down_gets_it_once_it_is_up(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    port = free_port()  # nobody listens there yet
    url = f"http://127.0.0.1:{port}/hooks"
    b = make_bot(db_path, fake_openai, webhooks=hooks(url, max_retry=0.3))
    try:
        await b.resume_all()
        fake_openai.add(ask("Which version?"))
        thread_id = await b.launch("deploy")
        await settled(b, thread_id)
        store = b.store.reopen()
        await asyncio.to_thread(until, lambda: len(Outbox(store).attempts()) >= 2)
        with Receiver(SECRET).serve(port=port) as receiver:
            await asyncio.to_thread(receiver.wait_for, lambda _: not Outbox(store).pending())
        log = sorted(Outbox(store).attempts(), key=lambda a: a.attempt)
        store.close()
    finally:
        await b.close()
        b.store.close()
    assert [r.id for r in receiver.got] == [f"msg_{thread_id}_1"]
    *refused, last = log
    assert all(a.status is None and "ConnectError" in (a.error or "") for a in refused)
    assert (last.status, last.error, last.state) == (204, None, "delivered")


def until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Until `check()` holds, looked at every 10 ms (what the sender records)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.01)


def test_an_append_that_loses_a_race_stores_no_webhook(tmp_path: Path) -> None:
    """The outbox row is written in the append's transaction: a refused
    append (another writer took the seq) leaves none behind."""
    store = EventStore(tmp_path / "t.db")
    log = ThreadLog(store)
    log.webhooks = ("http://127.0.0.1:9/hooks",)
    thread = log.create_sync("t1", [UserMessage(text="hi", source=IN_PROCESS)])

    log.append_sync(thread, [AssistantMessage(text="one")])  # done: a webhook
    with pytest.raises(SeqConflict):
        log.append_sync(thread, [AssistantMessage(text="two")])  # stale: refused
    pending = Outbox(store).pending()
    store.close()
    assert [(d.id, d.type) for d in pending] == [("msg_t1_1", "thread.done")]
    assert json.loads(pending[0].payload)["data"]["reply"] == "one"


def test_the_outbox_keeps_its_rows_in_both_stores(make_store: Callable[[], Store]) -> None:
    """Rows handed to an append land with it; claims keep two senders apart
    and a gone sender's claims are taken back."""
    from store import NewRow, OutboxRow

    store = make_store()
    row = OutboxRow("msg_a_1", "http://x/h", "thread.done", "a", 1, '{"type":"thread.done"}')
    store.create("a", [NewRow("user_message", "{}")], status="running", title="t", origin="{}")
    store.append("a", 1, [NewRow("assistant_message", "{}")], status="done", outbox=[row])
    with pytest.raises(SeqConflict):
        other = OutboxRow("msg_a_2", "http://x/h", "thread.done", "a", 2, "{}")
        store.append("a", 1, [NewRow("assistant_message", "{}")], status="done", outbox=[other])
    outbox = Outbox(store)
    [due] = outbox.due(float("inf"))
    assert (due.id, due.url, due.payload, due.attempts) == row_values(row)
    assert outbox.claim(due, "sender-1", until=due.next_at + 60)
    assert not outbox.claim(due, "sender-2", until=due.next_at + 60)  # taken
    assert outbox.due(due.next_at + 1) == []  # claimed, not due meanwhile
    assert outbox.claimants() == ["sender-1"]
    assert outbox.release("sender-1", now=due.next_at) == 1
    [again] = outbox.due(due.next_at)
    outbox.record(
        again, at=1.0, status=204, error=None, duration=0.01, state="delivered", next_at=2.0
    )
    assert outbox.pending() == []
    [attempt] = outbox.attempts()
    assert (attempt.id, attempt.attempt, attempt.status, attempt.state) == (
        "msg_a_1",
        1,
        204,
        "delivered",
    )


def row_values(row: Any) -> tuple[str, str, str, int]:
    return (row.id, row.url, row.payload, 0)


def test_settings_refuse_a_bad_url_or_secret(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="http"):
        Webhooks(("ftp://example.com/x",), SECRET)
    import base64

    for weak in (
        "not base64!",
        "hunter2",  # no prefix
        "whsec_AAAA",  # 3 bytes
        "whsec_" + base64.b64encode(b"k" * 16).decode(),  # too short
        "whsec_" + base64.b64encode(b"k" * 32).decode() + "$$",  # loose base64
        "wh_" + base64.b64encode(b"k" * 32).decode(),
    ):
        with pytest.raises(UsageError, match="whsec_ followed by 24 to 64 bytes"):
            Webhooks(("https://example.com/x",), weak)
    Webhooks(("https://example.com/x",), "whsec_" + base64.b64encode(b"k" * 24).decode())
    env = {"THREADBOT_DB": str(tmp_path / "t.db"), "THREADBOT_WEBHOOKS": "example.com/hooks"}
    refused = cli(env, "--local", "threads")
    assert refused.returncode == 1
    assert refused.stderr == (
        "threadbot: a webhook URL must be http(s)://…, not 'example.com/hooks'\n"
    )


# -- `threadbot serve`, killed -------------------------------------------------------


def test_each_event_arrives_at_least_once_across_a_sigkill(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, receiver: Receiver
) -> None:
    """The receiver holds the first webhook without answering, and the
    server is killed meanwhile: the restarted server sends it again, with the
    same id, and the rest follow once each."""
    fake_openai.add(ask("Which version?"), text("Deployed."))
    env = env_for(
        db_path,
        fake_openai,
        ledger,
        THREADBOT_WEBHOOKS=receiver.url,
        THREADBOT_WEBHOOK_SECRET=SECRET,
        THREADBOT_WEBHOOK_RETRY="0.1",
    )
    receiver.holding = True
    server = ServerProcess(env).start()
    with httpx.Client(base_url=server.url) as c:
        thread_id = c.post("/threads", json={"text": "deploy"}).json()["id"]
        receiver.wait_for(lambda r: len(r.got) == 1)  # on its way, unanswered
    server.kill()
    receiver.release()

    restarted = ServerProcess(env, port=server.port).start()
    try:
        # The banner shows where webhooks go, not their paths (which may hold tokens).
        assert "hooks:  " + receiver.url.replace("/hooks", "/…") in restarted.output()
        receiver.wait_for(lambda r: len(r.got) == 2)
        with httpx.Client(base_url=restarted.url) as c:
            c.post(f"/threads/{thread_id}/responses", json={"text": "1.5"})
            wait_status(c, thread_id, "done")
        receiver.wait_for(lambda r: r.types()[-1:] == ["thread.done"])
    finally:
        restarted.stop()
    assert receiver.refused == []
    last = len(EventStore(db_path).load(thread_id)) - 1
    assert [(r.id, r.type, r.answered) for r in receiver.got] == [
        (f"msg_{thread_id}_1", "thread.waiting", 0),  # the kill cut it off
        (f"msg_{thread_id}_1", "thread.waiting", 204),  # sent again, same id
        (f"msg_{thread_id}_2", "thread.resumed", 204),
        (f"msg_{thread_id}_{last}", "thread.done", 204),
    ]
    log = cli(env, "webhooks", "log", "--thread", thread_id)
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert len(lines) == 3  # one attempt each: the cut-off one never answered
    assert all(" 204 " in line and "delivered" in line for line in lines)
    assert f"msg_{thread_id}_{last}  thread.done" in lines[0]  # newest first


def test_a_generated_secret_is_printed_once_and_kept(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    env = env_for(db_path, fake_openai, ledger, THREADBOT_WEBHOOKS="https://example.com/hooks")
    first, second = (cli(env, "--local", "threads") for _ in range(2))
    printed = [line for line in first.stderr.splitlines() if "new secret" in line]
    assert len(printed) == 1
    secret = printed[0].rsplit(" ", 1)[-1]
    assert secret.startswith("whsec_")
    assert "new secret" not in second.stderr
    store = EventStore(db_path)
    assert store.meta("webhook_secret", "") == secret
    store.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadbot", *args],
        cwd=REPO,
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_change_made_from_the_shell_waits_in_the_outbox_for_the_server(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    """`threadbot --local` appends (and stores webhooks) without sending
    them: the server sends them when it runs; the log lists them meanwhile."""
    fake_openai.add(ask("Which version?"))
    env = env_for(
        db_path,
        fake_openai,
        ledger,
        THREADBOT_WEBHOOKS="https://example.com/hooks",
        THREADBOT_WEBHOOK_SECRET=SECRET,
    )
    # A mistyped database is named, not read as one with no webhooks.
    missing = cli(env, "webhooks", "log")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == f"threadbot: --db {db_path}: no such database file\n"
    assert cli(env, "--local", "threads").returncode == 0
    assert cli(env, "webhooks", "log").stdout == "no webhooks\n"
    launched = cli(env, "--local", "launch", "deploy")
    assert launched.returncode == 0, launched.stderr
    log = cli(env, "webhooks", "log")
    [line] = log.stdout.splitlines()
    assert line.startswith("pending  msg_") and "thread.waiting" in line
    assert line.endswith("https://example.com/…")  # a path may hold a token
    for bad in ("0", "-1", "x"):
        refused = cli(env, "webhooks", "log", "--limit", bad)
        assert refused.returncode == 2 and "--limit" in refused.stderr, refused.stderr


async def test_two_servers_on_one_database_deliver_each_webhook_once(
    make_store: Callable[[], Store], fake_openai: FakeOpenAI, ledger: Path, receiver: Receiver
) -> None:
    """Two bots (as two replicas, each sending on a thread of its own) send
    from one outbox. Every first attempt gets a 500, so each retry falls due
    for both senders at the same moment and both may read it as due: one
    claims it, and the receiver gets each webhook once per attempt."""
    from bot import OpenAIModel
    from bot.tools import load_tools

    def replica() -> ThreadBot:
        model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
        return ThreadBot(
            make_store(), model, load_tools("tests.ledger_tools"), webhooks=hooks(receiver.url)
        )

    bots = [replica(), replica()]
    try:
        for b in bots:
            b.run_in_thread()
            await b.resume_all()
        ids = []
        receiver.fail_first = True
        for i in range(6):
            fake_openai.add(ask(f"Which version of service {i}?"))
            ids.append(await bots[i % 2].launch(f"deploy service {i}"))
            await settled(bots[i % 2], ids[-1])
        await wait_delivered(bots[0], receiver)
    finally:
        for b in bots:
            await b.close()
    answered = [r.id for r in receiver.got if r.answered == 204]
    assert sorted(answered) == sorted(f"msg_{t}_1" for t in ids)
    assert len(receiver.got) == 12  # one 500 and one 204 each: no retry sent twice


def test_more_webhooks_due_than_can_be_sent_at_once_are_all_sent_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    """One more webhook due than the sender sends at once, to a receiver that
    answers at once: every one arrives, and the agent's other work on the
    same loop keeps running meanwhile (the sender once spun without yielding
    once its slots were full)."""
    import threading

    from bot.webhooks import IN_FLIGHT, WebhookSender
    from store.queries import INSERT_OUTBOX

    secret = new_secret()
    store = EventStore(tmp_path / "t.db")
    ticks = 0
    stop = threading.Event()
    try:
        with Receiver(secret).serve() as r:
            now = time.time()
            for i in range(IN_FLIGHT + 1):
                body = json.dumps({"type": "thread.done", "data": {"i": i}})
                store.execute(
                    INSERT_OUTBOX, [f"msg_t{i}_1", r.url, "thread.done", f"t{i}", 1, body, now, now]
                )

            async def main() -> None:
                nonlocal ticks
                sender = WebhookSender(
                    store, Webhooks((r.url,), secret), owner="me", is_gone=lambda _: False
                )
                sender.start()
                while not stop.is_set():  # the agent's other work on the loop
                    ticks += 1
                    await asyncio.sleep(0.01)
                await sender.stop()

            loop = threading.Thread(target=lambda: asyncio.run(main()))
            loop.start()
            r.wait_for(lambda rr: len(rr.got) == IN_FLIGHT + 1, timeout=10)
            wanted = sorted(f"msg_t{i}_1" for i in range(IN_FLIGHT + 1))
            assert sorted(g.id for g in r.got) == wanted
            seen = ticks
            deadline = time.monotonic() + 10
            while ticks == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ticks > seen
    finally:
        stop.set()
        loop.join(10)
        store.close()


async def test_the_log_forgets_old_webhooks_and_a_url_taken_out_gets_nothing(
    make_store: Callable[[], Store],
) -> None:
    """The sender forgets delivered and given-up webhooks older than a week
    (with their attempts), keeps what is pending however old, and sends
    nothing more to a URL no longer configured: its webhooks are given up,
    with the reason in the log."""
    from bot.webhooks import KEEP, WebhookSender
    from store.queries import INSERT_OUTBOX

    store = make_store()
    secret = new_secret()
    with Receiver(secret).serve() as r:
        gone = "http://127.0.0.1:9/taken-out"
        now = time.time()
        old = now - KEEP - 60

        def put(msg: str, url: str, created: float) -> None:
            body = json.dumps({"type": "thread.done", "data": {}})
            store.execute(INSERT_OUTBOX, [msg, url, "thread.done", "t", 1, body, created, created])

        put("msg_old_1", r.url, old)
        put("msg_old_2", r.url, old)
        put("msg_recent_1", r.url, now - 60)
        outbox = Outbox(store)
        for due in outbox.due(now):
            if due.id in ("msg_old_1", "msg_recent_1"):
                outbox.record(
                    due,
                    at=now,
                    status=204,
                    error=None,
                    duration=0.01,
                    state="delivered",
                    next_at=now,
                )
        put("msg_removed_1", gone, now)
        # msg_old_2 is still pending: it is sent, not forgotten.
        sender = WebhookSender(
            store, Webhooks((r.url,), secret), owner="me", is_gone=lambda _: False
        )
        sender.start()
        try:
            await asyncio.to_thread(r.wait_for, lambda rr: len(rr.got) == 1)
            for _ in range(500):  # until the sender has recorded everything
                if not outbox.pending():
                    break
                await asyncio.sleep(0.02)
        finally:
            await sender.stop()
    assert [g.id for g in r.got] == ["msg_old_2"]
    kept = store.execute("SELECT id, state FROM webhook_outbox ORDER BY id").fetchall()
    assert [tuple(k) for k in kept] == [
        ("msg_old_2", "delivered"),
        ("msg_recent_1", "delivered"),
        ("msg_removed_1", "failed"),
    ]
    attempts = store.execute("SELECT id, error FROM webhook_attempts ORDER BY id").fetchall()
    assert [tuple(a) for a in attempts] == [
        ("msg_old_2", None),
        ("msg_recent_1", None),
        ("msg_removed_1", "not sent: the URL is no longer in THREADBOT_WEBHOOKS"),
    ]
