"""What the core tells about its work, for metrics and traces.

The runner, the thread log and the webhook sender call an `Observer` as they
work: an append made and how long it took, a model call and its tokens, a
delivery and its outcome. The observer decides what to make of it (the
composition root turns it into Prometheus metrics and OpenTelemetry spans);
the core imports neither. The base class does nothing, so an observer
overrides only what it needs, and a bot without one pays a method call.

Calls come from the serving loop's thread and the agent's: an observer must
be safe to call from both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

__all__ = ["Attributes", "Observer", "Observers", "Usage"]

Attributes = Mapping[str, str | int | bool]


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens a model call used, as its server counted them."""

    prompt_tokens: int
    completion_tokens: int


class Observer:
    """Does nothing; subclasses override what they watch."""

    def appended(self, types: Sequence[str], seconds: float) -> None:
        """Events of these types were appended in one transaction, which took
        `seconds` (from the call until it was on disk)."""

    def append_conflict(self) -> None:
        """An append lost to another writer (it reads the thread again)."""

    def model_called(self, seconds: float, usage: Usage | None, error: str | None) -> None:
        """A model call ended: its reply's tokens, or its error."""

    def tool_called(self, name: str, seconds: float, is_error: bool) -> None:
        """A tool ran."""

    def delivered(self, channel: str, ok: bool) -> None:
        """A notice was handed to a channel: posted, or failed (and retried)."""

    def lease_taken_over(self) -> None:
        """A thread was taken over from a runner that is gone."""

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        """A webhook was posted: `delivered`, `retrying` or `failed` (given up)."""

    def span(
        self, name: str, thread_id: str, attributes: Attributes | None = None
    ) -> AbstractContextManager[None]:
        """Around a piece of work on a thread: a run (`threadbot.run`), one of
        its steps, a model call, a tool call. Spans opened inside it are its
        children."""
        return nullcontext()


class Observers(Observer):
    """Several observers, told the same things in turn."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def appended(self, types: Sequence[str], seconds: float) -> None:
        for o in self.observers:
            o.appended(types, seconds)

    def append_conflict(self) -> None:
        for o in self.observers:
            o.append_conflict()

    def model_called(self, seconds: float, usage: Usage | None, error: str | None) -> None:
        for o in self.observers:
            o.model_called(seconds, usage, error)

    def tool_called(self, name: str, seconds: float, is_error: bool) -> None:
        for o in self.observers:
            o.tool_called(name, seconds, is_error)

    def delivered(self, channel: str, ok: bool) -> None:
        for o in self.observers:
            o.delivered(channel, ok)

    def lease_taken_over(self) -> None:
        for o in self.observers:
            o.lease_taken_over()

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        for o in self.observers:
            o.webhook_attempted(outcome, seconds)

    @contextmanager
    def span(
        self, name: str, thread_id: str, attributes: Attributes | None = None
    ) -> Iterator[None]:
        with ExitStack() as stack:
            for o in self.observers:
                stack.enter_context(o.span(name, thread_id, attributes))
            yield
