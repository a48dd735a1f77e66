"""`threadbot serve`: settings → store → model → tools → bot → channels, and the server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bot.api import ThreadBot
from bot.context import DEFAULT_SYSTEM_PROMPT
from bot.demo import DemoModel
from bot.errors import UsageError
from bot.mcp_tools import McpServers
from bot.model import Model, OpenAIModel
from bot.observe import Observer, Observers
from bot.people import People
from bot.tools import load_tools
from bot.webhooks import Webhooks, check_urls, new_secret, shown
from store import Store, is_postgres_url, open_store

from .config import DEFAULT_TOOLS, Settings, tracing_wanted
from .process import tune_for_serving

if TYPE_CHECKING:
    import uvicorn

    from channels.email import EmailChannel
    from channels.slack import SlackChannel, SlackSettings
    from channels.slack.install import Installations

    from .metrics import Metrics

__all__ = ["build_bot", "build_model", "build_slack_installations", "serve", "start_mcp"]

log = logging.getLogger("threadbot")


def build_model(settings: Settings) -> Model:
    if settings.uses_demo_model:
        return DemoModel()
    return OpenAIModel(
        settings.model_name,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout=settings.model_timeout,
    )


def build_people(settings: Settings) -> People:
    return People.load(
        settings.people_file, approvers=settings.approvers, senders=settings.email_senders
    )


def build_webhooks(settings: Settings, store: Store) -> Webhooks | None:
    """THREADBOT_WEBHOOKS's settings. Without THREADBOT_WEBHOOK_SECRET, a
    secret is generated once, kept in the database and printed that once."""
    if not settings.webhooks:
        return None
    check_urls(settings.webhooks)  # before a secret is made for them
    secret = settings.webhook_secret
    if secret is None:
        fresh = new_secret()
        secret = store.meta("webhook_secret", fresh)
        if secret == fresh:
            print(
                f"threadbot: webhooks are signed with this new secret (kept in the database; "
                f"give it to the receivers): {secret}",
                file=sys.stderr,
                flush=True,
            )
    return Webhooks(
        settings.webhooks,
        secret,
        timeout=settings.webhook_timeout,
        first_retry=settings.webhook_retry,
        give_up_after=settings.webhook_give_up,
    )


def build_bot(
    settings: Settings, store: Store | None = None, observer: Observer | None = None
) -> ThreadBot:
    store = store or open_store(settings.db)
    return ThreadBot(
        store,
        build_model(settings),
        load_tools(settings.tools or DEFAULT_TOOLS),
        system_prompt=settings.system_prompt or DEFAULT_SYSTEM_PROMPT,
        max_turns=settings.max_turns,
        people=build_people(settings),
        approval_timers=settings.approval_timers,
        question_timers=settings.question_timers,
        webhooks=build_webhooks(settings, store),
        observer=observer,
    )


@dataclass(frozen=True)
class Observing:
    metrics: Metrics
    observer: Observer
    """The metrics, or the metrics and the spans."""
    traces: str
    """Where spans go, for the banner."""
    close: Callable[[], None] = lambda: None
    """Sends the spans still held."""


def build_observer(store: Store, env: Mapping[str, str]) -> Observing:
    """/metrics's counters, and spans too when the OTEL_* variables ask for
    traces (`threadbot.tracing`)."""
    from .metrics import Metrics

    metrics = Metrics(store)
    if not tracing_wanted(env):
        return Observing(metrics, metrics, "off (set OTEL_EXPORTER_OTLP_ENDPOINT to send spans)")
    try:
        from opentelemetry import trace

        from .tracing import Tracing, provider_from_env
    except ImportError:
        raise UsageError(
            "OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER is set, but OpenTelemetry "
            "is not installed: pip install 'threadbot[otel]'"
        ) from None
    provider = provider_from_env(env)
    # Global, so that spans the operator's tools make join the tool's span.
    trace.set_tracer_provider(provider)
    tracing = Tracing(provider.get_tracer("threadbot"))
    where = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return Observing(
        metrics,
        Observers([metrics, tracing]),
        f"spans to {where or 'OTEL_TRACES_EXPORTER'}",
        provider.shutdown,
    )


def build_slack_installations(
    settings: Settings, slack: SlackSettings, env: Mapping[str, str] | None = None
) -> Installations:
    """Where a Slack app installed into several workspaces keeps them: in
    threadbot's own database, in slack_sdk's own tables (its SQLite stores in
    the same file as threadbot's tables; on PostgreSQL, its SQLAlchemy
    stores in the same database)."""
    from slack_sdk.oauth.installation_store.sqlite3 import SQLite3InstallationStore
    from slack_sdk.oauth.state_store.sqlite3 import SQLite3OAuthStateStore

    from channels.slack.install import Installations, teams_from_env

    env = os.environ if env is None else env
    teams = teams_from_env(env)
    if not teams:
        raise UsageError(
            "SLACK_CLIENT_ID is set without SLACK_BOT_TOKEN (installing into several Slack "
            "workspaces): set SLACK_TEAMS to the team ids that may install threadbot "
            "(T123,T456), or * for any workspace"
        )
    assert slack.client_id  # slack.oauth
    if is_postgres_url(settings.db):
        return _postgres_installations(settings.db, slack.client_id, teams)
    store = SQLite3InstallationStore(database=settings.db, client_id=slack.client_id)
    # The state of an install under way: good for ten minutes, once.
    states = SQLite3OAuthStateStore(database=settings.db, expiration_seconds=600)
    store.init()  # type: ignore[no-untyped-call]  # untyped in slack_sdk; the tables, made now
    states.init()  # type: ignore[no-untyped-call]
    return Installations(store=store, states=states, bots=store, teams=teams)


def _postgres_installations(url: str, client_id: str, teams: tuple[str, ...]) -> Installations:
    """slack_sdk's SQLAlchemy stores on threadbot's PostgreSQL database
    (through psycopg, as the event store): the async ones for Bolt, on the
    server's loop, and the same tables read without awaiting for a
    workspace's token (kept a minute) on the agent's."""
    try:
        import sqlalchemy
        from slack_sdk.oauth.installation_store.sqlalchemy import (
            AsyncSQLAlchemyInstallationStore,
            SQLAlchemyInstallationStore,
        )
        from slack_sdk.oauth.state_store.sqlalchemy import (
            AsyncSQLAlchemyOAuthStateStore,
            SQLAlchemyOAuthStateStore,
        )
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError as e:
        raise UsageError(
            f"installing into several Slack workspaces on PostgreSQL needs SQLAlchemy ({e}): "
            "pip install 'threadbot[postgres]'"
        ) from None

    from channels.slack.install import Installations

    sa_url = "postgresql+psycopg://" + url.partition("://")[2]
    engine = sqlalchemy.create_engine(sa_url, pool_size=1, pool_pre_ping=True)
    async_engine = create_async_engine(sa_url, pool_size=2, pool_pre_ping=True)
    bots = SQLAlchemyInstallationStore(client_id=client_id, engine=engine)
    bots.create_tables()  # type: ignore[no-untyped-call]  # untyped in slack_sdk; made now
    states = SQLAlchemyOAuthStateStore(expiration_seconds=600, engine=engine)
    states.create_tables()  # type: ignore[no-untyped-call]

    async def aclose() -> None:
        await async_engine.dispose()
        engine.dispose()

    return Installations(
        store=AsyncSQLAlchemyInstallationStore(client_id=client_id, engine=async_engine),
        states=AsyncSQLAlchemyOAuthStateStore(expiration_seconds=600, engine=async_engine),
        bots=bots,
        teams=teams,
        aclose=aclose,
    )


def _banner(
    settings: Settings,
    bot: ThreadBot,
    resumed: int,
    slack: SlackChannel | None,
    mail: EmailChannel | None,
    tuned: str | None,
    traces: str = "off",
) -> str:
    host, port = settings.host_port()
    lines = [f"threadbot serving http://{host}:{port}  (web page: /, API schema: /openapi.json)"]
    lines.append(f"  store:  {_without_password(settings.db)}")
    if settings.uses_demo_model:
        lines.append(
            f"  model:  {bot.model.name} — set OPENAI_API_KEY or OPENAI_BASE_URL for a real one"
        )
    else:
        lines.append(f"  model:  {bot.model.name}")
    tools = ", ".join(t.name for t in bot.tools)
    lines.append(f"  tools:  {tools}  (from {settings.tools or DEFAULT_TOOLS})")
    lines.append(f"  auth:   {_auth_line(settings, bot.people)}")
    if tuned is None:
        lines.append("  tune:   off (THREADBOT_TUNE=off): Python's defaults")
    else:
        lines.append(f"  tune:   {tuned}")
    if slack is None:
        lines.append("  slack:  off (set SLACK_BOT_TOKEN to turn it on)")
    elif slack.settings.socket_mode:
        lines.append("  slack:  Socket Mode")
    else:
        lines.append(f"  slack:  HTTP mode at http://{host}:{port}/slack/events")
    if slack is not None and slack.installations is not None:
        base = (settings.public_url or f"http://{host}:{port}").rstrip("/")
        listed = slack.installations.teams
        teams = "any workspace" if "*" in listed else "workspaces " + ", ".join(listed)
        lines.append(
            f"  slack:  installed by OAuth ({teams}): install at {base}/slack/install, "
            f"redirect URL {base}/slack/oauth_redirect"
        )
    if mail is None:
        lines.append("  email:  off")
    else:
        es = mail.settings
        out = (
            f"relay {es.relay}"
            if es.relay
            else f"written to {es.outbox} (set THREADBOT_SMTP_RELAY)"
        )
        lines.append(f"  email:  SMTP on {es.listen} for {es.address}; outbound {out}")
    lines.append(f"  traces: {traces}")
    lines.append(
        f"  agents: MCP at http://{host}:{port}/mcp (ask_human, request_approval, get_answer)"
    )
    if settings.webhooks:
        where = "THREADBOT_WEBHOOK_SECRET" if settings.webhook_secret else "the database"
        lines.append(
            f"  hooks:  {', '.join(map(shown, settings.webhooks))}  "
            f"(signed with the secret from {where})"
        )
    if resumed:
        lines.append(f"  resumed {resumed} running thread(s)")
    if mail is not None and not mail.settings.loopback_only and not bot.people.senders:
        lines.append(
            f"  WARNING: mail is accepted on {mail.settings.listen} from anyone: set "
            "THREADBOT_EMAIL_SENDERS (addresses, @domains) to say who may start threads"
        )
    return "\n".join(lines)


def _auth_line(settings: Settings, people: People) -> str:
    if settings.local_operator(people):
        return "none: requests act as the local operator (loopback, no people configured)"
    ways = ["people's tokens and sign-in"]
    if settings.api_token:
        ways.insert(0, "the admin token")
    return ", ".join(ways) + (f"; {len(people.persons)} people" if people.persons else "")


def outbox_beside(db: str) -> str:
    """Without a relay, outbound mail is kept next to the database (or in
    the working directory, for a database on a server)."""
    if is_postgres_url(db):
        return str(Path("outbox").resolve())
    return str(Path(db).resolve().parent / "outbox")


def _without_password(db: str) -> str:
    """A database URL as shown in the banner and logs."""
    if not is_postgres_url(db):
        return db
    url = urlsplit(db)
    netloc = url.netloc
    if url.password is not None:
        netloc = netloc.replace(f":{url.password}@", ":***@", 1)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", url.query)
    return urlunsplit(url._replace(netloc=netloc, query=query))


async def start_mcp(settings: Settings, bot: ThreadBot) -> McpServers | None:
    """THREADBOT_MCP's servers, started on the agent's loop before any
    thread resumes (a resumed call may be one of their tools'), stopped
    when the bot closes."""
    if settings.mcp is None:
        return None
    mcp = McpServers.load(settings.mcp)
    await bot.on_agent_loop(lambda: mcp.start(bot.tools))
    bot.close_with(mcp.stop)
    return mcp


async def serve(settings: Settings) -> None:
    import uvicorn

    from channels import web
    from channels.email import EmailChannel, EmailSettings
    from channels.http import create_app, protect
    from channels.mcp import McpChannel, http_identity
    from channels.slack import SlackChannel, SlackSettings
    from channels.sse import Streams
    from channels.web.sign_in import SignInSettings, mount_sign_in

    from .metrics import mount_metrics

    host, port = settings.host_port()
    if settings.mcp is not None:
        McpServers.load(settings.mcp)  # a bad file stops here, before anything starts
    store = open_store(settings.db)
    observing = build_observer(store, os.environ)
    bot = build_bot(settings, store, observing.observer)
    settings.check_exposure(bot.people)
    slack_settings = SlackSettings.from_env()
    slack: SlackChannel | None = None
    if slack_settings is not None:
        if not slack_settings.socket_mode and not slack_settings.signing_secret:
            raise UsageError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
                "SLACK_SIGNING_SECRET (HTTP mode at /slack/events) is"
            )
        installations = None
        if slack_settings.oauth:
            installations = build_slack_installations(settings, slack_settings)
        slack = SlackChannel(bot, slack_settings, installations)
        bot.add_channel("slack", slack)
    email_settings = EmailSettings.from_env(outbox=outbox_beside(settings.db))
    mail: EmailChannel | None = None
    if email_settings is not None:
        mail = EmailChannel(bot, email_settings)
        bot.add_channel("email", mail)
    http_slack = slack is not None and not slack.settings.socket_mode
    streams = Streams()
    app = create_app(bot, streams=streams)
    web.mount(app)
    asked = McpChannel(bot, http_identity(bot))
    app.router.routes[0:0] = asked.http_routes()
    mount_sign_in(
        app,
        credentials=bot.credentials,
        people=bot.people,
        settings=SignInSettings.from_env(),
        send_link=mail.send_sign_in if mail is not None else None,
        signed_out=streams.signed_out,
    )
    if slack is not None and http_slack:
        slack.mount(app)
    mount_metrics(app, observing.metrics)
    stack = protect(
        app,
        bot,
        hosts=settings.hosts(),
        origins=settings.origins(),
        max_bytes=settings.http_max_bytes,
        admin_token=settings.api_token,
        local_operator=settings.local_operator(bot.people),
        metrics_token=settings.metrics_token,
    )

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits for every open response to end, and event
            # streams end only when told to.
            streams.close()
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            stack, host=host, port=port, http="httptools", log_level="warning", lifespan="off"
        )
    )
    # Before anything can start a thread, so that every run has the same settings.
    tuned = tune_for_serving() if settings.tune else None
    # The agent's thread first: a Slack event or a mail that arrives while
    # the channels start is run there, like every later one.
    bot.run_in_thread()
    if slack is not None:
        await slack.start()
    if mail is not None:
        await mail.start()
    mcp = await start_mcp(settings, bot)
    resumed = await bot.resume_all()
    banner = _banner(settings, bot, len(resumed), slack, mail, tuned, observing.traces)
    if mcp is not None:
        banner += "".join(f"\n  mcp:    {line}" for line in mcp.describe())
    print(banner, file=sys.stderr, flush=True)
    try:
        with _stopping_in_order(server):
            async with asked.server.session_manager.run():
                await server.serve()
    finally:
        if slack is not None:
            await slack.stop()
        if mail is not None:
            await mail.stop()
        if bot.runner.active():
            print("threadbot: letting active threads pause (10 s at most)…", file=sys.stderr)
        await bot.close(grace=10.0)
        bot.store.close()
        observing.close()  # the spans still held are sent


@contextmanager
def _stopping_in_order(server: uvicorn.Server) -> Iterator[None]:
    """Once uvicorn has stopped serving, it raises the signal that stopped it
    again, for the handler it found: by default that would end the process
    before the channels and the agent's runs stop. Meanwhile the handler is
    this one, which only asks the server to stop; the usual handlers are back
    for the shutdown itself (a second Ctrl-C or SIGTERM ends it at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(sig: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # httpx logs every request's whole URL at INFO; a webhook's may hold a token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The MCP SDK logs each session's id at INFO: an id is a key to its session.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    asyncio.run(serve(settings))
