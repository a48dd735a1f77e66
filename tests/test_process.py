"""`THREADBOT_TUNE`: what `threadbot serve` does to its process, and when.

A thread left running by an earlier process is resumed at start-up; its
tool reports the collector's settings as it runs. With the setting on they
are in effect before that first run; with it off the process keeps Python's
defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.events import Source, ToolCall, UserMessage
from bot.log import ThreadLog
from store import EventStore

from .fakes import FakeOpenAI, ServerProcess, text
from .test_http import env_for

TOOLS = '''
import gc, json, os, sys
from bot import tool

@tool(idempotent=True)
def process_settings() -> str:
    """How this process collects garbage and switches threads."""
    seen = {"thresholds": gc.get_threshold(), "switch": sys.getswitchinterval()}
    with open(os.environ["THREADBOT_TEST_LEDGER"], "a") as f:
        f.write(json.dumps(seen) + "\\n")
    return "noted"
'''


def python_defaults() -> list[Any]:
    """A fresh interpreter's thresholds and switch interval."""
    code = "import gc, json, sys; print(json.dumps([gc.get_threshold(), sys.getswitchinterval()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    defaults: list[Any] = json.loads(out.stdout)
    return defaults


def serve_a_resumed_thread(
    tmp_path: Path, fake: FakeOpenAI, **env: str
) -> tuple[dict[str, Any], str]:
    """What the resumed thread's tool saw, and the start-up banner."""
    db = tmp_path / "t.db"
    store = EventStore(db)
    ThreadLog(store).create_sync(
        "left-running",
        [
            UserMessage(text="how is the process?", source=Source(channel="http")),
            ToolCall(call_id="c1", name="process_settings", arguments={}),
        ],
    )
    store.close()
    tools = tmp_path / "process_tools.py"
    tools.write_text(TOOLS)
    ledger = tmp_path / "ledger.txt"
    fake.add(text("It is fine."))
    server = ServerProcess(env_for(db, fake, ledger, THREADBOT_TOOLS=str(tools), **env)).start()
    try:
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/threads/left-running").json()["status"] != "done":
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        banner = server.output()
    finally:
        server.stop()
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1, lines
    seen: dict[str, Any] = json.loads(lines[0])
    return seen, banner


def test_serve_tunes_before_the_first_run(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    seen, banner = serve_a_resumed_thread(tmp_path, fake_openai)
    thresholds, _ = python_defaults()
    assert seen == {"thresholds": [100_000, *thresholds[1:]], "switch": pytest.approx(0.0001)}
    assert "resumed 1 running thread(s)" in banner
    assert f"tune:   cycle collector every 100,000 new objects (was {thresholds[0]:,})" in banner


@pytest.mark.parametrize("value", ["off", "0"])
def test_tune_off_leaves_python_as_it_is(
    tmp_path: Path, fake_openai: FakeOpenAI, value: str
) -> None:
    seen, banner = serve_a_resumed_thread(tmp_path, fake_openai, THREADBOT_TUNE=value)
    thresholds, switch = python_defaults()
    assert seen == {"thresholds": thresholds, "switch": switch}
    assert "tune:   off (THREADBOT_TUNE=off)" in banner


def test_the_function_changes_the_young_threshold_and_the_switch_interval_only() -> None:
    """The other two thresholds mean different things to the generational
    collector and to 3.14's incremental one: they keep their defaults. A
    program using the Python API calls the same function."""
    code = (
        "import gc, json, sys\n"
        "from threadbot.process import tune_for_serving\n"
        "said = tune_for_serving()\n"
        "print(json.dumps([gc.get_threshold(), sys.getswitchinterval(), said]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after, switch_after, said = json.loads(out.stdout)
    thresholds, switch = python_defaults()
    assert after == [100_000, *thresholds[1:]]
    assert switch_after == pytest.approx(0.0001)
    assert said == (
        f"cycle collector every 100,000 new objects (was {thresholds[0]:,}); "
        f"thread switch every 0.1 ms (was {switch * 1e3:g} ms)"
    )
