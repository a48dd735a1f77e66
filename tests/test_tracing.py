"""Traces: the spans of a thread's runs, exported to the SDK's in-memory
exporter from a bot whose model is the real `openai` client against the
local fake; a run after a pause continues the thread's trace; `threadbot
serve` sends spans where the OTEL_* variables say, and loads nothing of
OpenTelemetry when they say nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from bot import ThreadBot
from threadbot.config import tracing_wanted
from threadbot.tracing import Tracing, thread_span_context

from .conftest import make_bot, settled
from .fakes import REPO, FakeOpenAI, ServerProcess, ask, calls, clean_environ, text
from .test_http import env_for, wait_status

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


def traced_bot(db_path: Path, fake: FakeOpenAI, exporter: InMemorySpanExporter) -> ThreadBot:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return make_bot(db_path, fake, observer=Tracing(provider.get_tracer("test")))


def tree(spans: tuple[ReadableSpan, ...]) -> list[tuple[str, str | None, str]]:
    """Each span as (name, its parent's name or None, its step or tool)."""
    by_id = {s.context.span_id: s for s in spans}
    out = []
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = by_id.get(s.parent.span_id) if s.parent is not None else None
        what = s.attributes.get("threadbot.step") or s.attributes.get("threadbot.tool") or ""
        out.append((s.name, parent.name if parent else None, str(what)))
    return out


async def test_a_thread_is_one_trace_across_its_pause(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, exporter: InMemorySpanExporter
) -> None:
    unavailable = {"status": 503}
    fake_openai.add(
        ask("Which service?"),
        calls(("lookup", {"name": "api"})),
        # max_retries=2: three answers make one failed call; the runner tries again.
        unavailable,
        unavailable,
        unavailable,
        text("api is healthy."),
    )
    bot = traced_bot(db_path, fake_openai, exporter)
    try:
        thread_id = await bot.launch("is the api up?")
        assert (await settled(bot, thread_id)).state.status == "waiting_for_human"
        first = exporter.get_finished_spans()
        await bot.respond(thread_id, "api")
        assert (await settled(bot, thread_id)).state.status == "done"
    finally:
        await bot.close()
        bot.store.close()
    spans = exporter.get_finished_spans()
    second = spans[len(first) :]

    assert tree(first) == [
        ("threadbot.run", None, ""),
        ("threadbot.step", "threadbot.run", "CallModel"),
        ("threadbot.model", "threadbot.step", ""),
    ]
    assert tree(second) == [
        ("threadbot.run", None, ""),
        ("threadbot.step", "threadbot.run", "CallModel"),
        ("threadbot.model", "threadbot.step", ""),
        ("threadbot.step", "threadbot.run", "RunTool"),
        ("threadbot.tool", "threadbot.step", "lookup"),
        ("threadbot.step", "threadbot.run", "CallModel"),
        ("threadbot.model", "threadbot.step", ""),
        ("threadbot.step", "threadbot.run", "CallModel"),
        ("threadbot.model", "threadbot.step", ""),
    ]
    assert all(s.attributes["threadbot.thread_id"] == thread_id for s in spans)

    # Both runs are children of the thread, in the thread's trace: the run
    # after the pause continues what the first began.
    thread = thread_span_context(thread_id)
    runs = [s for s in spans if s.name == "threadbot.run"]
    assert len(runs) == 2
    for run in runs:
        assert run.parent is not None and run.parent.is_remote
        assert (run.parent.trace_id, run.parent.span_id) == (thread.trace_id, thread.span_id)
    assert {s.context.trace_id for s in spans} == {thread.trace_id}
    assert runs[0].context.span_id != runs[1].context.span_id

    models = [s for s in spans if s.name == "threadbot.model"]
    assert [s.status.status_code for s in models] == [
        StatusCode.UNSET,
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert "model error 503" in (models[2].status.description or "")
    # The fake's counts, from each whole reply.
    assert models[0].attributes["gen_ai.usage.input_tokens"] == 1
    assert "gen_ai.usage.input_tokens" not in models[2].attributes
    [tool] = [s for s in spans if s.name == "threadbot.tool"]
    assert tool.status.status_code == StatusCode.UNSET
    assert tool.attributes["threadbot.call_id"].startswith("call_")


async def test_a_failing_tool_is_an_error_span(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path, exporter: InMemorySpanExporter
) -> None:
    fake_openai.add(calls(("flaky", {"n": 3})), text("It failed."))
    bot = traced_bot(db_path, fake_openai, exporter)
    try:
        thread_id = await bot.launch("try it")
        assert (await settled(bot, thread_id)).state.status == "done"
    finally:
        await bot.close()
        bot.store.close()
    [tool] = [s for s in exporter.get_finished_spans() if s.name == "threadbot.tool"]
    assert tool.status.status_code == StatusCode.ERROR
    assert tool.attributes["threadbot.tool"] == "flaky"


async def test_different_threads_are_different_traces() -> None:
    a, b = thread_span_context("a1"), thread_span_context("b2")
    assert a.trace_id != b.trace_id and a.span_id != b.span_id
    assert thread_span_context("a1") == a  # the same in every process


def test_the_otel_variables_decide() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})


def test_serve_sends_spans_where_the_variables_say(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """The SDK's console exporter, named by OTEL_TRACES_EXPORTER: the spans
    are written when the server stops."""
    fake_openai.add(text("Hello."))
    env = env_for(
        tmp_path / "t.db",
        fake_openai,
        tmp_path / "ledger.txt",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="threadbot-test",
    )
    server = ServerProcess(env).start()
    try:
        assert "traces: spans to OTEL_TRACES_EXPORTER" in server.output()
        with httpx.Client(base_url=server.url, timeout=10) as c:
            thread_id = c.post("/threads", json={"text": "hi"}).json()["id"]
            wait_status(c, thread_id, "done")
        server.proc.terminate()
        server.proc.wait(15)
        out = server.output()
    finally:
        server.stop()
    every = [json.loads(chunk) for chunk in _json_objects(out)]
    # FastAPI traces each request on the same provider, in traces of their own.
    assert "POST /threads" in {s["name"] for s in every}
    spans = [s for s in every if s["name"].startswith("threadbot.")]
    names = sorted(s["name"] for s in spans)
    assert names == ["threadbot.model", "threadbot.run", "threadbot.step"]
    assert {s["attributes"]["threadbot.thread_id"] for s in spans} == {thread_id}
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"threadbot-test"}


def _json_objects(out: str) -> list[str]:
    """The JSON objects the console exporter wrote among the server's lines
    (each starts with a line `{` and ends with a line `}`)."""
    found, current = [], None
    for line in out.splitlines():
        if line == "{":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                found.append("\n".join(current))
                current = None
    return found


def test_without_the_variables_no_tracing_is_loaded(tmp_path: Path) -> None:
    program = (
        "import sys, os\n"
        "from store import open_store\n"
        "from threadbot.serve import build_observer\n"
        f"observing = build_observer(open_store({str(tmp_path / 't.db')!r}), os.environ)\n"
        "print(observing.traces)\n"
        # FastAPI and mcp import OpenTelemetry's API when it is installed; the
        # SDK and threadbot's spans are loaded only when asked for.
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'threadbot.tracing'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out == ["off (set OTEL_EXPORTER_OTLP_ENDPOINT to send spans)", "[]"]
