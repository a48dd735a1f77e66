"""Slack Web API clients that keep their connections open.

Without a session of its own, slack_sdk's client opens a new HTTP session for
every call, so every post, update and reaction pays a new connection (and a
TLS handshake with slack.com). A session belongs to the event loop it was
made on, and `threadbot serve` has two (requests on one, the agent's posts on
the other): `WebClients` keeps one client with its own session per loop.
"""

from __future__ import annotations

import asyncio

import aiohttp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from .settings import SlackSettings

__all__ = ["WebClients", "base_url"]


def base_url(settings: SlackSettings) -> str:
    url = settings.api_url or AsyncWebClient.BASE_URL
    return url if url.endswith("/") else url + "/"


class WebClients:
    def __init__(self, settings: SlackSettings) -> None:
        self.settings = settings
        self._clients: dict[asyncio.AbstractEventLoop, AsyncWebClient] = {}

    def __call__(self) -> AsyncWebClient:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.session is None or client.session.closed:
            client = self._clients[loop] = AsyncWebClient(
                token=self.settings.bot_token,
                base_url=base_url(self.settings),
                session=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)),
                # 429: wait as long as Slack's Retry-After says, then try again.
                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
            )
        return client

    async def close(self) -> None:
        """Close the running loop's connections."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None and client.session is not None:
            await client.session.close()
