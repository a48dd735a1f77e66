"""What the Slack posts say about people and time: who settled and how they
were authenticated, where a thread started, what a deadline does."""

from __future__ import annotations

from bot import ApprovalRequest, Outcome, People, Question, Source

from . import format as fmt
from .settings import mention

__all__ = ["Wording"]

_HOW = {
    "email:signed": "by email",
    "email:thread": "by email",
    "admin-token": "through the API",
    "operator": "by the operator",
    "cli": "by the operator",
    "python": "by the operator",
}
_HOW_PREFIX = (("session:", "on the web page"), ("token:", "through the API"))

_AT_DEADLINE = {
    "reject": "then it is rejected",
    "approve": "then it goes ahead without a decision",
    "fail": "then the thread stops as failed",
}


class Wording:
    def __init__(self, people: People, channel: str) -> None:
        self.people = people
        self.channel = channel

    def who_how(self, source: Source) -> tuple[str, str]:
        """Who did something, and how they were authenticated ("" for a
        click in Slack, which names the clicker)."""
        if source.channel == self.channel and source.auth == "slack":
            return mention(source.user or source.who()), ""
        if source.auth in ("operator", "python") and not source.user and not source.by:
            return "the operator", ""  # the local operator, or code in the process
        # Never a mention made of what another channel says (a mail's display
        # name may be "U024BE7LH"): the directory's name, else the address.
        person = self.people.identify(source)
        who = fmt.escape(person.display if person else source.who())
        how = _HOW.get(source.auth or "") or next(
            (label for prefix, label in _HOW_PREFIX if (source.auth or "").startswith(prefix)),
            f"through {source.channel}",
        )
        by = f" (by {fmt.escape(source.by)} for them)" if source.by else ""
        return who, f"{how}{by}"

    def by(self, source: Source | None) -> str:
        """Who settled, and how: a body naming someone is never shown as
        that person's own click."""
        if source is None:
            return "threadbot"
        who, how = self.who_how(source)
        return f"{who} {how}" if how else who

    def started(self, origin: Source) -> str:
        """Where a thread that started elsewhere came from, and who asked."""
        who, how = self.who_how(origin)
        return f"From a thread {who} started {how or 'in Slack'}."

    def people_mentioned(self, ids: tuple[str, ...]) -> str:
        """People as Slack mentions where their Slack id is known, else by name."""
        out = []
        for ident in ids:
            person = self.people.find(ident)
            if person is not None and person.slack:
                out.append(mention(person.slack))
            else:
                out.append(mention(person.display if person else ident))
        return ", ".join(out) or "nobody"

    def notes(self, request: Question | ApprovalRequest) -> list[str]:
        """Under a request: its deadline, and how many approvals it needs."""
        lines = []
        if isinstance(request, ApprovalRequest):
            if request.deadline_at is not None:
                then = _AT_DEADLINE.get(request.on_deadline, "then it is rejected")
                lines.append(f"⏳ Decide by {fmt.date(request.deadline_at)}: {then}.")
            if request.approvals_required > 1:
                so_far = ""
                if request.approved_by:
                    names = ", ".join(self.by(s) for s in request.approved_by)
                    so_far = f" ({len(request.approved_by)} so far: {names})"
                lines.append(f"Needs {request.approvals_required} approvals{so_far}.")
        elif request.deadline_at is not None:
            lines.append(
                f"⏳ Answer by {fmt.date(request.deadline_at)}: "
                "then the agent goes on without an answer."
            )
        return lines

    def outcome(self, outcome: Outcome) -> str:
        """What a settled request's posts say."""
        text = fmt.escape(outcome.text or "")
        request = outcome.request
        if outcome.kind == "cancelled":
            return f"⏹ Cancelled by {self.by(outcome.by)}" + (f": {text}" if text else "")
        if outcome.by_deadline:
            if isinstance(request, Question):
                return "⌛ No answer by the deadline: the agent went on without one."
            if outcome.kind == "approved":
                return "✅ Approved: nobody decided by the deadline, so it went ahead."
            return "❌ Rejected: nobody approved by the deadline."
        by = self.by(outcome.by)
        match outcome.kind:
            case "answered":
                return f"✅ {by} answered: {text}"
            case "responded":
                return f"💬 {by} replied instead: {text}"
            case "approved":
                return f"✅ Approved by {by}" + (f": {text}" if text else "")
        return f"❌ Rejected by {by}" + (f": {text}" if text else "")
