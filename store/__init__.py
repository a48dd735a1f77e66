"""The durable event log: threads of `(seq, type, JSON)` rows in SQLite."""

from .errors import DuplicateKey, SeqConflict, StoreError, UnknownThread
from .sqlite import EventStore, NewRow, ThreadRow

__all__ = [
    "DuplicateKey",
    "EventStore",
    "NewRow",
    "SeqConflict",
    "StoreError",
    "ThreadRow",
    "UnknownThread",
]
