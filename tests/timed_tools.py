"""Tools with short timers and named approvers, for the email tests of
deadlines, reminders, escalation and approvals across channels (loaded by
`threadbot serve` through THREADBOT_TOOLS). Whether a tool ran is read from
the thread's events."""

from __future__ import annotations

from bot import tool


@tool(requires_approval=True, approvers=["lead@example.com"])
def deploy(service: str) -> str:
    """Deploy a service."""
    return f"deployed {service}"


@tool(
    requires_approval=True,
    approvers=["lead@example.com"],
    remind_after=1,
    escalate_after=2,
    escalate_to=["oncall@example.com"],
)
def restart(service: str) -> str:
    """Restart a service; reminds its approver, then asks on-call."""
    return f"restarted {service}"


@tool(requires_approval=True, approvers=["lead@example.com"], remind_after=1)
def rotate_keys(service: str) -> str:
    """Rotate a service's keys; reminds its approver."""
    return f"rotated {service}"


@tool(requires_approval=True, approvers=["lead@example.com"], deadline=1)
def migrate(db: str) -> str:
    """Migrate a database; rejected if nobody approves within a second."""
    return f"migrated {db}"


@tool(
    requires_approval=True,
    approvers=["lead@example.com", "bob@example.com"],
    approvals_required=2,
    remind_after=1,
)
def drop_table(name: str) -> str:
    """Drop a table; two approvers."""
    return f"dropped {name}"


@tool(requires_approval=True, approvers=["carol"])
def scale(service: str, replicas: int) -> str:
    """Scale a service; Carol decides."""
    return f"scaled {service} to {replicas}"
