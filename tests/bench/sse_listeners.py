"""Does following a thread slow down the people who act in it? A real
`threadbot serve` (loopback, no token, the bench model server in another
process, as in http_latency) with one thread that asks for approval of a
deploy again after each one. Approvals are POSTed to it one at a time, as
http_latency sends them (JSON, `Origin`, `Sec-Fetch-Site: same-origin`, one
kept-alive connection, timed from before the request is written to after its
whole response is read), first with nobody following the thread, then with
`--listeners` Server-Sent Events clients following it (in a process of their
own, so that their work is not this client's). Every listener must receive
every event stored meanwhile, once and in order.

    python -m tests.bench.sse_listeners [--listeners 200] [--approvals 200]
        [--pause 0.03] [--quick]

Prints a table, then the figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .__main__ import _pct
from .http_latency import REPO, Client, serve
from .model_server import model_server_process


def _waiting(client: Client, thread_id: str, last_call: str | None) -> str:
    """Until the thread waits for approval of a call other than `last_call`; its id."""
    deadline = time.monotonic() + 60
    while True:
        status, pending, _ = client.call("GET", f"/threads/{thread_id}/pending")
        assert status == 200, (status, pending)
        if pending and pending["kind"] == "approval" and pending["call_id"] != last_call:
            return str(pending["call_id"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"thread {thread_id} does not wait for approval: {pending}")
        time.sleep(0.005)


def approvals(client: Client, thread_id: str, n: int, pause: float) -> list[float]:
    """`n` approvals, each once the thread waits again; seconds each took."""
    took: list[float] = []
    call_id = _waiting(client, thread_id, None)
    for _ in range(n):
        time.sleep(pause)
        status, got, seconds = client.call(
            "POST", f"/threads/{thread_id}/approvals", {"approved": True, "call_id": call_id}
        )
        assert status == 202, (status, got)
        took.append(seconds)
        call_id = _waiting(client, thread_id, call_id)
    return took


# -- the listeners, in a process of their own ------------------------------------------


_ID = re.compile(rb"\nid: ([0-9]+)\n")
_EVENT = re.compile(rb"(?:^|\n)event: ")


async def _listen(port: int, thread_id: str, after: int, n: int) -> None:
    """`n` streams of the thread from `after` on, read as a browser reads
    them but with as little work here as can be (raw sockets, the ids picked
    out of the bytes): the machine's CPU is for the server. Prints `ready`
    once each has its response; reads the last seq from stdin; prints what
    each received."""
    seen: list[list[int]] = [[] for _ in range(n)]
    frames = [0] * n
    last: list[int] = []
    caught_up = asyncio.Event()

    def arrived() -> None:
        if last and all(s and s[-1] >= last[0] for s in seen):
            caught_up.set()

    async def one(i: int, opened: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /threads/{thread_id}/events?after={after} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        opened.set_result(None)
        rest = b""
        while chunk := await reader.read(65536):
            # Each chunk the server writes holds whole frames; a read may end
            # anywhere, so the part after the last whole frame waits for more.
            data = rest + chunk
            cut = data.rfind(b"\n\n") + 2
            whole, rest = data[:cut], data[cut:]
            frames[i] += len(_EVENT.findall(whole))
            ids = [int(x) for x in _ID.findall(whole)]
            if ids:
                seen[i].extend(ids)
                arrived()
        writer.close()

    opened = [asyncio.get_running_loop().create_future() for _ in range(n)]
    tasks = [asyncio.create_task(one(i, opened[i])) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*opened), 120)
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    last.append(int(line))
    arrived()
    with contextlib.suppress(TimeoutError):  # then the check finds who missed what
        await asyncio.wait_for(caught_up.wait(), 30)
    for t in tasks:
        t.cancel()
    print(json.dumps({"seen": seen, "frames": frames}), flush=True)


class Listeners:
    def __init__(self, port: int, thread_id: str, after: int, n: int) -> None:
        self.after = after
        self.n = n
        me = [sys.executable, "-m", "tests.bench.sse_listeners"]
        self.proc = subprocess.Popen(
            [*me, "--listen", str(port), thread_id, str(after), str(n)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.proc.kill()
            raise RuntimeError(f"the listeners did not start: {ready!r}")

    def finish(self, last: int) -> tuple[int, int]:
        """Tell them the last seq; (listeners that got every event after
        `after` once and in order, frames of every kind they received)."""
        out, _ = self.proc.communicate(f"{last}\n", timeout=120)
        got = json.loads(out.strip().splitlines()[-1])
        expected = list(range(self.after + 1, last + 1))
        whole = sum(1 for seen in got["seen"] if seen == expected)
        return whole, sum(got["frames"])


# -- the run ---------------------------------------------------------------------------


def _figures(took: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(took) * 1e3, 3),
        "p99_ms": round(_pct(took, 0.99) * 1e3, 3),
        "n": len(took),
    }


def run(listeners: int, n: int, pause: float, warmup: int = 10) -> dict[str, Any]:
    arguments = json.dumps({"service": "api", "version": "1.4.2"})
    with (
        model_server_process("--tool", "deploy", "--arguments", arguments) as model_url,
        tempfile.TemporaryDirectory() as d,
        serve(REPO, model_url, Path(d)) as port,
    ):
        client = Client(port)
        status, created, _ = client.call("POST", "/threads", {"text": "deploy the api, again"})
        assert status == 201, created
        thread_id = created["id"]
        approvals(client, thread_id, warmup, pause)
        alone = approvals(client, thread_id, n, pause)
        status, view, _ = client.call("GET", f"/threads/{thread_id}")
        after = len(view["events"]) - 1
        following = Listeners(port, thread_id, after, listeners)
        try:
            approvals(client, thread_id, warmup, pause)
            followed = approvals(client, thread_id, n, pause)
            status, view, _ = client.call("GET", f"/threads/{thread_id}")
            last = len(view["events"]) - 1
            whole, frames = following.finish(last)
        finally:
            if following.proc.poll() is None:
                following.proc.kill()
            client.close()
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "listeners": listeners,
        "approval POST, nobody following": _figures(alone),
        f"approval POST, {listeners} following": _figures(followed),
        "events each listener should get": last - after,
        "listeners that got every event once, in order": whole,
        "frames received in all": frames,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.sse_listeners")
    p.add_argument("--listeners", type=int, default=200)
    p.add_argument("--approvals", type=int, default=200, help="approvals measured, each way")
    p.add_argument("--pause", type=float, default=0.03, help="seconds before each approval")
    p.add_argument("--quick", action="store_true", help="10 listeners, 10 approvals: a smoke run")
    p.add_argument("--listen", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.listen:
        port, thread_id, after, n = args.listen
        asyncio.run(_listen(int(port), thread_id, int(after), int(n)))
        return
    if args.quick:
        args.listeners, args.approvals = 10, 10
    report = run(args.listeners, args.approvals, args.pause)
    print(f"{'approval POST':>28} | {'p50':>8} | {'p99':>8} | n")
    for key in (k for k in report if k.startswith("approval POST")):
        f = report[key]
        print(f"{key:>28} | {f['p50_ms']:6.2f}ms | {f['p99_ms']:6.2f}ms | {f['n']}")
    expected = report["events each listener should get"]
    whole = report["listeners that got every event once, in order"]
    print(f"{whole} of {args.listeners} listeners got all {expected} events once, in order")
    if whole == args.listeners:
        print("every listener got every event")
    print(json.dumps(report))
    if whole != args.listeners:
        sys.exit(1)


if __name__ == "__main__":
    main()
