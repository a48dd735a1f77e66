"""The approval round-trip scenario on LangGraph (interrupt + SqliteSaver, or
PostgresSaver given a database URL).

Run by `python -m tests.bench --compare-langgraph` inside a throwaway virtual
environment holding langgraph and langgraph-checkpoint-sqlite (and, for
PostgreSQL, langgraph-checkpoint-postgres); it imports nothing from threadbot
and prints one JSON object.

    python langgraph_scenario.py 10,100,500 [postgresql://...]

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


def build(saver: Any) -> Any:
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
    """As threadbot's cold load: the imports' garbage is collected first."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sqlite3, time, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "from langgraph_scenario import build\n"
        "from langgraph.checkpoint.sqlite import SqliteSaver\n"
        f"conn = sqlite3.connect({path!r}, check_same_thread=False)\n"
        "graph = build(SqliteSaver(conn))\n"
        "import gc; gc.collect()\n"
        "t0 = time.perf_counter()\n"
        "graph.get_state({'configurable': {'thread_id': 't'}})\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def resume_once(graph: Any, config: Any) -> float:
    """Approve; seconds until the model is called again."""
    calls = len(MODEL_CALLS)
    t0 = time.perf_counter()
    graph.invoke(Command(resume={"approved": True}), config)
    return MODEL_CALLS[calls] - t0


def percentiles(resumes: list[float], done: int) -> dict[str, float]:
    last = resumes[-50:] if done >= 100 else resumes[-10:]
    return {
        "resume_p50_ms": statistics.median(last) * 1e3,
        "resume_p99_ms": sorted(last)[min(len(last) - 1, int(0.99 * len(last)))] * 1e3,
    }


PG_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def relation_bytes(url: str) -> int:
    """The checkpoint tables' `pg_total_relation_size`: heap, indexes, TOAST."""
    import psycopg

    total = " + ".join(f"pg_total_relation_size('{t}')" for t in PG_TABLES)
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {total}").fetchone()
    assert row is not None
    return int(row[0])


def blob_bytes(url: str) -> dict[str, int]:
    """The checkpoint blobs as serialized, and as stored (TOAST compresses
    values over about 2 KB; the scenario's filler text compresses well)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(octet_length(blob)), 0), coalesce(sum(pg_column_size(blob)), 0) "
            "FROM checkpoint_blobs"
        ).fetchone()
    assert row is not None
    return {"blobs_serialized_bytes": int(row[0]), "blobs_stored_bytes": int(row[1])}


def cold_get_state_postgres(url: str) -> float:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import time, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "from langgraph_scenario import build\n"
        "from langgraph.checkpoint.postgres import PostgresSaver\n"
        f"with PostgresSaver.from_conn_string({url!r}) as saver:\n"
        "    graph = build(saver)\n"
        "    import gc; gc.collect()\n"
        "    t0 = time.perf_counter()\n"
        "    graph.get_state({'configurable': {'thread_id': 't'}})\n"
        "    print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def on_postgres(sizes: list[int], url: str) -> list[dict[str, Any]]:
    """PostgresSaver on the database at `url`. What a round-trip wrote is the
    growth since the previous size over the round-trips in between (the
    tables grow by whole 8 KB pages)."""
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        graph = build(saver)
        config = {"configurable": {"thread_id": "t"}}
        graph.invoke({"messages": [HumanMessage(content="deploy the api")]}, config)
        rows: list[dict[str, Any]] = []
        resumes: list[float] = []
        done = 0
        grown_from = (relation_bytes(url), 0)
        for target in sizes:
            while done < target:
                resumes.append(resume_once(graph, config))
                done += 1
            now = relation_bytes(url)
            rows.append(
                {
                    "round_trips": done,
                    "db_bytes": now,
                    "bytes_per_round_trip": (now - grown_from[0]) / (done - grown_from[1]),
                    **blob_bytes(url),
                    **percentiles(resumes, done),
                    "get_state_cold_ms": cold_get_state_postgres(url) * 1e3,
                }
            )
            grown_from = (now, done)
    return rows


def main() -> None:
    sizes = sorted(int(s) for s in sys.argv[1].split(","))
    if len(sys.argv) > 2:
        print(json.dumps(on_postgres(sizes, sys.argv[2])))
        return
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
                resumes.append(resume_once(graph, config))
                written.append(pages_bytes(conn) - before)
                done += 1
            rows.append(
                {
                    "round_trips": done,
                    "db_bytes": used(conn),
                    "db_file_bytes": file_bytes(path),
                    "first_written_bytes": written[0],
                    "last_written_bytes": written[-1],
                    **percentiles(resumes, done),
                    "get_state_cold_ms": cold_get_state(path) * 1e3,
                }
            )
        conn.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
