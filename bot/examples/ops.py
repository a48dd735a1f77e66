"""An ops assistant: look up a service's status (read-only), deploy (needs approval).

This is the default tools module. Copy it to start your own, then run
`threadbot --tools path/to/your_tools.py serve`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot import ToolContext, ToolError, tool

SERVICES = {
    "api": {"version": "1.4.1", "healthy": True, "replicas": 3},
    "web": {"version": "2.0.0", "healthy": True, "replicas": 2},
    "worker": {"version": "0.9.7", "healthy": False, "replicas": 1},
}

DEPLOYS: list[dict[str, str]] = []
"""What `deploy` did in this process, newest last (a stand-in for a real CD system)."""


@tool(idempotent=True)
def service_status(service: str) -> dict[str, object]:
    """Current version, health and replica count of a service."""
    if service not in SERVICES:
        raise ToolError(f"unknown service {service!r}; known: {', '.join(sorted(SERVICES))}")
    return {"service": service, **SERVICES[service]}


@tool(requires_approval=True)
def deploy(service: str, version: str, ctx: ToolContext) -> str:
    """Deploy a service at a version. A person must approve it first."""
    if service not in SERVICES:
        raise ToolError(f"unknown service {service!r}; known: {', '.join(sorted(SERVICES))}")
    # A real deploy would pass ctx.call_id to the CD system as its idempotency key.
    SERVICES[service]["version"] = version
    DEPLOYS.append(
        {
            "service": service,
            "version": version,
            "call_id": ctx.call_id,
            "by": ctx.approved_by or "",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return f"deployed {service} {version}"
