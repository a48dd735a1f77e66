"""What streaming a reply into Slack costs: Web API calls per answer, and
how soon and how steadily the text shows.

A model writes an answer of `--sizes` characters word by word at `--rate`
characters a second (through `on_text`, as a streaming model does); the real
`SlackChannel` streams it into a direct message of the local fake Slack Web
API (tests/slack_fake.py), which stamps each call as it arrives. For each
size: the calls made (start, appends, stop), appends per minute of writing
(Slack allows chat.appendStream about 100 a minute per workspace), the time
from the model's first word to the stream's start, and from its last word to
the stream's stop (which includes storing the reply).

    python -m tests.bench.slack_stream [--sizes 500,2000,8000] [--rate 400] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import ModelReply, Source, ThreadBot
from bot.context import Context
from channels.slack import SlackChannel, SlackSettings
from store import EventStore

from ..slack_fake import FakeSlack


class Stamped(FakeSlack):
    def answer(
        self, method: str, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        args["_at"] = time.monotonic()
        return super().answer(method, args)


class Paced:
    """Writes its one answer at `rate` characters a second."""

    name = "paced"

    def __init__(self, text: str, rate: float) -> None:
        self.text, self.rate = text, rate
        self.first = self.last = 0.0

    async def complete(
        self, context: Context, tools: Sequence[dict[str, Any]], *, on_text: Any = None
    ) -> ModelReply:
        start = time.monotonic()
        written = 0
        for piece in re.findall(r"\S+\s*", self.text):
            written += len(piece)
            await asyncio.sleep(max(0.0, start + written / self.rate - time.monotonic()))
            self.first = self.first or time.monotonic()
            on_text(piece)
        self.last = time.monotonic()
        return ModelReply(text=self.text)


def answer_of(size: int) -> str:
    words = [f"word{i % 97}" for i in range(size)]
    text = ""
    for w in words:
        if len(text) + len(w) + 1 > size:
            break
        text += w + " "
    return text.strip()


async def one(slack: FakeSlack, size: int, rate: float, db: Path) -> dict[str, Any]:
    model = Paced(answer_of(size), rate)
    bot = ThreadBot(EventStore(db), model)
    channel = SlackChannel(bot, SlackSettings(bot_token="xoxb-bench", api_url=slack.api_url))
    bot.add_channel("slack", channel)
    conversation = f"D_BENCH{size}"
    refs = {"channel": conversation, "ts": "1.0", "thread_ts": "1.0", "team": "T1"}
    thread_id = await bot.launch("go", source=Source(channel="slack", user="U1", refs=refs))
    await bot.settle(thread_id)
    await channel.aclose()
    await bot.close()
    bot.store.close()
    calls = [(m, a) for m, a in slack.live_calls(conversation) if "Stream" in m]
    methods = [m for m, _ in calls]
    writing = max(model.last - model.first, 1e-9)
    appends = methods.count("chat.appendStream")
    return {
        "chars": len(model.text),
        "words": len(model.text.split()),
        "calls": len(calls),
        "appends": appends,
        "appends_per_minute": round(appends / writing * 60, 1),
        "first_text_ms": round((calls[0][1]["_at"] - model.first) * 1000, 1),
        "stop_after_last_word_ms": round((calls[-1][1]["_at"] - model.last) * 1000, 1),
        "posts": len([m for m, _ in slack.live_calls(conversation) if m == "chat.postMessage"]),
    }


async def main(sizes: list[int], rate: float) -> list[dict[str, Any]]:
    rows = []
    with Stamped().serve() as slack, tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows.append(await one(slack, size, rate, Path(tmp) / f"{size}.db"))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="500,2000,8000")
    parser.add_argument("--rate", type=float, default=400.0, help="characters a second")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = asyncio.run(main([int(s) for s in args.sizes.split(",")], args.rate))
    head = ["chars", "words", "calls", "appends", "appends/min", "first text ms", "stop ms"]
    print(f"model writing at {args.rate:g} characters a second")
    print("  ".join(f"{h:>13}" for h in head))
    for r in rows:
        values = [
            r["chars"],
            r["words"],
            r["calls"],
            r["appends"],
            r["appends_per_minute"],
            r["first_text_ms"],
            r["stop_after_last_word_ms"],
        ]
        print("  ".join(f"{v:>13}" for v in values))
    report = {"rate": args.rate, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
