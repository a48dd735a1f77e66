"""What threadbot as an MCP server adds around a person's answer.

An MCP client (the `mcp` package's, connected in process to the channel's
server) calls `ask_human`; a real ThreadBot on a SQLite file opens the
request; the answer is given through the Python API. Printed (p50, p99):

- open: the call sent → its first progress notification (the thread is on
  disk and its people reached)
- answer → result: `respond` returned (the answer on disk) → the client has
  the tool's result

    python -m tests.bench.mcp_wait [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client

from bot import People, Person, ScriptedModel, Source, ThreadBot
from channels.mcp import McpChannel
from store import EventStore

ANN = Person("ann", "Ann", emails=("ann@example.com",))
AGENT = Source(channel="mcp", user="ann", person="ann", name="Ann", auth="token:bench")


class FirstProgress:
    """The first progress notification of a call, and the handle it gives."""

    def __init__(self) -> None:
        self.came = asyncio.Event()
        self.handle = ""

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if not self.came.is_set():
            self.handle = (message or "").rsplit("handle ", 1)[1].rstrip(")")
            self.came.set()


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"


async def _run(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        bot = ThreadBot(EventStore(Path(d) / "bench.db"), ScriptedModel(), people=People([ANN]))
        channel = McpChannel(bot, lambda ctx: AGENT, opened_max=10**9)
        opened: list[float] = []
        answered: list[float] = []
        try:
            async with Client(channel.server) as client:
                for i in range(rounds):
                    progress = FirstProgress()
                    t0 = time.perf_counter()
                    call = asyncio.create_task(
                        client.call_tool(
                            "ask_human", {"question": f"q{i}?"}, progress_callback=progress
                        )
                    )
                    await progress.came.wait()
                    opened.append(time.perf_counter() - t0)
                    await bot.respond(progress.handle, "yes", source=AGENT)
                    t1 = time.perf_counter()
                    result = await call
                    answered.append(time.perf_counter() - t1)
                    assert result.structured_content is not None
                    assert result.structured_content["answer"] == "yes"
        finally:
            await bot.close()
            bot.store.close()
    print(f"{rounds} ask_human calls, in process, SQLite file", flush=True)
    print(f"  open:              {_ms(opened)}")
    print(f"  answer -> result:  {_ms(answered)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.mcp_wait", description=__doc__)
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args(argv)
    asyncio.run(_run(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
