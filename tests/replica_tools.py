"""Tools for the replica tests: the ledger tools, and a slow read-only one.

Every side effect is a line in the ledger (see `ledger_tools`), so a test
counts how often a call really ran, whichever replica ran it."""

from __future__ import annotations

import os
import time

from bot import ToolContext, tool
from tests.ledger_tools import deploy, lookup, record, slow_charge

__all__ = ["deploy", "lookup", "slow_charge", "slow_fetch"]


@tool(idempotent=True)
def slow_fetch(key: str, ctx: ToolContext) -> str:
    """Fetch a report (read-only, slow): safe to run again after a crash."""
    record(f"fetch start {key} {ctx.call_id} at={time.time()}")
    time.sleep(float(os.environ.get("THREADBOT_TEST_SLOW", "30")))
    record(f"fetch end {key} {ctx.call_id}")
    return f"report {key}"
