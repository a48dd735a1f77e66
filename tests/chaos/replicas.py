"""Several `threadbot serve` processes on one PostgreSQL database, for the kill harness.

Each replica keeps its HTTP and SMTP ports across restarts; each of its
processes names itself to PostgreSQL (`application_name`, through libpq's
PGAPPNAME), so that a trigger of the harness's own can note which process
appended each event, and when. From that log and the leases a dead process
left behind, the harness tells how long its threads waited for another
replica (or for its own restart).
"""

from __future__ import annotations

import re
import statistics
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from store.postgres import migrate

from ..fakes import ServerProcess, free_port

__all__ = ["Death", "Replica", "SharedDatabase", "takeover"]


@dataclass(eq=False)
class Replica:
    """One `threadbot serve` of several, restarted on the same ports after each death."""

    index: int
    port: int = field(default_factory=free_port)
    smtp_port: int = field(default_factory=free_port)
    server: ServerProcess | None = None
    point: str = ""
    """Where its current process dies by itself (THREADBOT_CHAOS), or `deliver`:
    the harness kills it while it delivers a mail or a Slack post."""
    killed_by_us: bool = False
    started_at: float = 0.0
    generation: int = 0
    """How many processes it has had: the current one's number."""
    down_since: float | None = None
    """When the harness found its process dead (None while it runs)."""
    restart_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app_name(self) -> str:
        return f"chaos-r{self.index}-g{self.generation}"

    def up(self) -> bool:
        server = self.server
        return server is not None and server.proc.poll() is None

    def runs(self, pid: int) -> bool:
        server = self.server
        return server is not None and server.proc.pid == pid


Append = tuple[str, bool, str, float]
"""(thread, by a runner, process, when)"""

_APP = re.compile(r"chaos-r(\d+)-g(\d+)$")

_LOG_APPENDS = """
CREATE TABLE chaos_appends (
    thread_id text NOT NULL,
    seq integer NOT NULL,
    by_runner boolean NOT NULL,
    app text NOT NULL,
    at double precision NOT NULL
);
-- Rows of an append that is never committed go with it.
CREATE FUNCTION chaos_append_seen() RETURNS trigger AS $$
BEGIN
    INSERT INTO chaos_appends VALUES (
        NEW.thread_id, NEW.seq, NEW.key IS NULL,
        current_setting('application_name'), extract(epoch FROM clock_timestamp())
    );
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER chaos_appends AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chaos_append_seen();
"""


class SharedDatabase:
    """The database the replicas share, as the harness looks into it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = psycopg.connect(url, autocommit=True)

    def prepare(self) -> None:
        """threadbot's schema, and the harness's log of appends beside it."""
        migrate(self._conn)
        self._conn.execute(_LOG_APPENDS)

    def close(self) -> None:
        self._conn.close()

    def lease_pid(self, thread_id: str) -> int | None:
        """The process that holds the thread's lease (owners are `host:pid:random`)."""
        row = self._conn.execute(
            "SELECT split_part(owner, ':', 2) FROM leases WHERE thread_id = %s", [thread_id]
        ).fetchone()
        return int(row[0]) if row and row[0].isdigit() else None

    def left_by(self, pid: int) -> list[str]:
        """Threads with work left whose lease the (dead) process `pid` holds."""
        rows = self._conn.execute(
            "SELECT t.id FROM leases l JOIN threads t ON t.id = l.thread_id "
            "WHERE split_part(l.owner, ':', 2) = %s "
            "AND (t.status = 'running' OR t.deliver_to <> '')",
            [str(pid)],
        ).fetchall()
        return [r[0] for r in rows]

    def appends(self) -> list[Append]:
        """Every committed event's, oldest first."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._conn.execute(
                "SELECT thread_id, by_runner, app, at FROM chaos_appends ORDER BY at"
            )
        ]


@dataclass
class Death:
    """A replica's process died (killed, or at a named point) holding these threads."""

    replica: int
    generation: int
    at: float
    threads: list[str]


def _figures(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"threads": 0}
    return {
        "threads": len(seconds),
        "p50_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
    }


def takeover(deaths: Iterable[Death], appends: list[Append]) -> dict[str, Any]:
    """For each thread a dead process left with work: how long until the next
    append by a runner, and whose. Appends by people (an HTTP request carries
    a key; a runner's events do not) do not count: a takeover is a runner
    going on with the thread."""
    by_thread: dict[str, list[tuple[float, int, int]]] = {}
    for thread_id, by_runner, app, at in appends:
        found = _APP.match(app)
        if by_runner and found:
            by_thread.setdefault(thread_id, []).append(
                (at, int(found.group(1)), int(found.group(2)))
            )
    other: list[float] = []
    restarted: list[float] = []
    never = 0
    deaths = list(deaths)
    for d in deaths:
        for thread_id in d.threads:
            after = next(((at, r) for at, r, _ in by_thread.get(thread_id, ()) if at > d.at), None)
            if after is None:
                never += 1
            elif after[1] != d.replica:
                other.append(after[0] - d.at)
            else:
                restarted.append(after[0] - d.at)
    return {
        "deaths": len(deaths),
        "deaths_leaving_threads": sum(1 for d in deaths if d.threads),
        "taken_over_by_another_replica": _figures(other),
        "resumed_first_by_the_restarted_replica": _figures(restarted),
        "no_runner_append_after": never,
    }
