"""A webhook receiver on 127.0.0.1, as a service that takes threadbot's
webhooks would run one: it checks every signature with the
`standardwebhooks` package and refuses what does not verify."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Received:
    id: str
    type: str
    data: dict[str, Any]
    answered: int
    """The status the receiver answered with (0: none, it was holding it)."""


@dataclass
class Receiver:
    secret: str
    answers: deque[int] = field(default_factory=deque)
    """Statuses to answer verified webhooks with, in turn, before 204s."""
    got: list[Received] = field(default_factory=list)
    """Every webhook whose signature verified, in order of arrival."""
    refused: list[str] = field(default_factory=list)
    """Why each refused request was refused."""
    fail_first: bool = False
    """Answer 500 to the first arrival of each webhook id."""
    holding: bool = False
    """While set, a verified webhook is recorded and left unanswered."""
    url: str = ""
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release: threading.Event = field(default_factory=threading.Event)

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, ValueError) as e:
            with self._changed:
                self.refused.append(str(e))
                self._changed.notify_all()
            return 401
        with self._changed:
            hold = self.holding
            status = 0 if hold else (self.answers.popleft() if self.answers else 204)
            if self.fail_first and all(r.id != headers["webhook-id"] for r in self.got):
                status = 500
            self.got.append(Received(headers["webhook-id"], payload["type"], payload, status))
            self._changed.notify_all()
        if hold:
            self._release.wait(30)
        return status or 204

    def release(self) -> None:
        """Stop holding (the held requests are answered, if anyone still waits)."""
        with self._changed:
            self.holding = False
        self._release.set()

    def wait_for(self, done: Callable[[Receiver], bool], timeout: float = 15) -> None:
        """Until `done(self)` holds: looked at each request, and every 20 ms
        (for what the sender records once a request is answered)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(r.id, r.type, r.answered) for r in self.got]
                    raise AssertionError(f"receiver: got {got}, refused {self.refused}")
                self._changed.wait(min(left, 0.02))

    def types(self) -> list[str]:
        with self._changed:
            return [r.type for r in self.got]

    @contextmanager
    def serve(self, port: int = 0) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed while this was held)

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._release.set()
            server.shutdown()
            server.server_close()
