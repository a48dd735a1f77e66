"""The approval round-trip scenario on LangGraph (interrupt + SqliteSaver).

Run by `python -m tests.bench --compare-langgraph` inside a throwaway virtual
environment holding langgraph and langgraph-checkpoint-sqlite; it imports
nothing from threadbot and prints one JSON object.

Each round-trip: the model proposes a tool call (about 800 bytes of
arguments) → interrupt() for approval → resume with the decision → the tool
returns about 200 bytes → the model is called again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

ARGS = {"service": "api", "version": "1.4.2", "notes": "x" * 760}
RESULT = "deployed api 1.4.2; " + "y" * 180
MODEL_CALLS: list[float] = []


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def model(state: State) -> dict[str, Any]:
    MODEL_CALLS.append(time.perf_counter())
    call = {"name": "deploy", "args": ARGS, "id": f"call_{uuid.uuid4().hex[:12]}"}
    return {"messages": [AIMessage(content="", tool_calls=[call])]}


def approve(state: State) -> dict[str, Any]:
    decision = interrupt({"approve": state["messages"][-1].tool_calls[0]})
    if not decision.get("approved"):
        return {
            "messages": [
                ToolMessage(
                    content="rejected", tool_call_id=state["messages"][-1].tool_calls[0]["id"]
                )
            ]
        }
    return {}


def tool(state: State) -> dict[str, Any]:
    call = state["messages"][-1].tool_calls[0]
    return {"messages": [ToolMessage(content=RESULT, tool_call_id=call["id"])]}


def build(saver: SqliteSaver) -> Any:
    g = StateGraph(State)
    g.add_node("model", model)
    g.add_node("approve", approve)
    g.add_node("tool", tool)
    g.add_edge(START, "model")
    g.add_edge("model", "approve")
    g.add_edge("approve", "tool")
    g.add_edge("tool", "model")
    return g.compile(checkpointer=saver)


def used(conn: sqlite3.Connection) -> int:
    """Bytes SQLite holds in its pages (tables and indexes, headers included)."""
    return int(conn.execute("SELECT sum(pgsize - unused) FROM dbstat").fetchone()[0])


def pages_bytes(conn: sqlite3.Connection) -> int:
    """Bytes in use by whole pages: cheap enough to ask every round-trip."""
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((count - free) * size)


def file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def cold_get_state(path: str) -> float:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sqlite3, time, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "from langgraph_scenario import build\n"
        "from langgraph.checkpoint.sqlite import SqliteSaver\n"
        f"conn = sqlite3.connect({path!r}, check_same_thread=False)\n"
        "graph = build(SqliteSaver(conn))\n"
        "t0 = time.perf_counter()\n"
        "graph.get_state({'configurable': {'thread_id': 't'}})\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sizes = sorted(int(s) for s in sys.argv[1].split(","))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lg.db")
        conn = sqlite3.connect(path, check_same_thread=False)
        graph = build(SqliteSaver(conn))
        config = {"configurable": {"thread_id": "t"}}
        graph.invoke({"messages": [HumanMessage(content="deploy the api")]}, config)
        rows: list[dict[str, Any]] = []
        resumes: list[float] = []
        written: list[int] = []
        done = 0
        for target in sizes:
            while done < target:
                before = pages_bytes(conn)
                calls = len(MODEL_CALLS)
                t0 = time.perf_counter()
                graph.invoke(Command(resume={"approved": True}), config)
                resumes.append(MODEL_CALLS[calls] - t0)
                written.append(pages_bytes(conn) - before)
                done += 1
            last = resumes[-50:] if done >= 100 else resumes[-10:]
            rows.append(
                {
                    "round_trips": done,
                    "db_bytes": used(conn),
                    "db_file_bytes": file_bytes(path),
                    "first_written_bytes": written[0],
                    "last_written_bytes": written[-1],
                    "resume_p50_ms": statistics.median(last) * 1e3,
                    "resume_p99_ms": sorted(last)[min(len(last) - 1, int(0.99 * len(last)))] * 1e3,
                    "get_state_cold_ms": cold_get_state(path) * 1e3,
                }
            )
        conn.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
