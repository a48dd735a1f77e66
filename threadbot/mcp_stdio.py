"""`threadbot mcp`: threadbot as an MCP server over stdio, for an agent that
starts it as a subprocess (Claude Desktop's `mcpServers`, a coding agent).

It opens the database as the other commands do and reaches people by mail
itself (THREADBOT_EMAIL's relay, or the outbox folder); replies by mail, Slack
and the web page come in through `threadbot serve` on the same database, and
each waiting call sees them within a second. The client is the local
operator, or the person `--person` names.
"""

from __future__ import annotations

import getpass
import logging

from bot.errors import UsageError
from bot.events import Source

from .config import Settings
from .serve import build_bot, outbox_beside

__all__ = ["run_mcp_stdio"]


def stdio_source(settings: Settings, person: str | None) -> Source:
    """Who the stdio client is: whoever may open the database (the local
    operator), or the person they say they are."""
    if person is None:
        return Source(
            channel="mcp",
            user=getpass.getuser(),
            name="local operator",
            auth="operator",
            admin=True,
        )
    from .serve import build_people

    found = build_people(settings).find(person)
    if found is None:
        raise UsageError(f"--person {person!r} is not in the people file ({settings.people_file})")
    return Source(
        channel="mcp", user=found.id, person=found.id, name=found.display, auth="mcp:stdio"
    )


async def run_mcp_stdio(settings: Settings, person: str | None) -> None:
    from channels.email import EmailChannel, EmailSettings
    from channels.mcp import McpChannel

    # stdout is the protocol's: the log goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    source = stdio_source(settings, person)
    bot = build_bot(settings)
    try:
        email_settings = EmailSettings.from_env(outbox=outbox_beside(settings.db))
        if email_settings is not None:
            bot.add_channel("email", EmailChannel(bot, email_settings))
        channel = McpChannel(bot, lambda ctx: source)
        await channel.server.run_stdio_async()
    finally:
        await bot.close()
        bot.store.close()
