"""MCP servers as tools, in process: the test's own MCP server
(tests/mcp_server.py) over stdio, the real `mcp` client, the real `openai`
client against the fake model. `threadbot serve` with Slack: test_mcp_serve.py."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot import ThreadBot, UsageError
from bot.mcp_tools import McpServer, McpServers, McpTool, load_mcp_config, tool_name

from .conftest import make_bot, settled
from .fakes import FakeOpenAI, calls, text

REPO = Path(__file__).resolve().parent.parent
SERVER = str(REPO / "tests" / "mcp_server.py")

pytestmark = pytest.mark.anyio


def stdio(ledger: Path, **extra: Any) -> dict[str, Any]:
    env = {"THREADBOT_TEST_LEDGER": str(ledger), **extra.pop("env", {})}
    return {"command": sys.executable, "args": [SERVER], "env": env, **extra}


@pytest.fixture
async def start(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    """Makes a bot with the MCP servers of a config, started on its loop."""
    made: list[tuple[ThreadBot, McpServers]] = []

    async def make(config: dict[str, Any]) -> tuple[ThreadBot, McpServers]:
        bot = make_bot(db_path, fake_openai)
        mcp = McpServers.load(config)
        await bot.on_agent_loop(lambda: mcp.start(bot.tools))
        bot.close_with(mcp.stop)
        made.append((bot, mcp))
        return bot, mcp

    yield make
    for bot, _ in made:
        await bot.close()
        bot.store.close()


def tool_result(bot: ThreadBot, thread_id: str, n: int = 0) -> dict[str, Any]:
    events = bot.get(thread_id).json()["events"]
    return [e for e in events if e["type"] == "tool_result"][n]


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        await asyncio.sleep(0.05)


async def test_tools_join_by_server_and_name_and_a_call_runs(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    bot, mcp = await start({"mcpServers": {"ops": stdio(ledger)}})
    assert {"ops__charge", "ops__lookup", "ops__refuse", "ops__crash"} <= set(bot.tools.names())
    assert "ops__echo" not in bot.tools.names()
    fake_openai.add(calls(("ops__lookup", {"name": "api"})), text("api is healthy"))
    thread_id = await bot.launch("is api healthy?")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    result = tool_result(bot, thread_id)
    assert result["is_error"] is False
    assert json.loads(result["output"])["name"] == "api"
    # The model was offered the server's own schema under the server's name.
    offered = {t["function"]["name"]: t["function"] for t in fake_openai.requests[0]["tools"]}
    lookup = offered["ops__lookup"]
    assert lookup["description"] == "Look a service up (read-only)."
    assert lookup["parameters"]["required"] == ["name"]
    assert '"healthy": true' in fake_openai.requests[-1]["messages"][-1]["content"]
    assert mcp.servers[0].error is None


async def test_a_changed_tool_list_is_listed_again(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    bot, _ = await start({"mcpServers": {"ops": stdio(ledger)}})
    fake_openai.add(calls(("ops__grow", {"name": "echo"})), text("Grown."))
    thread_id = await bot.launch("grow an echo")
    await settled(bot, thread_id)
    assert tool_result(bot, thread_id)["output"] == "added echo"
    # The server said its tools changed: listed again, the new one is offered.
    await until(lambda: "ops__echo" in bot.tools.names(), "the new tool")
    fake_openai.add(calls(("ops__echo", {"text": "hi"})), text("It said hi."))
    again = await bot.launch("echo hi")
    await settled(bot, again)
    offered = [t["function"]["name"] for t in fake_openai.requests[-1]["tools"]]
    assert "ops__echo" in offered
    result = tool_result(bot, again)
    assert (result["output"], result["is_error"]) == ("hi", False)


async def test_a_tool_error_and_invalid_arguments_reach_the_model(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    bot, _ = await start({"mcpServers": {"ops": stdio(ledger)}})
    fake_openai.add(
        calls(("ops__refuse", {"why": "frozen"})),
        calls(("ops__charge", {"amount": "lots"})),
        text("Could not."),
    )
    thread_id = await bot.launch("try")
    await settled(bot, thread_id)
    refused, invalid = tool_result(bot, thread_id, 0), tool_result(bot, thread_id, 1)
    assert refused["is_error"] is True and "refused: frozen" in refused["output"]
    # Checked against the server's schema before anything runs or waits.
    assert invalid["is_error"] is True
    assert invalid["output"].startswith("invalid arguments: amount: 'lots' is not of type")
    assert "charge" not in ledger.read_text()


async def test_approval_by_pattern_then_runs_once(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    config = stdio(ledger, requires_approval=True, tools={"look*": {"requires_approval": False}})
    bot, _ = await start({"mcpServers": {"ops": config}})
    assert bot.tools.get("ops__charge").requires_approval is True  # type: ignore[union-attr]
    assert bot.tools.get("ops__lookup").requires_approval is False  # type: ignore[union-attr]
    fake_openai.add(calls(("ops__charge", {"amount": 7})))
    thread_id = await bot.launch("charge 7")
    view = await settled(bot, thread_id)
    assert view.state.status == "waiting_for_approval"
    assert "charge" not in ledger.read_text()
    fake_openai.add(text("Charged."))
    await bot.decide(thread_id, True)
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    types = [e["type"] for e in view.json()["events"]]
    # Not idempotent unless said so: started is recorded before the call.
    assert types[types.index("approval") + 1 : types.index("approval") + 3] == [
        "tool_started",
        "tool_result",
    ]
    assert ledger.read_text().count("charge 7 ") == 1


async def test_pattern_options_reach_the_call_and_a_conflict_leaves_the_tool_out(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    config = stdio(
        ledger,
        tools={
            "c*": {"requires_approval": True, "approvers": ["U_LEE"], "deadline": "1h"},
            # With the first pattern's deadline, crash would have timers without approval.
            "crash": {"requires_approval": False},
        },
    )
    bot, _ = await start({"mcpServers": {"ops": config}})
    assert bot.tools.get("ops__crash") is None
    fake_openai.add(calls(("ops__charge", {"amount": 9})))
    thread_id = await bot.launch("charge 9")
    view = await settled(bot, thread_id)
    assert view.state.status == "waiting_for_approval"
    call = next(e for e in view.json()["events"] if e["type"] == "tool_call")
    assert (call["requires_approval"], call["approvers"]) == (True, ["U_LEE"])
    assert call["timers"]["deadline"] == 3600.0
    fake_openai.add(text("Not charged."))
    await bot.decide(thread_id, False, comment="no")
    await settled(bot, thread_id)
    assert "charge" not in ledger.read_text()


async def test_a_server_that_dies_is_an_error_the_model_reads_and_starts_again(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    bot, mcp = await start({"mcpServers": {"ops": stdio(ledger)}})
    server = mcp.servers[0]
    fake_openai.add(calls(("ops__crash", {})), text("The ops server crashed."))
    thread_id = await bot.launch("crash it")
    view = await settled(bot, thread_id)
    assert view.state.status == "done"
    result = tool_result(bot, thread_id)
    assert result["is_error"] is True
    assert "MCP server ops stopped during the call" in result["output"]
    assert "outcome is unknown" in fake_openai.requests[-1]["messages"][-1]["content"]

    await until(lambda: server.starts == 2, "the server to start again")
    fake_openai.add(calls(("ops__lookup", {"name": "api"})), text("Back."))
    again = await bot.launch("lookup api")
    await settled(bot, again)
    result = tool_result(bot, again)
    assert result["is_error"] is False
    started = [line for line in ledger.read_text().splitlines() if line.startswith("started")]
    assert len(started) == 2
    assert f"pid={json.loads(result['output'])['pid']}" == started[1].split()[1]


async def test_a_slow_server_is_an_error_the_model_reads(
    start: Any, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    config = stdio(ledger, timeout="1s", env={"THREADBOT_TEST_SLOW": "5"})
    bot, _ = await start({"mcpServers": {"ops": config}})
    fake_openai.add(calls(("ops__charge", {"amount": 3})), text("It timed out."))
    thread_id = await bot.launch("charge 3")
    await settled(bot, thread_id)
    result = tool_result(bot, thread_id)
    assert result["is_error"] is True
    assert "did not answer within 1 s" in result["output"]


async def test_a_server_that_cannot_start_leaves_the_rest_working(
    start: Any, fake_openai: FakeOpenAI, ledger: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-server")
    bot, mcp = await start({"mcpServers": {"gone": {"command": missing}, "ops": stdio(ledger)}})
    gone = next(s for s in mcp.servers if s.name == "gone")
    assert gone.error is not None and gone.session is None
    assert "down (" in gone.describe()
    assert not any(n.startswith("gone__") for n in bot.tools.names())
    fake_openai.add(calls(("ops__lookup", {"name": "db"})), text("ok"))
    thread_id = await bot.launch("lookup db")
    await settled(bot, thread_id)
    assert tool_result(bot, thread_id)["is_error"] is False


async def test_a_call_while_the_server_is_down_is_an_error(ledger: Path) -> None:
    from bot import Toolbox, ToolContext

    server = McpServer(load_mcp_config({"mcpServers": {"ops": stdio(ledger)}})[0], Toolbox())
    server.error = "the connection was lost"
    t = McpTool(server, "charge", "ops__charge", {"type": "object"}, "", {})
    out = await t.invoke({}, ToolContext("t", "c"))
    assert out.is_error
    assert out.output.startswith("MCP server ops is not available (the connection was lost)")


async def test_a_stdio_server_gets_its_env_not_threadbots_secrets(
    start: Any, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import ToolContext

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    bot, _ = await start({"mcpServers": {"ops": stdio(ledger, env={"OPS_TOKEN": "t"})}})
    environ = bot.tools.get("ops__environ")
    assert environ is not None
    found = {}
    for name in ("SLACK_BOT_TOKEN", "OPENAI_API_KEY", "OPS_TOKEN", "PATH"):
        found[name] = (await environ.invoke({"name": name}, ToolContext("t", name))).output
    assert found == {
        "SLACK_BOT_TOKEN": "unset",
        "OPENAI_API_KEY": "unset",
        "OPS_TOKEN": "set",
        "PATH": "set",
    }


def test_a_name_taken_by_another_tool_is_left_out() -> None:
    from bot import Toolbox, tool

    @tool(name="ops__lookup")
    def mine(name: str) -> str:
        """A tool of the operator's, named like a server's."""
        return name

    box = Toolbox([mine])
    a = McpTool(None, "lookup", "ops__lookup", {"type": "object"}, "", {})
    b = McpTool(None, "charge", "ops__charge", {"type": "object"}, "", {})
    box.set_group("mcp:ops", [a, b])
    assert box.get("ops__lookup") is mine and box.get("ops__charge") is b
    box.set_group("mcp:ops", [])  # listed again: gone
    assert box.get("ops__charge") is None and box.get("ops__lookup") is mine


def test_tool_names_fit_the_model_apis() -> None:
    assert tool_name("github", "create_issue") == "github__create_issue"
    assert tool_name("fs", "read.file/v2") == "fs__read_file_v2"
    assert len(tool_name("s", "x" * 100)) == 64


def test_options_by_pattern_apply_in_order() -> None:
    (spec,) = load_mcp_config(
        {
            "mcpServers": {
                "gh": {
                    "url": "https://example.com/mcp",
                    "requires_approval": True,
                    "approvers": ["group:leads"],
                    "tools": {
                        "get_*": {"requires_approval": False, "idempotent": True},
                        "get_secret": {"requires_approval": True, "deadline": "1h"},
                    },
                }
            }
        }
    )
    assert spec.transport == "http"
    assert spec.options_for("create_issue") == {
        "requires_approval": True,
        "approvers": ("group:leads",),
    }
    assert spec.options_for("get_issue")["requires_approval"] is False
    secret = spec.options_for("get_secret")
    assert (secret["requires_approval"], secret["idempotent"], secret["deadline"]) == (
        True,
        True,
        "1h",
    )


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"command": "x", "url": "http://h/mcp"}, "either command (stdio) or url"),
        ({}, "either command (stdio) or url"),
        ({"url": "ftp://h"}, "url must be an http(s) URL"),
        ({"url": "http://h/mcp", "type": "sse"}, "the old SSE transport is not supported"),
        ({"command": "x", "requires_aproval": True}, "unknown key(s) requires_aproval"),
        ({"command": "x", "tools": {"*": {"idempotant": True}}}, "unknown option(s) idempotant"),
        ({"command": "x", "deadline": "1h"}, "set requires_approval"),
        ({"command": "x", "tools": {"rm*": {"deadline": "soon"}}}, "tools 'rm*'"),
        ({"command": "x", "requires_approval": "yes"}, "must be true or false"),
        ({"command": "x", "args": "a b"}, "args must be a list of strings"),
        ({"command": "x", "env": {"N": 1}}, "env must be an object of strings"),
        ({"command": "x", "timeout": 0}, "timeout must be more than zero"),
        ({"url": "http://h/mcp", "env": {}}, "args, env and cwd go with command"),
    ],
)
def test_bad_config_is_a_clear_error(server: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as e:
        load_mcp_config({"mcpServers": {"ops": server}})
    assert message in str(e.value)


def test_bad_file_and_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_mcp_config(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        load_mcp_config(bad)
    bad.write_text(json.dumps({"servers": {}}))
    with pytest.raises(UsageError, match="mcpServers"):
        load_mcp_config(bad)
    for name in ("a.b", "a__b", "", "x" * 31):
        with pytest.raises(UsageError, match="a server's name"):
            load_mcp_config({"mcpServers": {name: {"command": "x"}}})


def test_the_readme_example_is_a_valid_config() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## MCP servers as tools", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    github, docs = load_mcp_config(example)
    assert (github.transport, docs.transport, docs.timeout) == ("stdio", "http", 120.0)
    assert github.options_for("get_me")["requires_approval"] is False
    merge = github.options_for("merge_pull_request")
    assert (merge["requires_approval"], merge["approvals_required"]) == (True, 2)
