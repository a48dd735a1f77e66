"""`threadbot serve`: settings → store → model → tools → bot → channels, and the server."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bot.api import ThreadBot
from bot.context import DEFAULT_SYSTEM_PROMPT
from bot.demo import DemoModel
from bot.errors import UsageError
from bot.model import Model, OpenAIModel
from bot.people import People
from bot.tools import load_tools
from bot.webhooks import Webhooks, check_urls, new_secret, shown
from store import Store, is_postgres_url, open_store

from .config import DEFAULT_TOOLS, Settings
from .process import tune_for_serving

if TYPE_CHECKING:
    from channels.email import EmailChannel
    from channels.slack import SlackChannel

__all__ = ["build_bot", "build_model", "serve"]

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


def build_bot(settings: Settings, store: Store | None = None) -> ThreadBot:
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
    )


def _banner(
    settings: Settings,
    bot: ThreadBot,
    resumed: int,
    slack: SlackChannel | None,
    mail: EmailChannel | None,
    tuned: str | None,
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


def _outbox_beside(db: str) -> str:
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


async def serve(settings: Settings) -> None:
    import uvicorn

    from channels import web
    from channels.email import EmailChannel, EmailSettings
    from channels.http import create_app, protect
    from channels.slack import SlackChannel, SlackSettings
    from channels.web.sign_in import SignInSettings, mount_sign_in

    host, port = settings.host_port()
    bot = build_bot(settings)
    settings.check_exposure(bot.people)
    slack_settings = SlackSettings.from_env()
    slack: SlackChannel | None = None
    if slack_settings is not None:
        if not slack_settings.socket_mode and not slack_settings.signing_secret:
            raise UsageError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
                "SLACK_SIGNING_SECRET (HTTP mode at /slack/events) is"
            )
        slack = SlackChannel(bot, slack_settings)
        bot.add_channel("slack", slack)
    email_settings = EmailSettings.from_env(outbox=_outbox_beside(settings.db))
    mail: EmailChannel | None = None
    if email_settings is not None:
        mail = EmailChannel(bot, email_settings)
        bot.add_channel("email", mail)
    http_slack = slack is not None and not slack.settings.socket_mode
    app = create_app(bot)
    web.mount(app)
    mount_sign_in(
        app,
        credentials=bot.credentials,
        people=bot.people,
        settings=SignInSettings.from_env(),
        send_link=mail.send_sign_in if mail is not None else None,
    )
    if slack is not None and http_slack:
        slack.mount(app)
    stack = protect(
        app,
        bot,
        hosts=settings.hosts(),
        origins=settings.origins(),
        max_bytes=settings.http_max_bytes,
        admin_token=settings.api_token,
        local_operator=settings.local_operator(bot.people),
    )
    server = uvicorn.Server(
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
    resumed = await bot.resume_all()
    print(_banner(settings, bot, len(resumed), slack, mail, tuned), file=sys.stderr, flush=True)
    try:
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


def run_serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(settings))
