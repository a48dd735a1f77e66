"""Typed access to the store: events in, events out, projection kept in step."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from store import EventStore, NewRow, UnknownThread

from .errors import ThreadNotFound
from .events import Event, dump_event, load_events
from .thread import ThreadState, derive

__all__ = ["ThreadLog"]


def _rows(events: Iterable[Event]) -> list[NewRow]:
    return [NewRow(e.type, dump_event(e), e.key) for e in events]


class ThreadLog:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    def load(self, thread_id: str, *, upto: int | None = None) -> list[Event]:
        bodies = self.store.load(thread_id, upto=upto)
        if not bodies:
            raise ThreadNotFound(thread_id)
        return load_events(bodies)

    def refresh(self, thread_id: str, events: list[Event]) -> list[Event]:
        """`events` plus whatever other writers appended since."""
        return events + load_events(self.store.load_from(thread_id, len(events)))

    def create(
        self,
        thread_id: str,
        events: Sequence[Event],
        *,
        parent: tuple[str, int] | None = None,
        routes: Iterable[str] = (),
    ) -> ThreadState:
        state = derive(events)
        origin = state.origin.model_dump_json(exclude_none=True) if state.origin else "{}"
        self.store.create(
            thread_id,
            _rows(events),
            status=state.status,
            title=state.title,
            origin=origin,
            parent=parent,
            routes=routes,
        )
        return state

    def append(
        self,
        thread_id: str,
        events: list[Event],
        new: Sequence[Event],
        *,
        routes: Iterable[str] = (),
    ) -> list[Event]:
        """Append `new` after `events` (what the caller loaded) and return the
        whole thread. Raises `SeqConflict` if another writer got there first."""
        after = events + list(new)
        try:
            self.store.append(
                thread_id, len(events), _rows(new), status=derive(after).status, routes=routes
            )
        except UnknownThread as e:
            raise ThreadNotFound(thread_id) from e
        return after


def origin_of(origin_json: str) -> dict[str, object]:
    loaded = json.loads(origin_json)
    return loaded if isinstance(loaded, dict) else {}
