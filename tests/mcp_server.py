"""An MCP server for the tests, over stdio (`python mcp_server.py`) or
streamable HTTP (`python mcp_server.py http PORT`, on 127.0.0.1).

Every side effect is a line in the ledger file (THREADBOT_TEST_LEDGER), so a
test can count how often a tool really ran, across crashes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("testops")


def record(line: str) -> None:
    with Path(os.environ.get("THREADBOT_TEST_LEDGER", "ledger.txt")).open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@server.tool()
def charge(amount: int, reason: str = "") -> str:
    """Charge money (a side effect; slow when THREADBOT_TEST_SLOW is set)."""
    record(f"charge {amount} pid={os.getpid()}")
    time.sleep(float(os.environ.get("THREADBOT_TEST_SLOW", "0")))
    return f"charged {amount}"


@server.tool()
def lookup(name: str) -> dict[str, object]:
    """Look a service up (read-only)."""
    return {"name": name, "healthy": True, "pid": os.getpid()}


@server.tool()
def environ(name: str) -> str:
    """Whether an environment variable is set here."""
    return "set" if name in os.environ else "unset"


@server.tool()
def refuse(why: str) -> str:
    """Always fails, as a tool error."""
    raise ToolError(f"refused: {why}")


@server.tool()
def crash() -> str:
    """The server process dies while running it."""
    record(f"crash pid={os.getpid()}")
    os._exit(3)


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool `name` that echoes its text, and tell the client the list changed."""

    def echo(text: str) -> str:
        return text

    server.add_tool(echo, name=name, description="Echo the text.")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


if __name__ == "__main__":
    record(f"started pid={os.getpid()}")
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
