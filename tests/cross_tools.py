"""Tools for the cross-channel tests: each names approvers reached on
another channel than the one the thread starts in."""

from __future__ import annotations

from bot import tool


@tool(requires_approval=True, approvers=["lee"])
def deploy(service: str) -> str:
    """Deploy a service: Lee (by mail) decides."""
    return f"deployed {service}"


@tool(requires_approval=True, approvers=["sam"])
def restart(service: str) -> str:
    """Restart a service: Sam (in Slack) decides."""
    return f"restarted {service}"


@tool(requires_approval=True, approvers=["pat"])
def purge(cache: str) -> str:
    """Purge a cache: Pat decides, in the approvals channel the people file names."""
    return f"purged {cache}"
