"""Slack Web API clients that keep their connections open.

Without a session of its own, slack_sdk's client opens a new HTTP session for
every call, so every post, update and reaction pays a new connection (and a
TLS handshake with slack.com). A session belongs to the event loop it was
made on, and `threadbot serve` has two (requests on one, the agent's posts on
the other): `WebClients` keeps one session per loop, and one client on it per
bot token.

With one workspace's token, every call uses it. Installed into several
workspaces, each call names its workspace and uses that workspace's token,
as the installation store holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from .settings import SlackSettings

__all__ = ["NotInstalled", "WebClients", "base_url"]


def base_url(settings: SlackSettings) -> str:
    url = settings.api_url or AsyncWebClient.BASE_URL
    return url if url.endswith("/") else url + "/"


class NotInstalled(Exception):
    """A call for a workspace threadbot is not installed in (or none named)."""


class WebClients:
    def __init__(
        self, settings: SlackSettings, tokens: Callable[[str], str | None] | None = None
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        """Installed into several workspaces: a workspace's bot token."""
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str], AsyncWebClient] = {}

    def token(self, team: str | None) -> str:
        if self.settings.bot_token:
            return self.settings.bot_token
        token = self.tokens(team) if self.tokens is not None and team else None
        if not token:
            raise NotInstalled(f"threadbot is not installed in the Slack workspace {team!r}")
        return token

    def __call__(self, team: str | None = None) -> AsyncWebClient:
        """The running loop's client for the workspace `team` (any with one
        workspace's token)."""
        token = self.token(team)
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30)
            )
        client = self._clients.get((loop, token))
        if client is None or client.session is not session:
            client = self._clients[(loop, token)] = AsyncWebClient(
                token=token,
                base_url=base_url(self.settings),
                session=session,
                # 429: wait as long as Slack's Retry-After says, then try again.
                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
            )
        return client

    async def close(self) -> None:
        """Close the running loop's connections."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k[0] is loop]:
            del self._clients[key]
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()
