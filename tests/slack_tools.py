"""Tools for the Slack tests of deadlines, reminders and escalation: short
timers, and approvers from the people file the tests write."""

from __future__ import annotations

from bot import tool


@tool(
    requires_approval=True,
    approvers=["lee"],
    remind_after=1,
    escalate_after=2,
    escalate_to=["sam"],
)
def restart(service: str) -> str:
    """Restart a service: Lee decides; reminded after a second, escalated to Sam after two."""
    return f"restarted {service}"


@tool(requires_approval=True, approvers=["lee"], deadline=1)
def purge(cache: str) -> str:
    """Purge a cache: rejected if Lee has not approved within a second."""
    return f"purged {cache}"


@tool(requires_approval=True, approvers=["lee", "pat"])
def deploy(service: str, version: str) -> str:
    """Deploy a service: Lee or Pat decides."""
    return f"deployed {service} {version}"


@tool(requires_approval=True, approvers=["lee", "sam"], approvals_required=2, deadline="1h")
def drop_table(table: str) -> str:
    """Drop a table: Lee and Sam both approve within the hour."""
    return f"dropped {table}"
