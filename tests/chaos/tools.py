"""Tools for the kill harness, and its fault points inside the server.

`ship_soon` waits for approval with a reminder after 1 s, an escalation
after 2 s and a deadline at 5 s (rejected then).

Every side effect is a line in the ledger (fsynced), so the harness can count
how often each call really ran (and, for a call that needed approval, whom
the tool was told approved it). THREADBOT_CHAOS names where this server
process dies, as a comma-separated list with a probability each:
`tool_started:0.3,after_side_effect:0.3,inside_append:0.02`.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from bot import Deferred, ToolContext, tool
from store import is_postgres_url

_POINTS = {
    name: float(p)
    for name, _, p in (
        item.partition(":") for item in os.environ.get("THREADBOT_CHAOS", "").split(",") if item
    )
}


def _maybe_die(point: str) -> None:
    if random.random() < _POINTS.get(point, 0.0):
        os.kill(os.getpid(), signal.SIGKILL)


def _ledger(line: str) -> None:
    with Path(os.environ["THREADBOT_TEST_LEDGER"]).open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@tool
def charge(amount: int, ctx: ToolContext) -> str:
    """Charge money (not idempotent)."""
    _maybe_die("tool_started")
    _ledger(f"charge {ctx.call_id}")
    _maybe_die("after_side_effect")
    return f"charged {amount}"


@tool(requires_approval=True)
def ship(order: int, ctx: ToolContext) -> str:
    """Ship an order (needs approval, not idempotent)."""
    _maybe_die("tool_started")
    _ledger(f"ship {ctx.call_id} {ctx.approved_by}")
    _maybe_die("after_side_effect")
    return f"shipped {order}"


LEAD = ("U0LEAD", "lead@example.com")
"""Who a call nobody decides in time is escalated to: a Slack user and an address."""


@tool(requires_approval=True, remind_after=1, escalate_after=2, escalate_to=LEAD, deadline=5)
def ship_soon(order: int, ctx: ToolContext) -> str:
    """Ship an order that cannot wait: approved within 5 s or not at all (not idempotent)."""
    _maybe_die("tool_started")
    _ledger(f"ship {ctx.call_id} {ctx.approved_by}")
    _maybe_die("after_side_effect")
    return f"shipped {order}"


@tool
def start_report(name: str, ctx: ToolContext) -> Deferred:
    """Start a report; its result is posted later."""
    _ledger(f"report {ctx.call_id}")
    return Deferred(note="started")


@tool(idempotent=True)
def lookup(key: str) -> str:
    """Read-only."""
    return f"value of {key}"


# Dying inside an append: after the rows are written, before the commit
# (the same helper in both stores, called inside the append's transaction).
if "inside_append" in _POINTS:
    if is_postgres_url(os.environ.get("THREADBOT_DB", "")):
        from store import postgres as _store
    else:
        from store import sqlite as _store  # type: ignore[no-redef]
    _insert = _store._insert

    def _insert_then_maybe_die(*args, **kwargs):  # type: ignore[no-untyped-def]
        _insert(*args, **kwargs)
        _maybe_die("inside_append")

    _store._insert = _insert_then_maybe_die
