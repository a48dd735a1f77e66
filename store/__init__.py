"""The durable event log: threads of `(seq, type, JSON)` rows, in a SQLite
file (the default) or a PostgreSQL database shared by replicas."""

from __future__ import annotations

from pathlib import Path

from .base import Cursor, Store
from .credentials import SCOPES, Credentials, Session, Token
from .errors import DuplicateKey, SeqConflict, StoreError, UnknownThread
from .outbox import Outbox
from .rows import NewRow, OutboxRow, ThreadRow
from .sqlite import EventStore

__all__ = [
    "SCOPES",
    "Credentials",
    "Cursor",
    "DuplicateKey",
    "EventStore",
    "NewRow",
    "Outbox",
    "OutboxRow",
    "SeqConflict",
    "Session",
    "Store",
    "StoreError",
    "ThreadRow",
    "Token",
    "UnknownThread",
    "is_postgres_url",
    "open_store",
]


def is_postgres_url(db: str | Path) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def open_store(db: str | Path, *, durable: bool = True) -> Store:
    """The store at `db`: a `postgresql://` (or `postgres://`) URL, or else
    the path of a SQLite file. Raises `StoreError` for another kind of URL
    and for a PostgreSQL server that cannot be reached."""
    if "://" in str(db) and not is_postgres_url(db):
        scheme = str(db).partition("://")[0]
        raise StoreError(
            f"the database {scheme}://… is neither a postgresql:// URL nor a SQLite file path"
        )
    if is_postgres_url(db):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise StoreError(
                "a PostgreSQL store needs psycopg: pip install 'threadbot[postgres]'"
            ) from e
        return PostgresStore(str(db), durable=durable)
    return EventStore(db, durable=durable)
