"""/metrics, /healthz and /readyz of a real `threadbot serve`: a known run of
threads (a question answered over HTTP, a tool run, a model error retried, a
thread started by mail and answered through the SMTP relay), then the
scrape parsed with prometheus-client's own parser and checked number by
number; who may scrape, and what is refused; readiness as the store comes
and goes."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot import Delivery, Notice, OpenAIModel, Source, ThreadBot
from channels.email import EmailChannel, EmailSettings
from store import Credentials, EventStore
from threadbot.metrics import Metrics

from . import pg
from .conftest import make_bot
from .fakes import FakeOpenAI, Reply, ServerProcess, ask, calls, free_port, text
from .mail_fake import CaptureRelay
from .slack_fake import FakeSlack
from .test_http import env_for, wait_status
from .test_slack_socket import FakeSocket
from .test_webhooks import SECRET
from .webhook_receiver import Receiver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(client: httpx.Client, **headers: str) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


@pytest.fixture
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


def test_a_known_run_counted_exactly(
    tmp_path: Path, fake_openai: FakeOpenAI, relay: CaptureRelay
) -> None:
    smtp = free_port()
    env = env_for(
        tmp_path / "t.db",
        fake_openai,
        tmp_path / "ledger.txt",
        THREADBOT_SMTP=f"127.0.0.1:{smtp}",
        THREADBOT_EMAIL="bot@example.com",
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
    )
    unavailable = {"status": 503, "error": "overloaded"}
    fake_openai.add(
        ask("Which service?"),
        calls(("lookup", {"name": "api"})),
        # The SDK tries 3 more times; then the runner records the error and asks again.
        unavailable,
        unavailable,
        unavailable,
        unavailable,
        text("api is healthy."),
    )
    server = ServerProcess(env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            before = scrape(c)  # loopback, no token: the local operator, an admin
            assert value(before, "threadbot_threads", status="done") == 0
            assert value(before, "threadbot_model_calls_total", outcome="ok") == 0

            thread_id = c.post("/threads", json={"text": "is the api up?"}).json()["id"]
            wait_status(c, thread_id, "waiting_for_human")
            waiting = scrape(c)
            assert value(waiting, "threadbot_threads", status="waiting_for_human") == 1
            assert value(waiting, "threadbot_oldest_wait_seconds", kind="question") >= 0
            assert value(waiting, "threadbot_oldest_wait_seconds", kind="approval") == 0

            c.post(f"/threads/{thread_id}/responses", json={"text": "api"})
            done = wait_status(c, thread_id, "done")
            assert [e["type"] for e in done["events"]] == [
                "user_message",
                "tool_call",
                "human_response",
                "tool_call",
                "tool_result",
                "error",
                "assistant_message",
            ]

            fake_openai.add(text("Hello Ann."))
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = "ann@example.com", "bot@example.com", "hi"
            mail["Message-ID"] = "<hi@client>"
            mail.set_content("hello")
            with smtplib.SMTP("127.0.0.1", smtp) as s:
                s.send_message(mail)
            relay.wait_for(1)
            by_mail = next(t for t in c.get("/threads").json() if t["origin"] == "email")
            wait_status(c, by_mail["id"], "done")
            delivered = c.get(f"/threads/{by_mail['id']}").json()["events"][-1]
            assert delivered["type"] == "delivered"

            after = scrape(c)
    finally:
        server.stop()

    def v(name: str, **labels: str) -> float:
        return value(after, name, **labels)

    assert v("threadbot_threads", status="done") == 2
    for status in ("running", "waiting_for_human", "waiting_for_approval", "failed"):
        assert v("threadbot_threads", status=status) == 0
    assert v("threadbot_oldest_wait_seconds", kind="question") == 0

    # Events by type: the HTTP thread's seven, the mail thread's three.
    appended = {
        dict(labels)["type"]: n
        for (name, labels), n in after.items()
        if name == "threadbot_events_appended_total"
    }
    assert appended == {
        "user_message": 2,
        "tool_call": 2,
        "human_response": 1,
        "tool_result": 1,
        "error": 1,
        "assistant_message": 2,
        "delivered": 1,
    }
    # One transaction each: the HTTP thread's created, asked, answered,
    # the lookup chosen, run, the error, the reply; the mail thread's
    # created, answered, delivered.
    assert v("threadbot_append_seconds_count") == 10
    assert v("threadbot_append_seconds_bucket", le="+Inf") == 10
    assert v("threadbot_append_conflicts_total") == 0

    # Four replies and one error (the SDK's own retries are inside one call).
    assert v("threadbot_model_calls_total", outcome="ok") == 4
    assert v("threadbot_model_calls_total", outcome="error") == 1
    assert v("threadbot_model_call_seconds_count") == 5
    # Nobody watched, so each reply came whole, with its server's counts (1 and 1).
    assert v("threadbot_model_tokens_total", kind="prompt") == 4
    assert v("threadbot_model_tokens_total", kind="completion") == 4

    assert v("threadbot_tool_calls_total", tool="lookup", outcome="ok") == 1
    assert v("threadbot_tool_call_seconds_count") == 1
    assert v("threadbot_deliveries_total", channel="email", outcome="ok") == 1
    assert (
        "threadbot_deliveries_total",
        frozenset({("channel", "email"), ("outcome", "failed")}),
    ) not in after
    assert v("threadbot_lease_takeovers_total") == 0
    for outcome in ("delivered", "retrying", "failed"):
        assert v("threadbot_webhook_attempts_total", outcome=outcome) == 0
    # The process's own, from the same registry.
    assert v("process_resident_memory_bytes") > 0


# -- who may scrape ---------------------------------------------------------------------

ADMIN = "admin-token-for-tests"
SCRAPE = "scrape-token-for-tests"


@pytest.fixture(scope="module")
def guarded(model: FakeOpenAI, workdir: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server with an admin token and a metrics token, and two people's
    tokens: one may read, one is an admin."""
    db = workdir / "t.db"
    store = EventStore(db)
    credentials = Credentials(store)
    tokens = {
        scope: credentials.create_token(f"someone-{scope}", scope, None)[1]
        for scope in ("read", "admin")
    }
    store.close()
    env = env_for(
        db,
        model,
        workdir / "ledger.txt",
        THREADBOT_API_TOKEN=ADMIN,
        THREADBOT_METRICS_TOKEN=SCRAPE,
    )
    s = ServerProcess(env).start()
    yield s, tokens
    s.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_metrics_token_and_admins_scrape(guarded: tuple[ServerProcess, dict[str, str]]) -> None:
    server, tokens = guarded
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for token in (SCRAPE, ADMIN, tokens["admin"]):
            assert "threadbot_threads" in {n for n, _ in scrape(c, **bearer(token))}
        # The scheme in any case, as for the API's tokens.
        assert c.get("/metrics", headers={"Authorization": f"bearer {SCRAPE}"}).status_code == 200
        # OpenMetrics, when the scraper asks for it.
        om = c.get("/metrics", headers={**bearer(SCRAPE), "Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n") and "threadbot_threads{" in om.text


def test_scrapes_without_the_right_token_are_refused(
    guarded: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, tokens = guarded
    with httpx.Client(base_url=server.url, timeout=10) as c:
        nothing = c.get("/metrics")
        assert nothing.status_code == 401 and nothing.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics", headers=bearer(SCRAPE + "x")).status_code == 401
        # A person's token that reads threads does not read everyone's counts.
        reader = c.get("/metrics", headers=bearer(tokens["read"]))
        assert reader.status_code == 403 and "admin needed" in reader.json()["error"]
        # The metrics token opens nothing else.
        assert c.get("/threads", headers=bearer(SCRAPE)).status_code == 401
        assert c.get("/readyz", headers=bearer(SCRAPE)).status_code == 200  # open anyway
        # A name this server does not answer to (DNS rebinding), even with the token.
        foreign = c.get("/metrics", headers={**bearer(SCRAPE), "Host": "attacker.example"})
        assert foreign.status_code == 400 and "Host" in foreign.json()["error"]


def test_health_and_readiness_need_no_token(
    guarded: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/healthz").json() == {"status": "ok", "app": "threadbot"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        assert c.get("/readyz", headers={"Host": "attacker.example"}).status_code == 400


# -- readiness, as the store comes and goes ------------------------------------------


def test_readyz_is_503_while_postgresql_is_down(
    restartable_pg: tuple[pg.PostgresServer, str], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    pg_server, url = restartable_pg
    env = env_for(tmp_path / "unused.db", fake_openai, tmp_path / "ledger.txt", THREADBOT_DB=url)
    server = ServerProcess(env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/readyz").json() == {"ready": True}
            pg_server.halt()
            try:
                down = c.get("/readyz")
                assert down.status_code == 503
                body = down.json()
                assert body["ready"] is False and list(body["not_ready"]) == ["store"]
                assert body["not_ready"]["store"].startswith("unreachable (")
                # The process itself is up, and says so.
                assert c.get("/healthz").status_code == 200
                # A scrape still answers, with the process's own metrics.
                names = {n for n, _ in scrape(c)}
                assert "process_resident_memory_bytes" in names
                assert "threadbot_threads" not in names
            finally:
                pg_server.resume()
            deadline = time.monotonic() + 20
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "still not ready after PostgreSQL came back"
                time.sleep(0.1)
            assert value(scrape(c), "threadbot_threads", status="done") == 0
    finally:
        server.stop()


def test_a_takeover_and_webhooks_counted(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """The server is killed while the model writes its reply: the restarted
    server takes the thread over from the dead process's lease, and its
    thread.done webhook is refused once (500) and then delivered."""
    asked, release = threading.Event(), threading.Event()

    def held(body: dict[str, object]) -> Reply:
        asked.set()
        release.wait(30)
        return text("too late: nobody is listening")

    fake_openai.add(held, text("Done."))
    with Receiver(SECRET, fail_first=True).serve() as receiver:
        env = env_for(
            tmp_path / "t.db",
            fake_openai,
            tmp_path / "ledger.txt",
            THREADBOT_WEBHOOKS=receiver.url,
            THREADBOT_WEBHOOK_SECRET=SECRET,
            THREADBOT_WEBHOOK_RETRY="0.1",
        )
        first = ServerProcess(env).start()
        with httpx.Client(base_url=first.url, timeout=10) as c:
            thread_id = c.post("/threads", json={"text": "go"}).json()["id"]
        assert asked.wait(10)
        first.kill()
        release.set()

        again = ServerProcess(env, port=first.port).start(timeout=60)
        try:
            with httpx.Client(base_url=again.url, timeout=10) as c:
                wait_status(c, thread_id, "done")
                receiver.wait_for(lambda r: [x.answered for x in r.got] == [500, 204])
                deadline = time.monotonic() + 10
                while (
                    value(
                        after := scrape(c), "threadbot_webhook_attempts_total", outcome="delivered"
                    )
                    < 1
                ):
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
        finally:
            again.stop()
    assert value(after, "threadbot_lease_takeovers_total") == 1
    assert value(after, "threadbot_webhook_attempts_total", outcome="retrying") == 1
    assert value(after, "threadbot_webhook_attempts_total", outcome="failed") == 0
    assert value(after, "threadbot_model_calls_total", outcome="ok") == 1


# -- readiness, in process ------------------------------------------------------------


@pytest.mark.anyio
async def test_readiness_names_what_is_not_ready(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, tmp_path: Path
) -> None:
    bot = make_bot(db_path, fake_openai)
    mail = EmailChannel(
        bot, EmailSettings(listen=f"127.0.0.1:{free_port()}", outbox=str(tmp_path / "out"))
    )
    bot.add_channel("email", mail)
    try:
        assert await bot.not_ready() == {"email": "the SMTP server is not listening"}
        await mail.start()
        assert await bot.not_ready() == {}
        await mail.stop()
        assert await bot.not_ready() == {"email": "the SMTP server is not listening"}
        # The SQLite file gone (the open connection would still read it).
        db_path.rename(tmp_path / "moved.db")
        assert await bot.not_ready() == {
            "store": "unreachable (OperationalError)",
            "email": "the SMTP server is not listening",
        }
    finally:
        await bot.close()
        bot.store.close()


# -- deliveries that fail ---------------------------------------------------------


class DownOnce:
    """A channel whose platform refuses the first post."""

    def __init__(self) -> None:
        self.posts = 0
        self.posted = asyncio.Event()

    async def deliver(self, notice: Notice) -> Delivery:
        self.posts += 1
        if self.posts == 1:
            raise ConnectionError("the platform is down")
        self.posted.set()
        return Delivery(refs={"post": str(self.posts)})


@pytest.mark.anyio
async def test_a_failed_delivery_and_its_retry_are_counted(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    store = EventStore(db_path)
    metrics = Metrics(store)
    bot = ThreadBot(
        store,
        OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test"),
        retry_delay=0,
        observer=metrics,
    )
    channel = DownOnce()
    bot.add_channel("chat", channel)
    fake_openai.add(text("Hello."))
    try:
        thread_id = await bot.launch("hi", source=Source(channel="chat", user="u1"))
        await asyncio.wait_for(channel.posted.wait(), 10)  # the retry, a moment later
        await bot.settle(thread_id)  # the run that posted it records it
        assert bot.get(thread_id).events[-1].type == "delivered"
        samples = parse(metrics.exposition()[0].decode())
    finally:
        await bot.close()
        store.close()
    assert value(samples, "threadbot_deliveries_total", channel="chat", outcome="failed") == 1
    assert value(samples, "threadbot_deliveries_total", channel="chat", outcome="ok") == 1
    assert channel.posts == 2
    assert value(samples, "threadbot_threads", status="done") == 1


class DroppableSocket(FakeSocket):
    """Slack's Socket Mode endpoint, whose connection can vanish."""

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        self.live = request
        return await super()._socket(request)

    def drop(self) -> None:
        """Close the TCP connection under the WebSocket, with no goodbye."""
        transport = self.live.transport
        assert transport is not None
        self.loop.call_soon_threadsafe(transport.close)


def test_readyz_names_slack_while_its_socket_is_down(tmp_path: Path) -> None:
    socket = DroppableSocket().start()
    with FakeSlack().serve() as slack, FakeOpenAI().serve() as model:
        slack.socket_url = socket.url
        env = env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt")
        env.update(
            SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=slack.api_url
        )
        server = ServerProcess(env).start()
        try:
            assert socket.connected.wait(10), server.output()
            with httpx.Client(base_url=server.url, timeout=10) as c:
                assert c.get("/readyz").json() == {"ready": True}
                # Slack's end goes away, and its next address leads nowhere.
                slack.socket_url = f"ws://127.0.0.1:{free_port()}/link"
                socket.drop()
                deadline = time.monotonic() + 20
                while (r := c.get("/readyz")).status_code == 200:
                    assert time.monotonic() < deadline, "still ready without a socket"
                    time.sleep(0.05)
                assert r.json() == {
                    "ready": False,
                    "not_ready": {"slack": "the Socket Mode connection is down"},
                }
        finally:
            server.stop()
            socket.stop()
