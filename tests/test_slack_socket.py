"""Socket Mode: `threadbot serve` with SLACK_APP_TOKEN opens a socket instead
of serving /slack/events. A local WebSocket server stands in for Slack's."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import WSMsgType, web

from .fakes import FakeOpenAI, ServerProcess, ask, free_port, text
from .slack_fake import BOT_USER, FakeSlack
from .test_http import env_for
from .test_slack import posts


class FakeSocket:
    """Slack's Socket Mode endpoint: says hello, pushes envelopes, collects acks."""

    def __init__(self) -> None:
        self.port = free_port()
        self.acks: list[dict[str, Any]] = []
        self.outbox: asyncio.Queue[dict[str, Any]] | None = None
        self.connected = threading.Event()
        self.loop = asyncio.new_event_loop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link"

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1})
        self.connected.set()
        assert self.outbox is not None

        async def push() -> None:
            assert self.outbox is not None
            while True:
                await ws.send_json(await self.outbox.get())

        pusher = asyncio.create_task(push())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.acks.append(json.loads(msg.data))
        finally:
            pusher.cancel()
        return ws

    def start(self) -> FakeSocket:
        async def run() -> None:
            self.outbox = asyncio.Queue()
            app = web.Application()
            app.router.add_get("/link", self._socket)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)
        return self

    def send(self, envelope: dict[str, Any]) -> None:
        assert self.outbox is not None
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, envelope)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def envelope(envelope_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "payload": {
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{envelope_id}",
            "event_time": int(time.time()),
            "event": event,
            "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
        },
    }


def test_socket_mode_conversation(tmp_path: Path) -> None:
    socket = FakeSocket().start()
    with FakeSlack().serve() as slack, FakeOpenAI().serve() as model:
        slack.socket_url = socket.url
        env = env_for(tmp_path / "threadbot.db", model, tmp_path / "ledger.txt")
        env.update(
            SLACK_BOT_TOKEN="xoxb-test", SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=slack.api_url
        )
        server = ServerProcess(env).start()
        try:
            assert "Socket Mode" in server.output()
            assert socket.connected.wait(10), server.output()
            assert slack.called("apps.connections.open")
            # No HTTP endpoint for Slack in this mode.
            assert httpx.post(server.url + "/slack/events", content="{}").status_code == 404

            model.add(ask("Which version?"), text("Deployed 2.0."))
            root = "1900000001.000100"
            socket.send(
                envelope(
                    "E1",
                    {
                        "type": "app_mention",
                        "user": "U1",
                        "channel": "C_SOCK",
                        "ts": root,
                        "text": f"<@{BOT_USER}> deploy",
                    },
                )
            )
            question = slack.wait_for("chat.postMessage")[0]
            assert question["thread_ts"] == root
            assert "Which version?" in json.dumps(question["blocks"])
            socket.send(
                envelope(
                    "E2",
                    {
                        "type": "message",
                        "user": "U1",
                        "channel": "C_SOCK",
                        "channel_type": "channel",
                        "ts": "1900000002.000100",
                        "thread_ts": root,
                        "text": "2.0",
                    },
                )
            )
            # The answer streamed into the thread (the model streams).
            answer = posts(slack, "C_SOCK", 2)[1]
            assert (answer["thread_ts"], answer["text"]) == (root, "Deployed 2.0.")
            assert {a.get("envelope_id") for a in socket.acks} >= {"E1", "E2"}
        finally:
            server.stop()
            socket.stop()
