from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from bot import OpenAIModel, ThreadBot, load_tools
from store import EventStore, Store, open_store

from . import pg
from .fakes import FakeOpenAI, stop_strays

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Generated tests: reproducible in the suite, wide and random when fuzzing.
settings.register_profile("ci", max_examples=30, derandomize=True, deadline=None)
settings.register_profile("fuzz", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _no_stray_servers() -> Iterator[None]:
    yield
    stop_strays()


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    """The session's PostgreSQL: `THREADBOT_TEST_POSTGRES`'s server, else one of our own.

    Skipped where there is none, except in CI, where a missing PostgreSQL fails."""
    url = pg.external_url()
    if url:
        yield pg.Postgres(url)
        return
    with _own_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres: pg.Postgres) -> Iterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    name = f"threadbot_test_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


def _own_server() -> pg.PostgresServer:
    """A server of our own to start; where none can run, the test is skipped
    (locally) or fails (in CI)."""
    reason = pg.available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not available in CI: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL not available: {reason}")
    return pg.PostgresServer()


@pytest.fixture
def restartable_pg(postgres: pg.Postgres) -> Iterator[tuple[pg.PostgresServer, str]]:
    """A server the test may restart, and a fresh database on it: the
    session's server when it is our own, else (the environment's is not ours
    to restart) one started for this test."""
    name = f"threadbot_test_{uuid.uuid4().hex[:12]}"
    if isinstance(postgres, pg.PostgresServer):
        yield postgres, postgres.create_database(name)
        postgres.drop_database(name)
        return
    with _own_server() as server:
        yield server, server.create_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens another store object on the test's database at each call: a
    SQLite file, or a fresh PostgreSQL database. Each is closed after the test."""
    db = str(tmp_path / "t.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened: list[Store] = []

    def make() -> Store:
        store = open_store(db)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    monkeypatch.setenv("THREADBOT_TEST_LEDGER", str(path))
    return path


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAI]:
    """One fake model server for a module's tests (and its server process)."""
    with FakeOpenAI().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for a module's server: its database and tool ledger."""
    d = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    (d / "ledger.txt").touch()
    return d


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context and page, on the module's `browser`."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    p = context.new_page()
    yield p
    context.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "threadbot.db"


def make_bot(db_path: Path, fake: FakeOpenAI, **kwargs: Any) -> ThreadBot:
    model = OpenAIModel("fake-model", base_url=fake.base_url, api_key="test", max_retries=2)
    kwargs.setdefault("retry_delay", 0)
    return ThreadBot(EventStore(db_path), model, load_tools("tests.ledger_tools"), **kwargs)


@pytest.fixture
async def bot(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> AsyncIterator[ThreadBot]:
    b = make_bot(db_path, fake_openai)
    yield b
    await b.close()
    b.store.close()


async def settled(bot: ThreadBot, thread_id: str) -> Any:
    await asyncio.wait_for(bot.settle(thread_id), 10)
    return bot.get(thread_id)
