"""The composition root: settings → store → model → tools → bot → channels.

The only module that sees `store`, `bot` and `channels` together.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from store import EventStore

from .api import ThreadBot
from .config import DEFAULT_TOOLS, Settings
from .context import DEFAULT_SYSTEM_PROMPT
from .demo import DemoModel
from .model import Model, OpenAIModel
from .tools import load_tools

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


def build_bot(settings: Settings, store: EventStore | None = None) -> ThreadBot:
    return ThreadBot(
        store or EventStore(settings.db),
        build_model(settings),
        load_tools(settings.tools or DEFAULT_TOOLS),
        system_prompt=settings.system_prompt or DEFAULT_SYSTEM_PROMPT,
        max_turns=settings.max_turns,
    )


def _banner(settings: Settings, bot: ThreadBot, resumed: int) -> str:
    host, port = settings.host_port()
    lines = [f"threadbot serving http://{host}:{port}  (API docs: /docs)"]
    lines.append(f"  store:  {settings.db}")
    if settings.uses_demo_model:
        lines.append(
            f"  model:  {bot.model.name} — set OPENAI_API_KEY or OPENAI_BASE_URL for a real one"
        )
    else:
        lines.append(f"  model:  {bot.model.name}")
    tools = ", ".join(t.name for t in bot.tools)
    lines.append(f"  tools:  {tools}  (from {settings.tools or DEFAULT_TOOLS})")
    lines.append(f"  auth:   {'bearer token' if settings.api_token else 'none (loopback only)'}")
    if resumed:
        lines.append(f"  resumed {resumed} running thread(s)")
    return "\n".join(lines)


async def serve(settings: Settings) -> None:
    import uvicorn

    from channels.http import create_app

    settings.check_exposure()
    host, port = settings.host_port()
    bot = build_bot(settings)
    app = create_app(bot, token=settings.api_token)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    )
    resumed = await bot.resume_all()
    print(_banner(settings, bot, len(resumed)), file=sys.stderr, flush=True)
    try:
        await server.serve()
    finally:
        if bot.runner.active():
            print("threadbot: letting active threads pause (10 s at most)…", file=sys.stderr)
        await bot.close(grace=10.0)
        bot.store.close()


def run_serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(settings))
