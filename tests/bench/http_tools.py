"""The HTTP benchmark's one tool, loaded by the server as a file, so that a
checkout under comparison needs nothing of this one."""

from __future__ import annotations

from bot import tool


@tool(requires_approval=True)
def deploy(service: str, version: str) -> str:
    """Deploy a service (needs approval)."""
    return f"deployed {service} {version}"
