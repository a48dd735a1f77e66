"""A fake OpenAI-compatible model server for the benchmarks, run in a process
of its own as a remote model is: its CPU is not threadbot's, and the time a
request arrives is taken there, the moment its body is read.

    python -m tests.bench.model_server [--tool NAME] [--arguments JSON]
        [--delay SECONDS] [--rounds N]

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


class InstantModel:
    """A minimal HTTP/1.1 Chat Completions server on the event loop: every
    request gets a `request_human_input` call at once. Records when each
    request arrived."""

    def __init__(
        self,
        tool: str = "request_human_input",
        arguments: str | None = None,
        *,
        delay: float = 0.0,
        rounds: int | None = None,
        report: bool = False,
        finish_on: str | None = None,
    ) -> None:
        self.delay = delay
        self.rounds = rounds
        """With `rounds`, answer with text once a request holds that many tool results."""
        self.tool = tool
        self.arguments = arguments or json.dumps({"question": QUESTION})
        self.arrivals: list[float] = []
        self.report = report
        self.finish_on = finish_on.encode() if finish_on else None
        """Answer with text at once when a request holds this."""
        """Print each arrival's time (the clock is the machine's, shared by processes)."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = await reader.readexactly(length)
                self.arrivals.append(now := time.perf_counter())
                if self.report:
                    print(f"arrived {now!r}", flush=True)
                if self.delay:
                    await asyncio.sleep(self.delay)
                results = request.count(b'"role":"tool"') + request.count(b'"role": "tool"')
                done = self.finish_on is not None and self.finish_on in request
                if done or (self.rounds is not None and results >= self.rounds):
                    message: dict[str, Any] = {"role": "assistant", "content": "done"}
                else:
                    call = {
                        "id": f"call_{uuid.uuid4().hex[:12]}",
                        "type": "function",
                        "function": {"name": self.tool, "arguments": self.arguments},
                    }
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                body = json.dumps(
                    {
                        "id": "cmpl",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "instant",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()
        finally:
            self._writers.discard(writer)


@contextlib.contextmanager
def model_server_process(*args: str) -> Iterator[str]:
    """The server with these command-line arguments (plus --quiet), for
    code without an event loop. Yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.model_server", "--quiet", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"
    finally:
        proc.kill()
        proc.wait()


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
    ) -> ModelServer:
        """`report`: learn when each request arrives (`arrival_after`)."""
        args = ["--tool", tool, "--delay", str(delay)]
        if not report:
            args.append("--quiet")
        if arguments is not None:
            args += ["--arguments", arguments]
        if rounds is not None:
            args += ["--rounds", str(rounds)]
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
    p.add_argument("--quiet", action="store_true", help="print the port only")
    p.add_argument("--finish-on", help="answer with text when a request holds this")
    args = p.parse_args()

    async def serve() -> None:
        server = InstantModel(
            args.tool,
            args.arguments,
            delay=args.delay,
            rounds=args.rounds,
            report=not args.quiet,
            finish_on=args.finish_on,
        )
        await server.start()
        print(server.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
