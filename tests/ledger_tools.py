"""Tools for the tests: every side effect is a line in a ledger file, so a test
can count how often a tool really ran (across processes and crashes)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from bot import Deferred, ToolContext, ToolError, tool


def _ledger() -> Path:
    return Path(os.environ.get("THREADBOT_TEST_LEDGER", "ledger.txt"))


def record(line: str) -> None:
    with _ledger().open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@tool(idempotent=True)
def lookup(name: str) -> dict[str, object]:
    """Look a service up (read-only)."""
    return {"name": name, "healthy": True}


@tool(requires_approval=True)
def deploy(service: str, version: str, ctx: ToolContext) -> str:
    """Deploy a service (needs approval)."""
    record(f"deploy {service} {version} {ctx.call_id} by={ctx.approved_by}")
    return f"deployed {service} {version}"


@tool(requires_approval=True, approvers=["U_BOSS"])
def drop_table(table: str) -> str:
    """Drop a table; only U_BOSS may approve."""
    record(f"drop {table}")
    return f"dropped {table}"


@tool
async def start_job(job: str, ctx: ToolContext) -> Deferred:
    """Start a long job; its result is posted later."""
    record(f"job {job} {ctx.call_id}")
    await asyncio.sleep(0)
    return Deferred(note=f"job {job} queued")


@tool
def flaky(n: int) -> str:
    """Always fails."""
    raise ToolError(f"flaky failed on {n}")


@tool
def explode() -> str:
    """Raises an unexpected exception."""
    raise RuntimeError("kaboom")


@tool
def slow_charge(amount: int, ctx: ToolContext) -> str:
    """Charges money, slowly: the side effect happens, then a long wait."""
    record(f"charge {amount} {ctx.call_id}")
    time.sleep(float(os.environ.get("THREADBOT_TEST_SLOW", "30")))
    return f"charged {amount}"
