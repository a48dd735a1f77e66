"""A fake OpenAI-compatible model server for the benchmarks, run in a process
of its own as a remote model is: its CPU is not threadbot's, and the time a
request arrives is taken there, the moment its body is read.

    python -m tests.bench.model_server [--tool NAME] [--arguments JSON]
        [--delay SECONDS] [--rounds N] [--answer TEXT] [--plain]

prints its port, then (unless --quiet) `arrived <time.perf_counter()>` for
each request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

QUESTION = "Which version should I deploy next? " + "x" * 160
ANSWER = "Version 1.4.2, after the migration ran. " + "y" * 160


PIECE = 4
"""Characters of a streamed reply per chunk: about one token, as OpenAI sends them."""


class InstantModel:
    """A minimal HTTP/1.1 Chat Completions server on the event loop: every
    request gets a call of `tool` after `delay` (see `rounds` and `ask_on`
    for the exceptions), streamed as OpenAI streams it when the request asks
    for a stream (one chunk per token or so, all sent at once). Records when each
    request arrived: the moment its last byte was read (a protocol that only
    collects the pieces, so a long body costs the server little)."""

    def __init__(
        self,
        tool: str = "request_human_input",
        arguments: str | None = None,
        *,
        delay: float = 0.0,
        rounds: int | None = None,
        report: bool = False,
        ask_on: str | None = None,
        answer: str = "done",
        plain: bool = False,
    ) -> None:
        self.delay = delay
        self.rounds = rounds
        """With `rounds`, answer with text once a request holds that many tool results."""
        self.answer = answer
        """That text."""
        self.plain = plain
        """Answer with the whole completion even when asked for a stream, as
        some compatible servers do."""
        self.tool = tool
        self.arguments = arguments or json.dumps({"question": QUESTION})
        self.arrivals: list[float] = []
        self.report = report
        """Print each arrival's time (the clock is the machine's, shared by processes)."""
        self.ask_on = ask_on.encode() if ask_on else None
        """A request that holds this is answered at once: with a question
        (`request_human_input`) until it holds a tool result, then with text."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._connections):
            transport.close()

    @staticmethod
    def _call(name: str, arguments: str) -> dict[str, Any]:
        call = {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    def arrived(self, at: float) -> None:
        self.arrivals.append(at)
        if self.report:
            print(f"arrived {at!r}", flush=True)

    def reply(self, request: bytes) -> bytes:
        results = request.count(b'"role":"tool"') + request.count(b'"role": "tool"')
        message: dict[str, Any]
        if self.ask_on is not None and self.ask_on in request:
            if results:
                message = {"role": "assistant", "content": self.answer}
            else:
                message = self._call("request_human_input", json.dumps({"question": QUESTION}))
        elif self.rounds is not None and results >= self.rounds:
            message = {"role": "assistant", "content": self.answer}
        else:
            message = self._call(self.tool, self.arguments)
        if not self.plain and (b'"stream":true' in request or b'"stream": true' in request):
            return _streamed(message)
        body = json.dumps(
            {
                "id": "cmpl",
                "object": "chat.completion",
                "created": 0,
                "model": "instant",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            }
        ).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


def _streamed(message: dict[str, Any]) -> bytes:
    """The message as a chunked stream of server-sent events: the role, the
    text or the call's id and name, its arguments a piece at a time, the
    finish reason, `[DONE]`."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    text = message.get("content") or ""
    deltas += [{"content": text[i : i + PIECE]} for i in range(0, len(text), PIECE)]
    for call in message.get("tool_calls") or ():
        arguments = call["function"]["arguments"]
        deltas.append(
            {"tool_calls": [{**call, "index": 0, "function": {"name": call["function"]["name"]}}]}
        )
        deltas += [
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + PIECE]}}]}
            for i in range(0, len(arguments), PIECE)
        ]
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    choices: list[dict[str, Any]] = [
        {"index": 0, "delta": d, "finish_reason": None} for d in deltas
    ]
    choices.append({"index": 0, "delta": {}, "finish_reason": finish})
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    out = [head]
    for c in choices:
        chunk = {
            "id": "cmpl",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "instant",
            "choices": [c],
        }
        data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        out.append(b"%x\r\n%s\r\n" % (len(data), data))
    out.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self, server: InstantModel) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.pieces: list[bytes] = []
        self.have = 0
        self.need: int | None = None
        """Bytes of the request (head and body), once the head is in."""
        self.answering: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.have += len(data)
        while True:
            if self.need is None:
                joined = b"".join(self.pieces)
                end = joined.find(b"\r\n\r\n")
                if end < 0:
                    self.pieces = [joined]
                    return
                length = 0
                for line in joined[:end].split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.pieces, self.need = [joined], end + 4 + length
            if self.have < self.need:
                return
            at = time.perf_counter()  # the last byte is in: the request has arrived
            joined = b"".join(self.pieces)
            request, rest = joined[: self.need], joined[self.need :]
            self.server.arrived(at)
            task = asyncio.get_running_loop().create_task(self._answer(request))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
            self.pieces, self.have, self.need = [rest] if rest else [], len(rest), None
            if not rest:
                return

    async def _answer(self, request: bytes) -> None:
        probe = self.server.ask_on is not None and self.server.ask_on in request
        if self.server.delay and not probe:
            await asyncio.sleep(self.server.delay)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.server.reply(request))


@contextlib.contextmanager
def child_process(*args: str) -> Iterator[str]:
    """`python *args` from the repository, for code without an event loop.
    Yields the first line it prints (where it listens); killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def model_server_process(*args: str) -> Iterator[str]:
    """The server with these command-line arguments (plus --quiet). Yields
    its base URL."""
    with child_process("-m", "tests.bench.model_server", "--quiet", *args) as port:
        yield f"http://127.0.0.1:{int(port)}/v1"


class ModelServer:
    """`InstantModel` in a child process, seen from the benchmark."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self._proc = proc
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.arrivals: list[float] = []

    @classmethod
    async def start(
        cls,
        tool: str = "request_human_input",
        arguments: str | None = None,
        *,
        delay: float = 0.0,
        rounds: int | None = None,
        report: bool = True,
        answer: str | None = None,
        plain: bool = False,
    ) -> ModelServer:
        """`report`: learn when each request arrives (`arrival_after`)."""
        args = ["--tool", tool, "--delay", str(delay)]
        if not report:
            args.append("--quiet")
        if arguments is not None:
            args += ["--arguments", arguments]
        if rounds is not None:
            args += ["--rounds", str(rounds)]
        if answer is not None:
            args += ["--answer", answer]
        if plain:
            args.append("--plain")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.model_server",
            *args,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        return cls(proc, port)

    async def arrival_after(self, t0: float) -> float:
        """When the first request after `t0` arrived, once it has."""
        assert self._proc.stdout is not None
        while not self.arrivals or self.arrivals[-1] < t0:
            line = await self._proc.stdout.readline()
            if not line:
                raise RuntimeError("the model server stopped")
            self.arrivals.append(float(line.split()[1]))
        return next(t for t in self.arrivals if t >= t0)

    async def stop(self) -> None:
        self._proc.kill()
        await self._proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.model_server")
    p.add_argument("--tool", default="request_human_input")
    p.add_argument("--arguments")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--rounds", type=int)
    p.add_argument("--answer", default="done", help="the text of a text reply")
    p.add_argument(
        "--plain", action="store_true", help="answer with the whole completion, even to a stream"
    )
    p.add_argument("--quiet", action="store_true", help="print the port only")
    p.add_argument(
        "--ask-on", help="answer a request that holds this at once: a question, then text"
    )
    args = p.parse_args()

    async def serve() -> None:
        server = InstantModel(
            args.tool,
            args.arguments,
            delay=args.delay,
            rounds=args.rounds,
            report=not args.quiet,
            ask_on=args.ask_on,
            answer=args.answer,
            plain=args.plain,
        )
        await server.start()
        print(server.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
