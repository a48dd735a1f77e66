"""/metrics: what the core observes, as Prometheus metrics.

`Metrics` is the core's `Observer` turned into counters and histograms, plus
a collector that reads the threads' statuses from the store when Prometheus
scrapes (one grouped count and one indexed look per kind of wait). Each
`Metrics` has a registry of its own: nothing is kept in the client library's
global one, so several servers (and tests) in one process do not mix.

The metrics carry counts, durations and the names of channels, tools and
event types; never a thread's id or contents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import get_args

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bot import Status
from bot.observe import Observer, Usage
from store import Store

__all__ = ["Metrics", "mount_metrics"]

log = logging.getLogger("threadbot.metrics")

STATUSES: tuple[str, ...] = get_args(Status)
WAITS = {"question": "waiting_for_human", "approval": "waiting_for_approval"}
"""The kinds of wait whose oldest is measured, and the status of each."""

_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_MODEL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_TOOL_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


class Metrics(Observer):
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        r.register(ThreadsCollector(store))
        self.events = Counter(
            "threadbot_events_appended", "Events appended, by type.", ["type"], registry=r
        )
        self.append_seconds = Histogram(
            "threadbot_append_seconds",
            "Time an append took (events of one thread), until it was on disk.",
            buckets=_APPEND_BUCKETS,
            registry=r,
        )
        self.append_conflicts = Counter(
            "threadbot_append_conflicts",
            "Appends that lost to another writer of the same thread (they read it again).",
            registry=r,
        )
        self.model_calls = Counter(
            "threadbot_model_calls", "Model calls, by outcome (ok, error).", ["outcome"], registry=r
        )
        self.model_seconds = Histogram(
            "threadbot_model_call_seconds",
            "Time a model call took, errors included.",
            buckets=_MODEL_BUCKETS,
            registry=r,
        )
        self.model_tokens = Counter(
            "threadbot_model_tokens",
            "Tokens used by model calls, as the model's server counted them (prompt, completion).",
            ["kind"],
            registry=r,
        )
        self.tool_calls = Counter(
            "threadbot_tool_calls",
            "Tool calls, by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "threadbot_tool_call_seconds",
            "Time a tool call took.",
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "threadbot_deliveries",
            "Notices handed to a channel, by channel and outcome (ok, failed: tried again).",
            ["channel", "outcome"],
            registry=r,
        )
        self.takeovers = Counter(
            "threadbot_lease_takeovers",
            "Threads taken over from a runner that is gone (a killed process, a lost host).",
            registry=r,
        )
        self.webhooks = Counter(
            "threadbot_webhook_attempts",
            "Webhook posts, by outcome (delivered, retrying, failed: given up).",
            ["outcome"],
            registry=r,
        )
        # Every series that exists from the start, at 0, so that rates and
        # alerts see the first one happen.
        for outcome in ("ok", "error"):
            self.model_calls.labels(outcome)
        for kind in ("prompt", "completion"):
            self.model_tokens.labels(kind)
        for outcome in ("delivered", "retrying", "failed"):
            self.webhooks.labels(outcome)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the scraper's Accept header asks for
        (Prometheus's text format, or OpenMetrics), and its media type."""
        encode, media_type = choose_encoder(accept)
        return encode(self.registry), media_type

    # -- the core's observations --------------------------------------------------

    def appended(self, types: Sequence[str], seconds: float) -> None:
        for t in types:
            self.events.labels(t).inc()
        self.append_seconds.observe(seconds)

    def append_conflict(self) -> None:
        self.append_conflicts.inc()

    def model_called(self, seconds: float, usage: Usage | None, error: str | None) -> None:
        self.model_calls.labels("ok" if error is None else "error").inc()
        self.model_seconds.observe(seconds)
        if usage is not None:
            self.model_tokens.labels("prompt").inc(usage.prompt_tokens)
            self.model_tokens.labels("completion").inc(usage.completion_tokens)

    def tool_called(self, name: str, seconds: float, is_error: bool) -> None:
        self.tool_calls.labels(name, "error" if is_error else "ok").inc()
        self.tool_seconds.observe(seconds)

    def delivered(self, channel: str, ok: bool) -> None:
        self.deliveries.labels(channel, "ok" if ok else "failed").inc()

    def lease_taken_over(self) -> None:
        self.takeovers.inc()

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        self.webhooks.labels(outcome).inc()


class ThreadsCollector(Collector):
    """Threads by status, and how long the oldest has waited for a person,
    read from the store at each scrape: the same figures whichever replica
    is asked."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # nothing is read while the collector is registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.store.status_counts()
            oldest = {kind: self.store.least_recently_updated(s) for kind, s in WAITS.items()}
        except Exception:
            # A scrape still gets the process's own metrics; /readyz says why.
            log.warning("reading the threads' statuses for /metrics failed", exc_info=True)
            return
        threads = GaugeMetricFamily("threadbot_threads", "Threads, by status.", labels=["status"])
        for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
            threads.add_metric([status], counts.get(status, 0))
        yield threads
        waits = GaugeMetricFamily(
            "threadbot_oldest_wait_seconds",
            "Seconds since the longest-waiting thread of each kind (question, approval) "
            "last changed: its request, or a reminder or escalation since; 0 if none waits.",
            labels=["kind"],
        )
        now = time.time()
        for kind, updated_at in oldest.items():
            age = 0.0 if updated_at is None else max(0.0, now - _timestamp(updated_at))
            waits.add_metric([kind], age)
        yield waits


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def mount_metrics(app: FastAPI, metrics: Metrics) -> None:
    """GET /metrics, in Prometheus's text format. Who may read it is decided
    before (channels.auth: admins, or THREADBOT_METRICS_TOKEN)."""

    async def scrape(request: Request) -> Response:
        # On the serving loop, which owns the store's connection: one grouped
        # count and two indexed looks.
        body, media_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=media_type)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
