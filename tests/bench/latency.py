"""What a person waits for after approving, with a model as slow as real ones.

The approval scenario (`tests.bench.approvals`) against a model server that
takes `--latency` seconds to answer each request. Each round-trip: the
thread waits for approval of `deploy`, a person approves through the Python
API, the tool returns at once, the model proposes the next `deploy`, and the
thread waits again. Timed from the approval received to:

- request sent: the next model request has reached the model server;
- reply recorded: the model's reply is stored and the run has paused again
  (what the person sees next: the next approval request).

    python -m tests.bench.latency [--latency 0.3,2] [--round-trips 15] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bot import OpenAIModel, ThreadBot, Toolbox
from store import EventStore
from threadbot.process import tune_for_serving

from .approvals import ARGS, deploy
from .model_server import ModelServer


async def round_trips(latency: float, n: int, work: Path) -> dict[str, Any]:
    model_server = await ModelServer.start("deploy", json.dumps(ARGS), delay=latency)
    store = EventStore(work / f"latency-{latency}.db")
    model = OpenAIModel("slow", base_url=model_server.base_url)
    bot = ThreadBot(store, model, Toolbox([deploy]), max_turns=10**9)
    tune_for_serving()  # as `threadbot serve` does
    thread_id = await bot.launch("deploy the api")
    await bot.settle(thread_id)
    sent: list[float] = []
    recorded: list[float] = []
    for _ in range(n):
        pending = bot.get(thread_id).state.pending
        assert pending is not None and pending.kind == "approval"
        t0 = time.perf_counter()
        await bot.decide(thread_id, True, call_id=pending.call_id)
        await bot.settle(thread_id)
        recorded.append(time.perf_counter() - t0)
        sent.append(await model_server.arrival_after(t0) - t0)
    assert bot.get(thread_id).state.status == "waiting_for_approval"
    await bot.close()
    await model_server.stop()
    store.close()

    def ms(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(values) * 1e3, 2),
            "min_ms": round(min(values) * 1e3, 2),
            "max_ms": round(max(values) * 1e3, 2),
        }

    return {
        "model_latency_s": latency,
        "round_trips": n,
        "approval_to_request_sent": ms(sent),
        "approval_to_reply_recorded": ms(recorded),
        "reply_recorded_minus_latency_p50_ms": round(
            (statistics.median(recorded) - latency) * 1e3, 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.latency", description=__doc__)
    p.add_argument("--latency", default="0.3,2", help="model latencies in seconds")
    p.add_argument("--round-trips", type=int, default=15)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for latency in (float(x) for x in args.latency.split(",")):
            rows.append(asyncio.run(round_trips(latency, args.round_trips, Path(d))))
    head = (
        f"{'model':>7} | {'approval → request sent':>24} | {'approval → reply recorded':>26}"
        f" | {'beyond the model':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        sent, rec = r["approval_to_request_sent"], r["approval_to_reply_recorded"]
        lines.append(
            f"{r['model_latency_s']:>5} s | {sent['p50_ms']:>8.2f} ms p50 "
            f"(max {sent['max_ms']:>6.2f}) | {rec['p50_ms']:>9.2f} ms p50 "
            f"(max {rec['max_ms']:>7.2f}) | {r['reply_recorded_minus_latency_p50_ms']:>13.2f} ms"
        )
    print("\n".join(lines))
    print(json.dumps(rows, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
