"""The floor under an approval's POST: what servers doing less than threadbot take.

The same client, request and pace as `tests.bench.http_latency` (a kept-alive
`http.client` connection, one approval-shaped POST at a time, each meeting an
idle server), against three servers that do less and less:

- `fastapi`: uvicorn and FastAPI, one route shaped like the approval route
  (path parameter, JSON body model, `Idempotency-Key` header, response model)
  that answers 202 without doing anything;
- `fsync`: uvicorn and a bare ASGI app that commits one row to SQLite (WAL,
  `synchronous = FULL`: one fsync) and answers 202;
- `bare`: uvicorn and a bare ASGI app that answers 202 at once.

    python -m tests.bench.http_floor [--requests 200] [--pause 0.03] [--runs 2]

Each server runs in a process of its own, with uvicorn configured as `serve`
configures it (httptools).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .http_latency import Client, _free_port

SERVERS = ("fastapi", "fsync", "bare")

SERVER = r"""
import sqlite3, sys
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Request
from pydantic import BaseModel, Field

kind, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = FULL")
conn.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body TEXT)")
ANSWER = b'{"thread_id":"t","seq":5,"duplicate":false}'


async def bare(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if kind == "fsync":
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (body) VALUES (?)", [body.decode()])
        conn.execute("COMMIT")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class ApprovalIn(BaseModel):
    approved: bool | None = Field(None, strict=True)
    comment: str | None = Field(None, max_length=4_000)
    call_id: Annotated[str, Field(max_length=200)] | None = None
    arguments: dict[str, Any] | None = None
    user: Annotated[str, Field(max_length=200)] | None = None


class Accepted(BaseModel):
    thread_id: str
    seq: int
    duplicate: bool


api = FastAPI(docs_url=None, redoc_url=None)
Key = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


@api.post("/threads/{thread_id}/approvals", status_code=202, response_model=Accepted)
async def approve(request: Request, thread_id: str, body: ApprovalIn, key: Key = None) -> Accepted:
    return Accepted(thread_id=thread_id, seq=5, duplicate=False)


app = api if kind == "fastapi" else bare
uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning", lifespan="off")
"""


def measure(kind: str, requests: int, pause: float, warmup: int = 10) -> float:
    """p50 in ms of `requests` approval POSTs to a fresh server of `kind`."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, kind, str(port), str(Path(d) / "floor.db")]
        )
        try:
            client = Client(port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.conn.connect()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the {kind} server did not start") from None
                    time.sleep(0.05)
            body = {"approved": True, "call_id": "call_0123456789abcdef"}
            took = []
            for i in range(requests + warmup):
                time.sleep(pause)
                status, _, seconds = client.call("POST", "/threads/t/approvals", body)
                assert status == 202, status
                if i >= warmup:
                    took.append(seconds)
            client.close()
            return statistics.median(took) * 1e3
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.http_floor")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--pause", type=float, default=0.03, help="seconds between requests")
    p.add_argument("--runs", type=int, default=2, help="fresh servers of each kind")
    args = p.parse_args()
    print(f"{'server':>8} | approval-shaped POST p50, one figure a run")
    for kind in SERVERS:
        runs = [measure(kind, args.requests, args.pause) for _ in range(args.runs)]
        print(f"{kind:>8} | " + ", ".join(f"{ms:.2f} ms" for ms in runs))


if __name__ == "__main__":
    main()
