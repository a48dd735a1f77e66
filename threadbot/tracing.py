"""OpenTelemetry traces of the agent's work (the optional extra `threadbot[otel]`).

A span per run of a thread (`threadbot.run`), per step of the run
(`threadbot.step`), per model call (`threadbot.model`) and per tool call
(`threadbot.tool`), each with the attribute `threadbot.thread_id`.

A thread pauses for minutes or weeks, and its next run may be in another
process or on another host. Every run of a thread is one trace all the same:
the trace's id, and the id of the run spans' parent, are derived from the
thread's id, so no process needs to remember anything to continue it. That
parent is the thread itself, which has no span of its own (tracing tools show
the runs under a root they did not receive). A sampler that decides by trace
id (`traceidratio`) keeps or drops a thread's runs together.

Only imported when the OTEL_* variables ask for traces
(`threadbot.config.tracing_wanted`): otherwise threadbot loads nothing of the
SDK and its spans cost a call that does nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from bot.errors import UsageError
from bot.observe import Attributes, Observer, Usage

__all__ = ["Tracing", "provider_from_env", "thread_span_context"]

RUN = "threadbot.run"
THREAD_ID = "threadbot.thread_id"


_OTLP = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def provider_from_env(env: Mapping[str, str]) -> TracerProvider:
    """A tracer provider as the OTEL_* variables describe it. The SDK reads
    most of them itself (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER, OTEL_BSP_*, and each exporter its own
    OTEL_EXPORTER_OTLP_*); here only OTEL_TRACES_EXPORTER (default `otlp`)
    is turned into exporters, found where the SDK's plugins register them."""
    names = [n.strip() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "otlp":
            if protocol not in _OTLP:
                raise UsageError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {protocol!r}"
                )
            name = _OTLP[protocol]
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise UsageError(
                f"no OpenTelemetry trace exporter {name!r} is installed "
                "(OTEL_TRACES_EXPORTER): pip install 'threadbot[otel]'"
            )
        exporters.append(next(iter(found)).load()())
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "threadbot"})
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def thread_span_context(thread_id: str) -> SpanContext:
    """The thread as the remote parent of its runs: a trace id and a span id
    derived from its id, the same in every process."""
    digest = hashlib.sha256(b"threadbot thread " + thread_id.encode()).digest()
    return SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


class Tracing(Observer):
    """The core's observations as spans of `tracer`."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    @contextmanager
    def span(
        self, name: str, thread_id: str, attributes: Attributes | None = None
    ) -> Iterator[None]:
        # A run starts under its thread; everything else under what is current.
        parent = (
            trace.set_span_in_context(NonRecordingSpan(thread_span_context(thread_id)))
            if name == RUN
            else None
        )
        with self.tracer.start_as_current_span(
            name, context=parent, attributes={THREAD_ID: thread_id, **(attributes or {})}
        ):
            yield

    def model_called(self, seconds: float, usage: Usage | None, error: str | None) -> None:
        span = trace.get_current_span()
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if error is not None:
            span.set_status(StatusCode.ERROR, error)

    def tool_called(self, name: str, seconds: float, is_error: bool) -> None:
        if is_error:
            trace.get_current_span().set_status(StatusCode.ERROR, "the tool reported an error")
