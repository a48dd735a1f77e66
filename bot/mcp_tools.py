"""MCP servers as tools: the servers a JSON file names (the common
`mcpServers` shape), their tools offered to the model as `server__tool`.

    {"mcpServers": {
        "github": {"command": "github-mcp", "args": ["stdio"], "env": {"TOKEN": "..."},
                   "requires_approval": true, "approvers": ["group:leads"],
                   "tools": {"get_*": {"requires_approval": false, "idempotent": true}}},
        "docs": {"url": "https://docs.example.com/mcp", "headers": {"Authorization": "..."}}}}

A server runs over stdio (`command`) or streamable HTTP (`url`). Options
for all its tools sit beside its command; `tools` maps name patterns
(fnmatch, on the server's own tool names) to options for the tools they
match, applied in the file's order over the server's. MCP tools are not
idempotent unless said so: threadbot records `tool_started` before a call
and never makes it twice, even across a crash.

Each server has one long-lived session on the agent's loop, started once and
started again (with backoff) when its process or connection dies. A call to
a server that is down, slow or failing is a tool error the model reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema
import mcp_types as mt
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict

from .durations import seconds
from .errors import UsageError
from .tools import Outcome, Tool, Toolbox, ToolContext

__all__ = ["McpServer", "McpServers", "McpTool", "load_mcp_config"]

log = logging.getLogger("threadbot.mcp")

OPTIONS = (
    "requires_approval",
    "approvers",
    "approvals_required",
    "self_approval",
    "idempotent",
    "remind_after",
    "escalate_after",
    "escalate_to",
    "deadline",
    "on_deadline",
)
"""What threadbot reads for a server's tools, beside the server's command."""

SERVER_KEYS = ("type", "command", "args", "env", "cwd", "url", "headers", "timeout", "tools")

CALL_TIMEOUT = 60.0
"""Seconds a tool call may take unless the server's `timeout` says otherwise."""
CONNECT_TIMEOUT = 20.0
"""Seconds a server has to start and answer `initialize`."""
PING_EVERY = 15.0
"""Seconds between pings to an idle server, to notice it died."""
MAX_BACKOFF = 30.0

_SERVER_NAME = re.compile(r"^[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*$")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 64
"""The model APIs take tool names of at most 64 letters, digits, `_` and `-`."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = CALL_TIMEOUT
    options: Mapping[str, Any] = field(default_factory=dict)
    patterns: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def options_for(self, tool: str) -> dict[str, Any]:
        """The server's options, then every matching pattern's, in order."""
        found = dict(self.options)
        for pattern, options in self.patterns:
            if fnmatch.fnmatchcase(tool, pattern):
                found.update(options)
        return found


def _strings(where: str, value: Any, *, one: bool = True) -> tuple[str, ...]:
    """A list of strings; a single one too, where `one`."""
    if isinstance(value, str) and one:
        return (value,)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise UsageError(f"{where} must be a list of strings")
    return tuple(value)


def _mapping(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise UsageError(f"{where} must be an object of strings")
    return dict(value)


def _options(where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in OPTIONS:
        if key not in raw:
            continue
        value = raw[key]
        if key in ("requires_approval", "self_approval", "idempotent") and not isinstance(
            value, bool
        ):
            raise UsageError(f"{where}: {key} must be true or false, not {value!r}")
        if key in ("approvers", "escalate_to"):
            value = _strings(f"{where}: {key}", value)
        out[key] = value
    return out


def _check_options(where: str, options: Mapping[str, Any]) -> None:
    """Refuse what a tool would refuse (timers without approval, bad
    durations), when the file is read rather than when the tool is listed."""
    McpTool(None, "check", where, {"type": "object"}, "", options)


def _server(name: str, raw: Any) -> ServerSpec:
    where = f"MCP server {name!r}"
    if not _SERVER_NAME.match(name) or len(name) > 30:
        raise UsageError(
            f"{where}: a server's name is letters, digits, '-' and single '_' (30 at most): "
            "it becomes the first part of its tools' names"
        )
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be an object")
    unknown = sorted(set(raw) - set(SERVER_KEYS) - set(OPTIONS))
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join(SERVER_KEYS + OPTIONS)}"
        )
    kind = raw.get("type")
    if kind is not None and kind not in ("stdio", "http", "streamable-http", "streamableHttp"):
        raise UsageError(
            f"{where}: type must be stdio or http (streamable HTTP), not {kind!r}"
            + ("; the old SSE transport is not supported" if kind == "sse" else "")
        )
    command, url = raw.get("command"), raw.get("url")
    if (command is None) == (url is None):
        raise UsageError(f"{where} needs either command (stdio) or url (streamable HTTP)")
    if command is not None and not (isinstance(command, str) and command.strip()):
        raise UsageError(f"{where}: command must be a non-empty string")
    if url is not None and not (isinstance(url, str) and re.match(r"^https?://", url)):
        raise UsageError(f"{where}: url must be an http(s) URL, not {url!r}")
    if command is not None and ("headers" in raw or kind in ("http", "streamable-http")):
        raise UsageError(f"{where}: headers and type http go with url, not command")
    if url is not None and any(k in raw for k in ("args", "env", "cwd")):
        raise UsageError(f"{where}: args, env and cwd go with command, not url")
    timeout = CALL_TIMEOUT
    if "timeout" in raw:
        try:
            timeout = seconds(raw["timeout"])
        except UsageError as e:
            raise UsageError(f"{where}: timeout: {e}") from None
        if timeout <= 0:
            raise UsageError(f"{where}: timeout must be more than zero")
    cwd = raw.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise UsageError(f"{where}: cwd must be a string")
    patterns: list[tuple[str, dict[str, Any]]] = []
    tools = raw.get("tools", {})
    if not isinstance(tools, dict):
        raise UsageError(f"{where}: tools must map name patterns to options")
    for pattern, opts in tools.items():
        pwhere = f"{where}, tools {pattern!r}"
        if not isinstance(opts, dict):
            raise UsageError(f"{pwhere} must be an object of options")
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise UsageError(
                f"{pwhere}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}"
            )
        patterns.append((pattern, _options(pwhere, opts)))
    spec = ServerSpec(
        name=name,
        command=command,
        args=_strings(f"{where}: args", raw.get("args", []), one=False),
        env=_mapping(f"{where}: env", raw["env"]) if "env" in raw else None,
        cwd=cwd,
        url=url,
        headers=_mapping(f"{where}: headers", raw.get("headers", {})),
        timeout=timeout,
        options=_options(where, raw),
        patterns=tuple(patterns),
    )
    _check_options(where, spec.options)
    for pattern, opts in spec.patterns:
        # What the pattern's tools get, over the server's options.
        _check_options(f"{where}, tools {pattern!r}", {**spec.options, **opts})
    return spec


def load_mcp_config(source: str | Path | Mapping[str, Any]) -> list[ServerSpec]:
    """The servers of an `mcpServers` file (or its parsed JSON), checked."""
    if isinstance(source, Mapping):
        raw: Any = source
        where = "the MCP configuration"
    else:
        path = Path(source)
        where = str(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"THREADBOT_MCP: {path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"THREADBOT_MCP: {path} is not readable JSON: {e}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("mcpServers"), dict):
        raise UsageError(f'{where}: expected {{"mcpServers": {{"name": {{...}}}}}}')
    return [_server(name, server) for name, server in raw["mcpServers"].items()]


def tool_name(server: str, tool: str) -> str:
    """The name the model knows a server's tool by: `server__tool`, in the
    letters the model APIs accept."""
    return f"{server}__{_NOT_IN_NAME.sub('_', tool)}"[:MAX_NAME]


class _AnyArguments(BaseModel):
    """Arguments are checked against the server's JSON schema instead."""

    model_config = ConfigDict(extra="allow")


class McpTool(Tool):
    """A tool of an MCP server: its schema is the server's `inputSchema`, a
    call is a `tools/call` on the server's session."""

    def __init__(
        self,
        server: McpServer | None,
        remote: str,
        name: str,
        input_schema: Mapping[str, Any],
        description: str,
        options: Mapping[str, Any],
    ) -> None:
        self.server = server
        self.remote = remote
        """The tool's name on its server."""
        self.input_schema = dict(input_schema)
        self._validator: Any = None
        try:
            cls = jsonschema.validators.validator_for(self.input_schema)
            cls.check_schema(self.input_schema)
            self._validator = cls(self.input_schema)
        except jsonschema.SchemaError as e:
            log.warning("MCP tool %s: its input schema is invalid (%s); not checked", name, e)

        async def call() -> None:
            raise AssertionError("an MCP tool runs through invoke")

        super().__init__(
            call,
            name=name,
            description=description or f"{remote} (MCP server {server.name if server else ''})",
            **options,
        )

    def _model_from_signature(self, fn: Any) -> type[BaseModel]:
        return _AnyArguments

    def schema(self) -> dict[str, Any]:
        params = dict(self.input_schema)
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def validate(self, arguments: dict[str, Any]) -> str | None:
        if self._validator is None:
            return None
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.path) or "arguments"
            parts.append(f"{where}: {e.message}")
        return "invalid arguments: " + "; ".join(parts)

    async def invoke(self, arguments: dict[str, Any], ctx: ToolContext) -> Outcome:
        if (problem := self.validate(arguments)) is not None:
            return Outcome(problem, is_error=True)
        assert self.server is not None
        return await self.server.call(self.remote, arguments, ctx)


def _text_of(result: mt.CallToolResult) -> str:
    parts = []
    for block in result.content:
        if isinstance(block, mt.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    return "\n".join(parts)


def _describe(e: BaseException) -> str:
    """An exception as one line, out of the task groups that wrap it."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class _Lost(Exception):
    pass


class McpServer:
    """One server: its session, kept alive, and its tools in the toolbox."""

    def __init__(self, spec: ServerSpec, toolbox: Toolbox) -> None:
        self.spec = spec
        self.name = spec.name
        self.toolbox = toolbox
        self.session: ClientSession | None = None
        self.error: str | None = "not started yet"
        """Why the server is not connected, or None while it is."""
        self.tools: list[McpTool] = []
        self.starts = 0
        """How many times a session was set up (1 + restarts)."""
        self.ready = asyncio.Event()
        """Set once the first attempt to start it has ended, well or not."""
        self._lost = asyncio.Event()
        self._relist = asyncio.Event()

    def describe(self) -> str:
        where = self.spec.command if self.spec.transport == "stdio" else self.spec.url
        state = (
            f"{len(self.tools)} tools"
            if self.error is None
            else f"down ({self.error}); retrying, {len(self.tools)} tools known"
        )
        return f"{self.name} ({self.spec.transport}: {where}): {state}"

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        spec = self.spec
        if spec.command is not None:
            params = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=dict(spec.env or {}), cwd=spec.cwd
            )
            async with stdio_client(params) as streams:
                yield streams
            return
        assert spec.url is not None
        async with (
            create_mcp_http_client(headers=dict(spec.headers)) as http,
            streamable_http_client(spec.url, http_client=http) as streams,
        ):
            yield streams

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            log.warning("MCP server %s: %s", self.name, _describe(message))
        elif isinstance(message, mt.ToolListChangedNotification):
            self._relist.set()

    async def run(self) -> None:
        """Keep a session to the server for as long as the bot runs."""
        delay = 0.5
        up: float | None = None
        while True:
            try:
                async with (
                    self._transport() as (read, write),
                    ClientSession(read, write, message_handler=self._on_message) as session,
                ):
                    await asyncio.wait_for(session.initialize(), CONNECT_TIMEOUT)
                    await asyncio.wait_for(self._list(session), CONNECT_TIMEOUT)
                    self._lost.clear()
                    self.session, self.error = session, None
                    self.starts += 1
                    up = time.monotonic()
                    log.info("MCP server %s: connected, %d tools", self.name, len(self.tools))
                    self.ready.set()
                    await self._keep(session)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.error = (
                    f"no answer within {CONNECT_TIMEOUT:g} s"
                    if isinstance(e, TimeoutError)
                    else _describe(e)
                )
            finally:
                self.session = None
            if self.error is None:
                self.error = "the connection was lost"
            if up is not None and time.monotonic() - up > 2 * MAX_BACKOFF:
                delay = 0.5  # it ran for a good while: a fresh start
            up = None
            log.warning(
                "MCP server %s: %s; starting it again in %.1f s", self.name, self.error, delay
            )
            self.ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _keep(self, session: ClientSession) -> None:
        """Return when the connection is lost: a call saw it closed, or a
        ping went unanswered. Relist the tools when the server says they changed."""
        while True:
            lost = asyncio.ensure_future(self._lost.wait())
            relist = asyncio.ensure_future(self._relist.wait())
            try:
                await asyncio.wait(
                    [lost, relist], timeout=PING_EVERY, return_when="FIRST_COMPLETED"
                )
            finally:
                lost.cancel()
                relist.cancel()
            if self._lost.is_set():
                self.error = "the connection was lost"
                return
            if self._relist.is_set():
                self._relist.clear()
                await asyncio.wait_for(self._list(session), CONNECT_TIMEOUT)
                continue
            try:
                await asyncio.wait_for(session.send_ping(), CONNECT_TIMEOUT)
            except Exception as e:
                self.error = f"no answer to a ping: {_describe(e)}"
                return

    async def _list(self, session: ClientSession) -> None:
        found: list[mt.Tool] = []
        cursor: str | None = None
        while True:
            page = await session.list_tools(
                params=mt.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            found += page.tools
            cursor = page.next_cursor
            if not cursor:
                break
        tools: dict[str, McpTool] = {}
        for t in found:
            name = tool_name(self.name, t.name)
            if name in tools:
                log.warning(
                    "MCP server %s: two tools are named %s here; %s left out",
                    self.name,
                    name,
                    t.name,
                )
                continue
            try:
                tools[name] = McpTool(
                    self,
                    t.name,
                    name,
                    t.input_schema,
                    t.description or "",
                    self.spec.options_for(t.name),
                )
            except UsageError as e:
                # Options of several patterns that do not go together.
                log.error("MCP server %s: %s left out: %s", self.name, t.name, e)
        self.tools = list(tools.values())
        self.toolbox.set_group(f"mcp:{self.name}", self.tools)

    async def call(self, remote: str, arguments: dict[str, Any], ctx: ToolContext) -> Outcome:
        """One `tools/call`: its result, or an error the model reads."""
        session = self.session
        if session is None:
            return Outcome(
                f"MCP server {self.name} is not available ({self.error}); "
                "threadbot is starting it again. Nothing was run.",
                is_error=True,
            )
        try:
            result = await asyncio.wait_for(
                session.call_tool(
                    remote,
                    arguments,
                    meta=cast(mt.RequestParamsMeta, {"threadbot/call_id": ctx.call_id}),
                ),
                self.spec.timeout,
            )
        except TimeoutError:
            return Outcome(
                f"MCP server {self.name} did not answer within {self.spec.timeout:g} s; "
                "the call's outcome is unknown. Check its effect before retrying.",
                is_error=True,
            )
        except MCPError as e:
            if e.code == mt.CONNECTION_CLOSED:
                if self.session is session:  # not a session started since
                    self._lost.set()
                return Outcome(
                    f"MCP server {self.name} stopped during the call ({e}); its outcome is "
                    "unknown. Check its effect before retrying.",
                    is_error=True,
                )
            return Outcome(f"MCP server {self.name}: {e}", is_error=True)
        except Exception as e:
            return Outcome(f"MCP server {self.name}: {_describe(e)}", is_error=True)
        if self._relist.is_set():
            # The call changed the server's tools: the model's next turn sees them.
            self._relist.clear()
            try:
                await asyncio.wait_for(self._list(session), CONNECT_TIMEOUT)
            except Exception as e:
                log.warning("MCP server %s: listing its tools failed: %s", self.name, _describe(e))
        if result.is_error:
            return Outcome(_text_of(result) or "the tool failed", is_error=True)
        # What the server wrote for a model to read; its structured content
        # (the same, as JSON, when a server sends both) only when it wrote none.
        if not result.content and result.structured_content is not None:
            return Outcome(result.structured_content)
        return Outcome(_text_of(result))


class McpServers:
    """Every server of the file, run on the agent's loop."""

    def __init__(self, specs: Sequence[ServerSpec]) -> None:
        self.specs = list(specs)
        self.servers: list[McpServer] = []
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any]) -> McpServers:
        return cls(load_mcp_config(source))

    async def start(self, toolbox: Toolbox, wait: float = CONNECT_TIMEOUT) -> None:
        """Start every server on this loop (the agent's), and wait up to
        `wait` seconds for each to list its tools; one that cannot keeps
        being tried, and its tools join when it comes up."""
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            server = McpServer(spec, toolbox)
            self.servers.append(server)
            self._tasks.append(loop.create_task(server.run(), name=f"mcp:{spec.name}"))
        waits = [asyncio.ensure_future(s.ready.wait()) for s in self.servers]
        if waits:
            await asyncio.wait(waits, timeout=wait)
        for w in waits:
            w.cancel()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def describe(self) -> Iterable[str]:
        return [s.describe() for s in self.servers]
