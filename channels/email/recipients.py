"""Who gets a mail for a delivered event, and whether they may act on it.

Approvers are written once for every channel (people, `group:`s, Slack ids,
addresses); here they become addresses through the people directory. Whether
a recipient may decide is asked of the core's one rule (`may_settle`), not
worked out again, so the mail tells each person what they can do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot import Source
from bot.events import Event, ToolCall
from bot.people import People, deciders, may_settle

__all__ = ["Recipient", "approval_recipients", "email_source", "is_participant"]


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    decides: bool


def email_source(
    people: People, address: str, *, auth: str, name: str | None = None, **refs: str
) -> Source:
    """An email source, naming the person behind the address when known."""
    person = people.find(address)
    return Source(
        channel="email",
        user=address.lower(),
        name=name or None,
        auth=auth,
        person=person.id if person is not None else None,
        refs=refs,
    )


def _addresses(people: People, spec: str) -> list[str]:
    if spec.startswith("group:"):
        group = spec[6:]
        return [e for p in people.persons if group in p.groups for e in p.emails]
    if "@" in spec:
        return [spec.lower()]
    person = people.find(spec)
    return list(person.emails) if person is not None else []


def approval_recipients(
    people: People, events: Sequence[Event], seq: int, origin: Source
) -> tuple[list[Recipient], str]:
    """Everyone who gets the approval request at `seq`: its deciders, each
    by a mail of their own, and the person who asked; and the deciders, as
    people read them."""
    call = events[seq]
    assert isinstance(call, ToolCall)
    decide = deciders(people, call.approvers, origin)
    if decide.by == "approvers":
        candidates = [a for s in decide.specs for a in _addresses(people, s)]
        names = ", ".join(people.describe(decide.specs))
    elif decide.by == "starter":
        candidates, names = [origin.user or ""], origin.who()
    else:
        # A stranger never approves their own request: the admins decide.
        candidates, names = _addresses(people, decide.specs[0]), "an admin"
    out: dict[str, Recipient] = {}
    for address in [*candidates, origin.user or ""]:
        if not address or address in out:
            continue
        source = email_source(people, address, auth="email:signed")
        why = may_settle(
            people,
            events,
            kind="approval",
            call_seq=seq,
            approvers=call.approvers,
            self_approval=call.self_approval is not False,
            source=source,
        )
        out[address] = Recipient(address, decides=why is None)
    return list(out.values()), names


def is_participant(people: People, events: Sequence[Event], source: Source) -> str | None:
    """None if `source` may write in the thread (the core's rule for who may
    answer: its people, its approvers, the admins); else why not."""
    return may_settle(
        people,
        events,
        kind="question",
        call_seq=len(events),
        approvers=(),
        source=source,
        self_approval=True,
    )
