"""@tool: schemas from type hints, validation, errors the model sees, loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import Deferred, Tool, ToolContext, ToolError, UsageError, load_tools, tool
from bot.thread import HUMAN_INPUT

CTX = ToolContext(thread_id="t", call_id="c1")


@tool
def add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    return a + b


@tool(requires_approval=True, idempotent=False, approvers=["U1"])
async def charge(amount: float, ctx: ToolContext) -> str:
    """Charge money."""
    return f"charged {amount} as {ctx.call_id}"


def test_decorator_keeps_the_function_callable() -> None:
    assert isinstance(add, Tool)
    assert add(1, 2) == 3
    assert (charge.requires_approval, charge.idempotent, charge.approvers) == (True, False, ("U1",))


def test_schema_from_type_hints() -> None:
    schema = add.schema()
    assert schema["function"]["name"] == "add"
    assert schema["function"]["description"] == "Add two numbers."
    params = schema["function"]["parameters"]
    assert params["properties"] == {
        "a": {"type": "integer"},
        "b": {"default": 2, "type": "integer"},
    }
    assert params["required"] == ["a"]
    # The context is not an argument the model sees.
    assert "ctx" not in charge.schema()["function"]["parameters"]["properties"]


@pytest.mark.anyio
async def test_invoke_sync_and_async() -> None:
    out = await add.invoke({"a": 40}, CTX)
    assert (out.output, out.is_error) == (42, False)
    out = await charge.invoke({"amount": "2.5"}, CTX)
    assert out.output == "charged 2.5 as c1"


@pytest.mark.anyio
async def test_invalid_arguments_become_a_compact_error() -> None:
    out = await add.invoke({"a": "many", "c": 1}, CTX)
    assert out.is_error
    assert out.output.startswith("invalid arguments:")
    assert "a: Input should be a valid integer" in out.output
    assert "c: Extra inputs are not permitted" in out.output
    assert add.validate({"a": 1}) is None


@pytest.mark.anyio
async def test_exceptions_become_errors_the_model_sees() -> None:
    @tool
    def broken() -> str:
        raise RuntimeError("disk full")

    @tool
    def refuses() -> str:
        raise ToolError("no such service 'apx'")

    assert (await broken.invoke({}, CTX)).output == "RuntimeError: disk full"
    out = await refuses.invoke({}, CTX)
    assert (out.output, out.is_error) == ("no such service 'apx'", True)


@pytest.mark.anyio
async def test_deferred_and_unserializable_results() -> None:
    @tool
    def later() -> Deferred:
        return Deferred(note="queued as job 7")

    @tool
    def odd() -> object:
        return {1, 2}

    out = await later.invoke({}, CTX)
    assert (out.deferred, out.output) == (True, "queued as job 7")
    assert (await odd.invoke({}, CTX)).output == "{1, 2}"


def test_untyped_parameters_are_refused() -> None:
    with pytest.raises(UsageError, match="needs a type hint"):

        @tool
        def bad(x) -> None:  # type: ignore[no-untyped-def]
            pass


def test_load_tools_from_a_module_and_a_file(tmp_path: Path) -> None:
    box = load_tools("bot.examples.ops")
    assert set(box.names()) == {HUMAN_INPUT, "service_status", "deploy"}
    deploy = box.get("deploy")
    assert deploy is not None and deploy.requires_approval
    f = tmp_path / "my_tools.py"
    f.write_text(
        "from bot import tool\n\n@tool(idempotent=True)\ndef ping() -> str:\n    return 'pong'\n"
    )
    box = load_tools(str(f))
    assert "ping" in box.names()
    with pytest.raises(UsageError, match="not found"):
        load_tools("no.such.module")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UsageError, match="no @tool"):
        load_tools(str(empty))
