"""What a streamed reply costs the client, against the same reply sent whole.

Two model servers (tests/bench/model_server.py, each in a process of its
own) give the same reply to the same request: one streams it as OpenAI does
(a chunk per ~4 characters of text or arguments), the other sends the whole
completion at once, as a server that ignores `stream` does. threadbot's
`OpenAIModel.complete` asks them in turn, through the real `openai` client;
for each reply it takes the CPU this process spent and the time until the
reply was whole.

    python -m tests.bench.stream_cost [--calls 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bot import OpenAIModel
from bot.context import Context, system_part
from threadbot.process import tune_for_serving

from .model_server import PIECE, QUESTION, ModelServer

REPLIES: dict[str, dict[str, Any]] = {
    "a question (tool call, 212 B of arguments)": {},
    "a text reply of 200 B": {"rounds": 0, "answer": "y" * 200},
    "a text reply of 2,000 B": {"rounds": 0, "answer": "y" * 2000},
}

CONTEXT = Context(
    [
        system_part("You are a benchmark."),
        json.dumps({"role": "user", "content": QUESTION}).encode(),
    ]
)


async def _one(model: OpenAIModel, pieces: list[str]) -> tuple[float, float]:
    """CPU seconds and wall seconds of one reply."""
    cpu, wall = time.process_time(), time.perf_counter()
    await model.complete(CONTEXT, [], on_text=pieces.append)
    return time.process_time() - cpu, time.perf_counter() - wall


async def _measure(name: str, server_args: dict[str, Any], calls: int) -> dict[str, Any]:
    servers = {
        "whole": await ModelServer.start(report=False, plain=True, **server_args),
        "streamed": await ModelServer.start(report=False, **server_args),
    }
    models = {k: OpenAIModel("instant", base_url=s.base_url) for k, s in servers.items()}
    figures: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in servers}
    pieces: list[str] = []
    for i in range(calls + 20):  # the first 20 warm up
        for k, model in models.items():  # in turn, so that both see the same machine
            cpu, wall = await _one(model, pieces)
            if i >= 20:
                figures[k]["cpu"].append(cpu)
                figures[k]["wall"].append(wall)
    # Both ways give the same reply.
    whole, streamed = [await m.complete(CONTEXT, []) for m in models.values()]
    assert whole.text == streamed.text, (whole, streamed)
    assert [(c.name, c.arguments) for c in whole.calls] == [
        (c.name, c.arguments) for c in streamed.calls
    ]
    for model in models.values():
        await model.aclose()
    for server in servers.values():
        await server.stop()
    size = len(server_args.get("answer") or json.dumps({"question": QUESTION}))
    row: dict[str, Any] = {"reply": name, "chunks": -(-size // PIECE) + 3}
    for k, f in figures.items():
        row[f"{k}_cpu_ms"] = statistics.mean(f["cpu"]) * 1000
        row[f"{k}_wall_p50_ms"] = statistics.median(f["wall"]) * 1000
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.stream_cost")
    p.add_argument("--calls", type=int, default=300, help="replies of each kind, each way")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    tune_for_serving()

    async def run() -> list[dict[str, Any]]:
        return [await _measure(name, a, args.calls) for name, a in REPLIES.items()]

    rows = asyncio.run(run())
    print(
        "reply | chunks | CPU whole | CPU streamed | until whole: whole p50 | streamed p50\n"
        + "\n".join(
            f"{r['reply']} | {r['chunks']} | {r['whole_cpu_ms']:.2f} ms | "
            f"{r['streamed_cpu_ms']:.2f} ms | {r['whole_wall_p50_ms']:.2f} ms | "
            f"{r['streamed_wall_p50_ms']:.2f} ms"
            for r in rows
        )
    )
    print(json.dumps(rows, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
