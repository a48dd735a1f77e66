"""Fakes at the I/O edge: a local OpenAI-compatible server, and live servers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx

Reply = dict[str, Any]
"""`{"text": ...}` or `{"calls": [(name, args), ...]}` or `{"status": 500}`.

A request for a stream gets the reply as OpenAI streams one (see `chunks`);
these keys shape the stream:

    "pause"   seconds between chunks, for a reply seen while it is written
    "cut"     drop the connection after this many chunks (a broken stream)
    "end"     end the body cleanly after this many chunks, with no finish
              reason and no `[DONE]` (a stream cut short by a proxy)
    "finish"  the finish reason ("stop", or "tool_calls" with calls, by default)
    "indexless"  send each call whole in one chunk, without its index, as
              Ollama and Gemini's compatible endpoint do
    "usage"   end with the token counts even unasked, as some servers do
    "raw"     the `data:` lines to send instead of the chunks (a stream of
              something else)
    "hold"    a `threading.Event`: after the role and the first word, wait
              for it (up to 30 s) before the rest; the fake's `holding` is
              set meanwhile, and `released` records whether it came
"""


def completion(reply: Reply, model: str = "fake") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("text")}
    calls = reply.get("calls") or []
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:10]}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for name, args in calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chunks(reply: Reply, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed completion, as OpenAI sends them: the role,
    the text a word at a time, each tool call's id and name and then its
    arguments a few characters at a time, the finish reason, and the token
    counts when the request asked for them."""
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": word}) for word in re.findall(r"\S+\s*|\s+", reply.get("text") or "")]
    calls = reply.get("calls") or []
    for i, (name, args) in enumerate(calls):
        arguments = args if isinstance(args, str) else json.dumps(args)
        call: dict[str, Any] = {
            "index": i,
            "id": f"call_{uuid.uuid4().hex[:10]}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        if reply.get("indexless"):
            del call["index"]
            call["function"]["arguments"] = arguments
            out.append(chunk({"tool_calls": [call]}))
            continue
        out.append(chunk({"tool_calls": [call]}))
        out += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": arguments[k : k + 7]}}]})
            for k in range(0, len(arguments), 7)
        ]
    out.append(chunk({}, reply.get("finish") or ("tool_calls" if calls else "stop")))
    if reply.get("usage") or (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 1, "completion_tokens": len(out), "total_tokens": len(out) + 1}
        out.append({**head, "choices": [], "usage": usage})
    return out


def text(t: str) -> Reply:
    return {"text": t}


def calls(*pairs: tuple[str, Any]) -> Reply:
    return {"calls": list(pairs)}


def ask(question: str, options: list[str] | None = None) -> Reply:
    args: dict[str, Any] = {"question": question}
    if options is not None:
        args["options"] = options
    return calls(("request_human_input", args))


@dataclass
class FakeOpenAI:
    """A Chat Completions endpoint on 127.0.0.1 that replays a script.

    Each reply is a dict (see `Reply`) or a function of the request body.
    Records every request body it received. A request with `"stream": true`
    gets a stream of server-sent events, unless `streams` is off: then the
    whole completion at once, as some compatible servers answer."""

    script: deque[Reply | Callable[[dict[str, Any]], Reply]] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    streams: bool = True
    holding: threading.Event = field(default_factory=threading.Event)
    released: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, *replies: Reply | Callable[[dict[str, Any]], Reply]) -> None:
        with self.lock:
            self.script.extend(replies)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
            if not self.script:
                return {"status": 500, "error": "the fake model's script is empty"}
            reply = self.script.popleft()
        return reply(body) if callable(reply) else reply

    @contextmanager
    def serve(self) -> Iterator[FakeOpenAI]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.headers.append(dict(self.headers))
                reply = fake.next_reply(body)
                status = reply.get("status", 200)
                if status == 200 and body.get("stream") and fake.streams:
                    sent = reply.get("raw") or [json.dumps(c) for c in chunks(reply, body)]
                    self.stream(sent, reply)
                    return
                if status != 200:
                    payload = {"error": {"message": reply.get("error", "boom"), "type": "server"}}
                else:
                    payload = completion(reply, body.get("model", "fake"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status != 200:
                    # Keep the client's retries quick.
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data)

            def stream(self, chunks: list[str], reply: Reply) -> None:
                # Chunked, as OpenAI's API sends it, so that a stream cut short
                # is one the client can tell from a complete one.
                self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, c in enumerate(chunks):
                    if i == reply.get("cut"):
                        return  # the connection closes with the body unfinished
                    if i == reply.get("end"):
                        self.write_chunk(b"")
                        return
                    if i and reply.get("pause"):
                        time.sleep(reply["pause"])
                    if i == 2 and reply.get("hold") is not None:
                        fake.holding.set()
                        fake.released.append(reply["hold"].wait(30))
                    self.write_chunk(f"data: {c}\n\n".encode())
                self.write_chunk(b"data: [DONE]\n\n")
                self.write_chunk(b"")

            def write_chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed while it waited for a reply (a server under test)
        # resets its connection: not an error of the fake's.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


REPO = Path(__file__).resolve().parent.parent


def clean_environ() -> dict[str, str]:
    """This environment without the shell's own threadbot and model settings:
    a test's processes get only the settings the test gives them."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("THREADBOT_", "OPENAI_"))}


def serve_refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`threadbot serve` with these settings (and no others from the shell),
    expected to refuse to start: its exit and what it said."""
    return subprocess.run(
        [sys.executable, "-m", "threadbot", "serve"],
        cwd=REPO,
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


_STARTED: list[ServerProcess] = []


def stop_strays() -> None:
    """Stop every server a test started and did not stop (a failed assertion
    between start and stop must not leave a server running)."""
    while _STARTED:
        server = _STARTED.pop()
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
        server.close()


class ServerProcess:
    """`threadbot serve` as a subprocess, as an operator runs it.

    `host`: the address it serves on; `prefix`: a command it runs under
    (`ip netns exec NAME`, for a server on a host of its own)."""

    def __init__(
        self,
        env: dict[str, str],
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.prefix = list(prefix)
        self.env = {**clean_environ(), **env, "THREADBOT_HTTP": f"{host}:{self.port}"}
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20) -> Self:
        # Closed in close(): it outlives this method, holding the server's log.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "threadbot", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        _STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.output()
                self.close()
                raise RuntimeError(f"server exited {self.proc.returncode}: {out}")
            try:
                # httpx closes its socket on a timeout too (urllib may leave it to the GC).
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self._out.seek(0)
        return self._out.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(10)
        self.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)
        self.close()

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()
        if self in _STARTED and (self.proc is None or self.proc.poll() is not None):
            _STARTED.remove(self)
