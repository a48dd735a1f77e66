"""Who gets a mail for an approval request, and whether they may act on it.

Approvers are written once for every channel (people, `group:`s, Slack ids,
addresses); here they become addresses through the people directory. Whether
a recipient may decide is asked of the core's rule (the request's
`may_decide`), not worked out again, so the mail tells each person what they
can do.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import ApprovalRequest, People, Source

__all__ = ["Recipient", "approval_recipients", "email_source"]


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    decides: bool


def email_source(people: People, address: str, *, auth: str, **refs: str) -> Source:
    """An email source, naming the person behind the address when known. The
    display name of a `From` header is whatever the sender typed: it names
    nobody (the address, or the people file's name, does)."""
    person = people.find(address)
    return Source(
        channel="email",
        user=address.lower(),
        name=person.display if person is not None else None,
        auth=auth,
        person=person.id if person is not None else None,
        refs=refs,
    )


def _addresses(people: People, spec: str) -> list[str]:
    """The addresses an approver entry names: itself, or its people's."""
    if "@" in spec:
        return [spec.lower()]
    return [address for person in people.expand([spec]) for address in person.emails]


def approval_recipients(people: People, request: ApprovalRequest) -> tuple[list[Recipient], str]:
    """Everyone who gets the approval request: its deciders, each by a mail
    of their own, and the person who asked; and the deciders, as people read
    them."""
    decide, origin = request.deciders, request.origin
    if decide.by == "approvers":
        candidates = [a for s in decide.specs for a in _addresses(people, s)]
        names = ", ".join(request.named)
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
        out[address] = Recipient(address, decides=request.may_decide(source))
    return list(out.values()), names
