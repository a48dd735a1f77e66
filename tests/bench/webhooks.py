"""Webhooks: what they add to a thread's work, and how soon they arrive.

`python -m tests.bench.webhooks [--threads N]`: N threads each ask a
question (the scripted model, no HTTP model) on a SQLite file, first
without webhooks, then with one URL: a receiver on 127.0.0.1 that checks
each signature with `standardwebhooks`. Prints the time from launch to the
pause per thread (p50, p95) both ways, and, with webhooks, the time from the
pause's append to the webhook verified at the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bot import ModelReply, ScriptedModel, ThreadBot, Toolbox, Webhooks
from bot.model import ModelCall
from bot.webhooks import new_secret
from store import EventStore

from ..webhook_receiver import Receiver
from .__main__ import _pct

ASK = ModelReply(
    calls=(ModelCall("call_1", "request_human_input", json.dumps({"question": "Which version?"})),)
)


async def _run(
    threads: int, db: Path, hooks: Webhooks | None = None, receiver: Receiver | None = None
) -> list[float]:
    store = EventStore(db)
    model = ScriptedModel.of(*([ASK] * threads))
    bot = ThreadBot(store, model, Toolbox(), webhooks=hooks)
    await bot.resume_all()
    pauses = []
    try:
        for i in range(threads):
            started = time.perf_counter()
            thread_id = await bot.launch(f"deploy service {i}")
            await bot.settle(thread_id)
            pauses.append(time.perf_counter() - started)
        if receiver is not None:
            await asyncio.to_thread(receiver.wait_for, lambda r: len(r.got) == threads, timeout=60)
    finally:
        await bot.close()
        store.close()
    return pauses


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=200)
    args = p.parse_args()
    secret = new_secret()
    with tempfile.TemporaryDirectory() as tmp, Receiver(secret).serve() as receiver:
        plain = asyncio.run(_run(args.threads, Path(tmp) / "plain.db"))
        arrivals: dict[str, float] = {}
        handle = receiver.handle

        def timed(body: bytes, headers: dict[str, str]) -> int:
            status = handle(body, headers)
            arrivals[headers["webhook-id"]] = time.time()
            return status

        receiver.handle = timed  # type: ignore[method-assign]
        hooked_db = Path(tmp) / "hooked.db"
        hooks = Webhooks((receiver.url,), secret)
        hooked = asyncio.run(_run(args.threads, hooked_db, hooks, receiver))
        store = EventStore(hooked_db)
        appended = dict(store.execute("SELECT id, created_at FROM webhook_outbox").fetchall())
        store.close()
    lag = [arrivals[i] - appended[i] for i in appended]
    ms = 1000
    print(f"{args.threads} threads, each to its first question (SQLite, fsync on)")
    print(
        f"launch → paused, no webhooks:   p50 {_pct(plain, 0.5) * ms:6.2f} ms  "
        f"p95 {_pct(plain, 0.95) * ms:6.2f} ms"
    )
    print(
        f"launch → paused, one webhook:   p50 {_pct(hooked, 0.5) * ms:6.2f} ms  "
        f"p95 {_pct(hooked, 0.95) * ms:6.2f} ms"
    )
    print(
        f"append → webhook verified:      p50 {_pct(lag, 0.5) * ms:6.2f} ms  "
        f"p95 {_pct(lag, 0.95) * ms:6.2f} ms  ({len(receiver.refused)} refused)"
    )


if __name__ == "__main__":
    main()
