"""What a person waits for on the HTTP API: one request, sent to its answer.

A real `threadbot serve` runs in a process of its own (loopback, no token:
the local operator, as on a first run) with a model server in another. Many
threads wait, half for approval and half for an answer; each gets one
decision or one answer, as a person clicking on the web page would send it
(JSON, `Origin` and `Sec-Fetch-Site: same-origin`), over one kept-alive
connection from this process with the standard library's client. A request
is timed from before it is written to after its whole response is read.
Between requests the server is left to finish what the last one started (the
agent resuming), so each one meets an idle server.

    python -m tests.bench.http_latency [--threads 200] [--pause 0.03]
        [--server-root DIR [--server-root DIR]] [--json FILE]

`--server-root` runs the server from another checkout of the repository
(e.g. `git archive` of an earlier commit), with the checkout's own `.venv` if
it has one. Given twice, both servers run side by side and their requests
alternate, so that a comparison of two versions is not a comparison of two
moments of a shared machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .__main__ import _pct
from .model_server import model_server_process

REPO = Path(__file__).resolve().parents[2]
ASK = "ASK"
"""A thread launched with this in its text is asked a question; the others
propose `deploy`, which waits for approval."""
KINDS = ("approval POST", "answer POST", "thread GET")


class Client:
    """One kept-alive connection, as a browser tab holds one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.origin = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """Status, decoded JSON and seconds taken."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers |= {
                "Content-Type": "application/json",
                "Origin": self.origin,
                "Sec-Fetch-Site": "same-origin",
            }
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        took = time.perf_counter() - t0
        return response.status, json.loads(raw), took

    def close(self) -> None:
        self.conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(root: Path, model_url: str, work: Path) -> Iterator[int]:
    """`threadbot serve` from `root`, until the block ends. Yields its port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADBOT_", "OPENAI_"))}
    env |= {
        "THREADBOT_DB": str(work / "threadbot.db"),
        "THREADBOT_HTTP": f"127.0.0.1:{port}",
        "THREADBOT_SMTP": f"127.0.0.1:{_free_port()}",
        "THREADBOT_TOOLS": str(Path(__file__).with_name("http_tools.py")),
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "THREADBOT_MODEL": "instant",
        # The server's code comes from `root`; the client's from this checkout.
        "PYTHONPATH": str(root),
    }
    # A checkout with a virtual environment of its own runs with its own packages.
    python = root / ".venv" / "bin" / "python"
    with (work / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(python) if python.exists() else sys.executable, "-m", "threadbot", "serve"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "server.log").read_text())
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        c.close()
                        break
                except OSError:
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for(client: Client, status: str, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        _, rows, _ = client.call("GET", f"/threads?status={status}&limit=1000")
        if len(rows) >= count:
            return [r["id"] for r in rows]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)} of {count} threads are {status}")
        time.sleep(0.1)


def prepare(client: Client, n: int) -> tuple[list[str], list[str]]:
    """`n` threads waiting for approval and `n` waiting for an answer."""
    for i in range(n):
        for text in (f"deploy the api, take {i}", f"{ASK} which version, take {i}"):
            status, _, _ = client.call("POST", "/threads", {"text": text})
            assert status == 201, status
    return (
        _wait_for(client, "waiting_for_approval", n),
        _wait_for(client, "waiting_for_human", n),
    )


def one_round(client: Client, approval: str, question: str, pause: float) -> dict[str, float]:
    """A person's three requests: read the thread waiting for approval,
    approve it, answer the other thread's question. Seconds each."""
    status, view, took_get = client.call("GET", f"/threads/{approval}")
    assert status == 200 and view["pending"]["kind"] == "approval", (status, view)
    time.sleep(pause)
    body = {"approved": True, "call_id": view["pending"]["call_id"]}
    status, got, took_approve = client.call("POST", f"/threads/{approval}/approvals", body)
    assert status == 202, (status, got)
    time.sleep(pause)
    status, got, took_answer = client.call("POST", f"/threads/{question}/responses", {"text": "1"})
    assert status == 202, (status, got)
    time.sleep(pause)
    return {"approval POST": took_approve, "answer POST": took_answer, "thread GET": took_get}


@contextmanager
def server_with_threads(root: Path, threads: int) -> Iterator[tuple[Client, list[str], list[str]]]:
    """A server from `root` with its own model server and database, and
    `threads` threads of each kind waiting."""
    arguments = json.dumps({"service": "api", "version": "1.4.2"})
    with (
        model_server_process(
            "--tool", "deploy", "--arguments", arguments, "--rounds", "1", "--ask-on", ASK
        ) as model_url,
        tempfile.TemporaryDirectory() as d,
        serve(root, model_url, Path(d)) as port,
    ):
        client = Client(port)
        approvals, questions = prepare(client, threads)
        try:
            yield client, approvals, questions
        finally:
            client.close()


def run(roots: list[Path], threads: int, pause: float, warmup: int = 10) -> list[dict[str, Any]]:
    """Figures for each server root. With several, their requests alternate
    (A, B, B, A, ...), so that both meet the same machine."""
    with ExitStack() as stack:
        sides = [stack.enter_context(server_with_threads(r, threads + warmup)) for r in roots]
        for client, _, _ in sides:
            # Left idle while the other server was being prepared, a
            # connection may have met the server's keep-alive timeout: the
            # measurement starts on fresh ones (reopened by the first request,
            # a warm-up one).
            client.conn.close()
        times: list[dict[str, list[float]]] = [{k: [] for k in KINDS} for _ in roots]
        for i in range(threads + warmup):
            order = list(range(len(sides)))
            if i % 2:
                order.reverse()
            for s in order:
                client, approvals, questions = sides[s]
                took = one_round(client, approvals[i], questions[i], pause)
                if i >= warmup:
                    for kind, seconds in took.items():
                        times[s][kind].append(seconds)
    return [
        {
            "server_root": str(root),
            **{
                kind: {
                    "p50_ms": round(statistics.median(values) * 1e3, 3),
                    "p99_ms": round(_pct(values, 0.99) * 1e3, 3),
                    "n": len(values),
                }
                for kind, values in side.items()
            },
        }
        for root, side in zip(roots, times, strict=True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.http_latency")
    p.add_argument("--threads", type=int, default=200, help="threads of each kind measured")
    p.add_argument("--pause", type=float, default=0.03, help="seconds between requests")
    p.add_argument(
        "--server-root",
        type=Path,
        action="append",
        help="a checkout to run the server from (this one if unset); give two to compare",
    )
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    roots = [r.resolve() for r in args.server_root or [REPO]]
    rows = run(roots, args.threads, args.pause)
    print(f"{'server':>24} | {'request':>13} | {'p50':>8} | {'p99':>8} | n")
    for row in rows:
        for kind in KINDS:
            f = row[kind]
            print(
                f"{row['server_root'][-24:]:>24} | {kind:>13} | "
                f"{f['p50_ms']:6.2f}ms | {f['p99_ms']:6.2f}ms | {f['n']}"
            )
    report = {"python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
