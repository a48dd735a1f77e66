"""Tools: plain typed Python functions the model may call.

    from bot import tool

    @tool(requires_approval=True)
    def deploy(service: str, version: str) -> str:
        "Deploy a service at a version."
        ...

Arguments are validated by pydantic against the signature. A parameter typed
`ToolContext` receives the call's context (its `call_id` doubles as an
idempotency key for downstream systems). Tools are not idempotent unless
declared so: threadbot then records `tool_started` before running one and never
runs it twice, even across a crash.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .durations import seconds
from .errors import ToolError, UsageError
from .events import Timers
from .thread import HUMAN_INPUT

__all__ = [
    "Deferred",
    "Tool",
    "ToolContext",
    "Toolbox",
    "load_tools",
    "make_timers",
    "merge_timers",
    "tool",
]

logger = logging.getLogger("threadbot")


@dataclass(frozen=True, slots=True)
class ToolContext:
    thread_id: str
    call_id: str
    """Unique per call: pass it on as an idempotency key."""
    approved_by: str | None = None


@dataclass(frozen=True, slots=True)
class Deferred:
    """Return this from a tool whose outcome arrives later (a long job run
    elsewhere). The thread waits until the result is posted with the call id."""

    note: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    output: Any
    is_error: bool = False
    deferred: bool = False


Duration = float | int | str
"""Seconds, or a duration as people write it: `90s`, `10m`, `4h`, `2d`."""
ApprovalRule = bool | Callable[[Any], bool]


def _duration(tool: str, what: str, value: Duration | None) -> float | None:
    if value is None:
        return None
    try:
        found = seconds(value)
    except UsageError as e:
        raise UsageError(f"tool {tool}: {what}: {e}") from None
    if found <= 0:
        raise UsageError(f"tool {tool}: {what} must be more than zero, not {value!r}")
    return found


def make_timers(
    owner: str,
    *,
    remind_after: Duration | None = None,
    escalate_after: Duration | None = None,
    escalate_to: Iterable[str] = (),
    deadline: Duration | None = None,
    on_deadline: str | None = None,
    approval: bool = True,
) -> Timers | None:
    """Checked timers, or None when none is set. `owner` names what they
    belong to, for errors."""
    if isinstance(escalate_to, str):
        escalate_to = [escalate_to]
    to = tuple(s.strip() for s in escalate_to if s.strip())
    allowed = ("reject", "approve", "fail") if approval else ("reject", "fail")
    if on_deadline is not None and on_deadline not in allowed:
        raise UsageError(
            f"{owner}: on_deadline must be one of {', '.join(allowed)}, not {on_deadline!r}"
        )
    given = {
        "remind_after": _duration(owner, "remind_after", remind_after),
        "escalate_after": _duration(owner, "escalate_after", escalate_after),
        "escalate_to": to,
        "deadline": _duration(owner, "deadline", deadline),
        "on_deadline": on_deadline,
    }
    # Only what was given counts as set: the rest comes from the defaults.
    t = Timers(**{k: v for k, v in given.items() if v not in (None, ())})
    if t.escalate_after is not None and not to:
        raise UsageError(f"{owner}: escalate_after needs escalate_to (who to escalate to)")
    if to and t.escalate_after is None:
        raise UsageError(f"{owner}: escalate_to needs escalate_after (when to escalate)")
    if t == Timers():
        return None
    return t


def merge_timers(own: Timers | None, defaults: Timers | None) -> Timers | None:
    """A call's timers: its tool's own, else the operator's defaults, field by field."""
    if defaults is None:
        return own
    if own is None:
        return defaults
    set_here = own.model_fields_set
    return defaults.model_copy(update={k: getattr(own, k) for k in set_here})


class Tool:
    """A registered tool. Calling it calls the function, unchanged."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: ApprovalRule = False,
        idempotent: bool = False,
        approvers: Iterable[str] = (),
        self_approval: bool = True,
        approvals_required: int = 1,
        remind_after: Duration | None = None,
        escalate_after: Duration | None = None,
        escalate_to: Iterable[str] = (),
        deadline: Duration | None = None,
        on_deadline: str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.cleandoc(fn.__doc__ or "") or self.name
        self.requires_approval = requires_approval
        """True, False, or a rule on the validated arguments (`lambda a: a.amount > 1000`)."""
        self.idempotent = idempotent
        self.approvers = (approvers,) if isinstance(approvers, str) else tuple(approvers)
        self.self_approval = self_approval
        if not isinstance(approvals_required, int) or approvals_required < 1:
            raise UsageError(f"tool {self.name}: approvals_required must be a whole number from 1")
        if approvals_required > 1 and requires_approval is False:
            raise UsageError(f"tool {self.name}: approvals_required needs requires_approval")
        self.approvals_required = approvals_required
        if on_deadline == "approve" and requires_approval is False:
            raise UsageError(f"tool {self.name}: on_deadline='approve' needs requires_approval")
        self.timers = make_timers(
            f"tool {self.name}",
            remind_after=remind_after,
            escalate_after=escalate_after,
            escalate_to=escalate_to,
            deadline=deadline,
            on_deadline=on_deadline,
        )
        """Reminder, escalation and deadline of its calls that wait for approval."""
        if self.timers is not None and requires_approval is False:
            raise UsageError(
                f"tool {self.name}: reminders, escalation and deadlines apply to calls "
                "that wait for approval; set requires_approval"
            )
        self.is_async = inspect.iscoroutinefunction(fn)
        self._context_param: str | None = None
        self.arguments_model = self._model_from_signature(fn)

    def needs_approval(self, arguments: dict[str, Any]) -> tuple[bool, bool | None]:
        """Whether a call with these (valid) arguments waits for approval, and
        what the tool's rule said, if it has one. A rule that raises asks for
        approval."""
        rule = self.requires_approval
        if not callable(rule):
            return bool(rule), None
        try:
            verdict = bool(rule(self.arguments_model.model_validate(copy.deepcopy(arguments))))
        except Exception:
            verdict = True
        return verdict, verdict

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def _model_from_signature(self, fn: Callable[..., Any]) -> type[BaseModel]:
        try:
            hints = get_type_hints(fn)
        except NameError as e:
            raise UsageError(f"tool {self.name}: cannot resolve a type hint: {e}") from e
        fields: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise UsageError(f"tool {self.name}: *args and **kwargs cannot be described")
            annotation = hints.get(p.name)
            if annotation is ToolContext:
                self._context_param = p.name
                continue
            if annotation is None:
                raise UsageError(f"tool {self.name}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (annotation, default)
        return create_model(
            f"{self.name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )

    def schema(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry."""
        params = self.arguments_model.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def validate(self, arguments: dict[str, Any]) -> str | None:
        """None when the arguments fit, else a compact message for the model."""
        try:
            self.arguments_model.model_validate(arguments)
        except ValidationError as e:
            return _compact(e)
        return None

    async def invoke(self, arguments: dict[str, Any], ctx: ToolContext) -> Outcome:
        """Run the tool. Invalid arguments, a `ToolError` or any exception
        become an error outcome; a `Deferred` return marks the call deferred."""
        try:
            # A copy: what a tool does to its arguments never reaches the
            # call's event, which the thread keeps in memory.
            parsed = self.arguments_model.model_validate(copy.deepcopy(arguments))
        except ValidationError as e:
            return Outcome(_compact(e), is_error=True)
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if self._context_param is not None:
            kwargs[self._context_param] = ctx
        try:
            if self.is_async:
                result = await self.fn(**kwargs)
            else:
                # A blocking tool must not stall every other thread.
                result = await asyncio.to_thread(self.fn, **kwargs)
        except ToolError as e:
            return Outcome(str(e), is_error=True)
        except Exception as e:
            return Outcome(f"{type(e).__name__}: {e}", is_error=True)
        if isinstance(result, Deferred):
            return Outcome(result.note, deferred=True)
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            result = str(result)
        return Outcome(result)


def _compact(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: ApprovalRule = False,
    idempotent: bool = False,
    approvers: Iterable[str] = (),
    self_approval: bool = True,
    approvals_required: int = 1,
    remind_after: Duration | None = None,
    escalate_after: Duration | None = None,
    escalate_to: Iterable[str] = (),
    deadline: Duration | None = None,
    on_deadline: str | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: ApprovalRule = False,
    idempotent: bool = False,
    approvers: Iterable[str] = (),
    self_approval: bool = True,
    approvals_required: int = 1,
    remind_after: Duration | None = None,
    escalate_after: Duration | None = None,
    escalate_to: Iterable[str] = (),
    deadline: Duration | None = None,
    on_deadline: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Register a function as a tool: `@tool` or `@tool(requires_approval=True)`.

    `approvers` names who may approve: people of the people file, `group:NAME`,
    Slack user ids or addresses; by default THREADBOT_APPROVERS, else the
    person who started the thread if the deployment knows them, else the
    admins. `self_approval=False` asks for four eyes: the person whose message
    led to the call may not approve it, even if listed.

    `requires_approval` may be a rule on the validated arguments
    (`lambda a: a.amount > 1000`). `approvals_required=2` needs two
    different approvers (one rejection rejects; the requester never counts).
    A call nobody decides gets a reminder at `remind_after`, is escalated to
    `escalate_to` at `escalate_after`, and at `deadline` is rejected (the
    model reads that nobody approved in time), approved (only with
    `on_deadline="approve"`), or fails the thread (`"fail"`). Durations are
    seconds or `"90s"`, `"10m"`, `"4h"`, `"2d"`, counted from the call.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            requires_approval=requires_approval,
            idempotent=idempotent,
            approvers=approvers,
            self_approval=self_approval,
            approvals_required=approvals_required,
            remind_after=remind_after,
            escalate_after=escalate_after,
            escalate_to=escalate_to,
            deadline=deadline,
            on_deadline=on_deadline,
        )

    return wrap(fn) if fn is not None else wrap


def request_human_input(question: str, options: list[str] | None = None) -> str:
    """Ask a person a question and wait for the answer. Use it when you lack
    information or need a choice made; `options` offers choices to pick from."""
    raise AssertionError("request_human_input never runs: the answer is its result")


HUMAN_INPUT_TOOL = Tool(request_human_input, name=HUMAN_INPUT, idempotent=True)


class Toolbox:
    """The tools a bot offers its model, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {HUMAN_INPUT: HUMAN_INPUT_TOOL}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._schemas: list[dict[str, Any]] | None = None
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self._tools and self._tools[t.name] is not t:
            raise UsageError(f"two tools are named {t.name!r}")
        # A new dict rather than a change to the one others may be reading.
        self._tools = {**self._tools, t.name: t}
        self._schemas = None

    def set_group(self, group: str, tools: Iterable[Tool]) -> None:
        """Replace the tools last set under `group` (an MCP server's, listed
        again after a restart or a change) with these. A tool whose name is
        taken by another is left out, with a warning."""
        old = set(self._groups.get(group, ()))
        kept = {k: v for k, v in self._tools.items() if k not in old}
        names = []
        for t in tools:
            if t.name in kept:
                logger.warning(
                    "%s: a tool is named %s already; this one is left out", group, t.name
                )
                continue
            kept[t.name] = t
            names.append(t.name)
        self._tools = kept
        self._groups[group] = tuple(names)
        self._schemas = None

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The Chat Completions `tools` list (kept until the tools change)."""
        if self._schemas is None:
            self._schemas = [t.schema() for t in self._tools.values()]
        return self._schemas


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        if not path.exists():
            raise UsageError(f"tools file not found: {path}")
        mod_name = f"threadbot_tools_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"cannot load tools from {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise UsageError(f"tools module {spec!r} not found: {e}") from e


def load_tools(spec: str) -> Toolbox:
    """Every `@tool` in a module (`package.module`) or a file (`path/tools.py`)."""
    module = _import(spec)
    found = [v for v in vars(module).values() if isinstance(v, Tool)]
    if not found:
        raise UsageError(f"{spec!r} defines no @tool functions")
    return Toolbox(found)
