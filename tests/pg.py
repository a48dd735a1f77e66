"""PostgreSQL for tests: a throwaway server of our own, or one the environment names.

`THREADBOT_TEST_POSTGRES` (the URL of an existing server the tests may create
databases on) takes precedence; otherwise `PostgresServer` runs the machine's
PostgreSQL binaries on a fresh data directory, 127.0.0.1 and a free port, and
removes everything on exit. PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` OS user (Debian's package creates it)."""

from __future__ import annotations

import glob
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from .fakes import free_port

ENV = "THREADBOT_TEST_POSTGRES"
OS_USER = "postgres"


def external_url() -> str | None:
    """The URL of a server the environment gives the tests, if any."""
    return os.environ.get(ENV) or None


def _version(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6)
    name = Path(bindir).parent.name
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (0,)


def bindir() -> Path | None:
    """The newest installed server's binaries (Debian's layout), else `pg_config`'s."""
    found = [str(Path(p).parent) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if found:
        return Path(max(found, key=_version))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        d = Path(out.stdout.strip())
        if out.returncode == 0 and (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def available() -> str | None:
    """None if a `PostgresServer` can start here, else why not."""
    if bindir() is None:
        return "no initdb/pg_ctl in /usr/lib/postgresql/*/bin or pg_config --bindir"
    if _as_root():
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and there is no runuser to run the server as postgres"
        done = subprocess.run(["runuser", "-u", OS_USER, "--", "true"], capture_output=True)
        if done.returncode != 0:
            return f"cannot run as {OS_USER}: {done.stderr.decode(errors='replace').strip()}"
    return None


class Postgres:
    """A server, by its URL, that the tests may create and drop databases on."""

    def __init__(self, url: str) -> None:
        self.url = url

    def create_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return urlsplit(self.url)._replace(path="/" + name).geturl()

    def drop_database(self, name: str) -> None:
        """Drop it, ending any connection a test left open."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class PostgresServer(Postgres):
    """A fresh PostgreSQL cluster in a temporary directory, for as long as the `with`.

    `listen`: the addresses it listens on (the first is the URL's host).
    `trust`: the networks that may connect (without a password); by default
    the listen addresses themselves. fsync stays on: tests measure durability
    against it."""

    def __init__(
        self,
        listen: Sequence[str] = ("127.0.0.1",),
        port: int | None = None,
        trust: Sequence[str] | None = None,
    ) -> None:
        self.listen = tuple(listen)
        self.trust = tuple(trust) if trust is not None else self.listen
        self.port = port or free_port()
        self.dir: Path | None = None
        self.bin: Path | None = None
        host = f"[{self.listen[0]}]" if ":" in self.listen[0] else self.listen[0]
        super().__init__(f"postgresql://postgres@{host}:{self.port}/postgres")

    @property
    def data(self) -> Path:
        assert self.dir is not None, "the server is not started"
        return self.dir / "data"

    def _run(self, *args: str | Path) -> None:
        assert self.dir is not None and self.bin is not None
        cmd = [str(self.bin / str(args[0])), *map(str, args[1:])]
        if _as_root():
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        # cwd: root's home is not the postgres user's to enter.
        done = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}{tail}"
            )

    def start(self) -> PostgresServer:
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError(available())
        # As root, /tmp: pytest's /tmp/pytest-of-root is 0700, out of the postgres user's reach.
        self.dir = Path(
            tempfile.mkdtemp(prefix="threadbot-pg-", dir="/tmp" if _as_root() else None)
        )
        try:
            (self.dir / "sockets").mkdir()
            if _as_root():
                for p in (self.dir, self.dir / "sockets"):
                    shutil.chown(p, OS_USER, OS_USER)
            self._run(
                "initdb",
                "-D", self.data,
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            )  # fmt: skip
            hba = "".join(f"host all all {ipaddress.ip_network(n)} trust\n" for n in self.trust)
            (self.data / "pg_hba.conf").write_text(hba)
            addresses = ",".join(self.listen)
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '{addresses}'\n"
                    f"port = {self.port}\n"
                    f"unix_socket_directories = '{self.dir / 'sockets'}'\n"
                    "fsync = on\n"
                    "max_connections = 200\n"
                )
            self._run("pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "start")
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Stop the server as an operator's restart does (every session is
        ended) and start it again on the same address and data."""
        self.halt()
        self.resume()

    def halt(self) -> None:
        """Stop the server as an operator does, keeping its data (`resume`)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.data.parent / "log", "-w", "start")

    def stop(self) -> None:
        """Stop at once (no checkpoint: the cluster is thrown away) and remove it."""
        if self.dir is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
