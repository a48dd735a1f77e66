"""What an append can refuse."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class SeqConflict(StoreError):
    """Another writer appended to the thread first: reload and decide again."""

    def __init__(self, thread_id: str, expected_seq: int) -> None:
        super().__init__(f"thread {thread_id}: seq {expected_seq} is already taken")
        self.thread_id = thread_id
        self.expected_seq = expected_seq


class DuplicateKey(StoreError):
    """The delivery key was stored before: the original event is at (thread_id, seq)."""

    def __init__(self, key: str, thread_id: str, seq: int) -> None:
        super().__init__(f"key {key!r} was already stored as {thread_id}#{seq}")
        self.key = key
        self.thread_id = thread_id
        self.seq = seq


class UnknownThread(StoreError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"no thread {thread_id!r}")
        self.thread_id = thread_id
