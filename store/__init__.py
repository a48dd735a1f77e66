"""The durable event log: threads of `(seq, type, JSON)` rows in SQLite."""

from .credentials import SCOPES, Credentials, Session, Token
from .errors import DuplicateKey, SeqConflict, StoreError, UnknownThread
from .sqlite import EventStore, NewRow, ThreadRow

__all__ = [
    "SCOPES",
    "Credentials",
    "DuplicateKey",
    "EventStore",
    "NewRow",
    "SeqConflict",
    "Session",
    "StoreError",
    "ThreadRow",
    "Token",
    "UnknownThread",
]
