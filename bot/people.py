"""People: one identity across channels, and the one rule of who may answer.

A person is a name, a Slack user id, email addresses and groups, from the
people file (`THREADBOT_PEOPLE`, TOML) and from what channels learn (Slack's
directory completes a person known by one of their Slack id or address).
Channels authenticate someone and name them in a `Source`; `may_settle`
decides, the same way for every channel, whether that source may answer a
question, decide an approval or post a result.

    [people.ann]
    name = "Ann Lee"
    slack = "U024BE7LH"
    email = ["ann@example.com"]
    groups = ["ops", "admins"]
    slack_channel = "C0APPROVALS"   # optional: approvals for threads that
                                    # started elsewhere go here, not to a DM

Approvers are written once (a tool's `approvers`, else `THREADBOT_APPROVERS`)
and may name people (`ann`), groups (`group:ops`), Slack ids and addresses.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .errors import UsageError
from .events import Approval, Event, HumanResponse, Source, UserMessage, by_deadline

__all__ = ["ADMINS", "Deciders", "People", "Person", "deciders", "may_settle", "takes_part"]

ADMINS = "admins"
"""The group that decides what no approver was named for."""


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str = ""
    slack: str | None = None
    emails: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    slack_channel: str | None = None
    """Where Slack reaches them for threads that started elsewhere: a
    channel id instead of a direct message."""

    def matches(self, spec: str) -> bool:
        """Whether an approver entry (a person, `group:NAME`, a Slack id, an
        address) names this person."""
        if spec.startswith("group:"):
            return spec[6:] in self.groups
        return spec == self.id or spec == self.slack or spec.lower() in self.emails

    @property
    def display(self) -> str:
        return self.name or self.id


def _person(pid: str, raw: Mapping[str, Any]) -> Person:
    if not isinstance(raw, Mapping):
        raise UsageError(f"people file: [people.{pid}] must be a table")
    emails = raw.get("email", raw.get("emails", ()))
    emails = [emails] if isinstance(emails, str) else list(emails)
    groups = raw.get("groups", ())
    if not all(isinstance(x, str) for x in [*emails, *groups]):
        raise UsageError(f"people file: {pid}'s email and groups must be strings")
    slack = raw.get("slack")
    if slack is not None and not isinstance(slack, str):
        raise UsageError(f"people file: {pid}'s slack must be a user id string")
    slack_channel = raw.get("slack_channel")
    if slack_channel is not None and not isinstance(slack_channel, str):
        raise UsageError(f"people file: {pid}'s slack_channel must be a channel id string")
    return Person(
        id=pid,
        name=str(raw.get("name") or pid),
        slack=slack or None,
        emails=tuple(e.strip().lower() for e in emails),
        groups=tuple(groups),
        slack_channel=slack_channel or None,
    )


@dataclass
class People:
    """The directory. Lookups are by person id, Slack id or address."""

    persons: list[Person] = field(default_factory=list)
    approvers: tuple[str, ...] = ()
    """THREADBOT_APPROVERS (and the per-channel aliases): who decides calls
    whose tool names nobody."""
    senders: tuple[str, ...] = ()
    """THREADBOT_EMAIL_SENDERS: addresses and `@domain`s that may start
    threads by mail (and count as known)."""
    _index: dict[str, Person] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.persons = list(self.persons)  # a caller may hand in any sequence
        for p in self.persons:
            self._add(p)

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        *,
        approvers: Iterable[str] = (),
        senders: Iterable[str] = (),
    ) -> People:
        persons: list[Person] = []
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except OSError as e:
                raise UsageError(f"cannot read the people file {path}: {e}") from None
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"the people file {path} is not valid TOML: {e}") from None
            table = data.get("people", {})
            if not isinstance(table, Mapping):
                raise UsageError(f"people file {path}: [people] must be a table of people")
            persons = [_person(pid, raw) for pid, raw in table.items()]
        return cls(
            persons,
            approvers=tuple(a.strip() for a in approvers if a.strip()),
            senders=tuple(s.strip().lower() for s in senders if s.strip()),
        )

    def _add(self, p: Person) -> None:
        for ident in (p.id, p.slack, *p.emails):
            if ident:
                self._index[ident if "@" not in ident else ident.lower()] = p

    # -- finding people ---------------------------------------------------

    def find(self, ident: str | None) -> Person | None:
        if not ident:
            return None
        return self._index.get(ident.lower() if "@" in ident else ident)

    def identify(self, source: Source | None) -> Person | None:
        if source is None:
            return None
        return self.find(source.person) or self.find(source.user)

    def learn(self, *, slack: str | None, email: str | None, name: str | None = None) -> Person:
        """What a channel found out (Slack's directory: this user id has
        this address): the person known by either is completed with the
        other, or a person is made for them."""
        email = email.lower() if email else None
        found = self.find(slack) or self.find(email)
        if found is None:
            found = Person(id=slack or email or "?", name=name or "")
            self.persons = [*self.persons, found]
        updated = replace(
            found,
            slack=found.slack or slack,
            emails=found.emails + ((email,) if email and email not in found.emails else ()),
            name=found.name or name or "",
        )
        if updated != found:
            self.persons = [updated if p is found else p for p in self.persons]
        self._add(updated)
        return updated

    @property
    def configured(self) -> bool:
        """Whether anyone is named: people, approvers or senders."""
        return bool(self.persons or self.approvers or self.senders)

    def sender_allowed(self, address: str) -> bool:
        """Whether an address may start threads by mail: with no senders
        configured, anyone; else the listed addresses, `@domain`s and the
        people file's addresses."""
        if not self.senders:
            return True
        return self.listed_sender(address)

    def listed_sender(self, address: str) -> bool:
        a = address.lower()
        domain = "@" + a.rpartition("@")[2]
        return a in self.senders or domain in self.senders or self.find(a) is not None

    def known(self, source: Source | None) -> bool:
        """Whether the person behind `source` is someone this deployment
        knows: in the people file, vouched for by the channel that
        authenticated them (a member of the Slack workspace), or an address
        the senders list names now."""
        if source is None:
            return False
        if source.admin or source.member or self.identify(source) is not None:
            return True
        return bool(self.senders and source.user and self.listed_sender(source.user))

    def same(self, a: Source | None, b: Source | None) -> bool:
        """Whether two sources are one person (across channels when the
        directory links them)."""
        if a is None or b is None:
            return False
        pa, pb = self.identify(a), self.identify(b)
        if pa is not None and pb is not None:
            return pa.id == pb.id
        if a.user is None or b.user is None:
            return False
        return a.user.lower() == b.user.lower()

    def named(self, source: Source, specs: Iterable[str]) -> bool:
        """Whether any of `specs` names the person behind `source`."""
        specs = tuple(specs)
        person = self.identify(source)
        if person is not None and any(person.matches(s) for s in specs):
            return True
        user = (source.user or "").lower()
        return bool(user) and any(user == s.lower() for s in specs)

    def expand(self, specs: Iterable[str]) -> list[Person]:
        """The people approver entries name, each once: a group's members,
        and for an entry the directory does not know, a person made of it
        (an address, or an id a channel may recognise)."""
        out: dict[str, Person] = {}
        for spec in specs:
            if spec.startswith("group:"):
                for p in self.persons:
                    if p.matches(spec):
                        out.setdefault(p.id, p)
                continue
            p = self.find(spec) or Person(id=spec, emails=(spec.lower(),) if "@" in spec else ())
            out.setdefault(p.id, p)
        return list(out.values())

    def describe(self, specs: Iterable[str]) -> list[str]:
        """Approver entries for people to read: names where they are known."""
        out = []
        for s in specs:
            p = None if s.startswith("group:") else self.find(s)
            out.append(p.display if p is not None else s)
        return out


Kind = Literal["question", "approval", "result"]


def takes_part(people: People, events: Sequence[Event], source: Source) -> bool:
    """Whether the person behind `source` has written in the thread or decided
    one of its calls (a decider keeps seeing what their decision led to)."""
    return any(
        people.same(source, e.source)
        for e in events
        if isinstance(e, UserMessage | HumanResponse | Approval)
    )


class Deciders(NamedTuple):
    """Who decides a call, as `may_settle` applies it: for notices and pages
    to say so, and to reach those people."""

    by: Literal["approvers", "starter", "admins"]
    specs: tuple[str, ...]
    """The approver entries; with nobody named, the starter's id, or the
    admins' group."""


def deciders(
    people: People,
    approvers: Sequence[str],
    origin: Source | None,
    escalated: Sequence[str] = (),
) -> Deciders:
    """The call's approvers, else the deployment's; with nobody named, the
    person who started the thread if the deployment knows them, else the
    admins. Those a call was escalated to join whoever that is."""
    specs = tuple(approvers) or people.approvers
    if specs:
        found = Deciders("approvers", specs)
    elif origin is not None and people.known(origin):
        found = Deciders("starter", (origin.person or origin.user or "",))
    else:
        found = Deciders("admins", (f"group:{ADMINS}",))
    if escalated:
        return Deciders("approvers", found.specs + tuple(escalated))
    return found


def _one(people: People, a: Source, b: Source) -> bool:
    """Whether two sources are one person, or one unnamed operator."""
    return people.same(a, b) or (a.user, a.person, a.auth, a.by) == (b.user, b.person, b.auth, b.by)


def requesters(events: Sequence[Event]) -> list[Source]:
    """Whose messages led to what the agent does next: the last person who
    wrote, and everyone who answered its questions since (an answer given
    by an operator or by a deadline does not take their place)."""
    out: list[Source] = []
    for e in reversed(events):
        if isinstance(e, HumanResponse) and not by_deadline(e.source):
            out.append(e.source)
        elif isinstance(e, UserMessage):
            out.append(e.source)
            break
    return out


def may_settle(
    people: People,
    events: Sequence[Event],
    *,
    kind: Kind,
    call_seq: int,
    approvers: Sequence[str],
    self_approval: bool,
    source: Source,
    escalated: Sequence[str] = (),
    approvals_required: int = 1,
    approved_by: Sequence[Source] = (),
) -> str | None:
    """None if `source` may settle the call at `call_seq`; else why not.

    - An operator (an admin token, the local operator, the shell, code in
      the process) may settle anything.
    - A decision: the call's approvers (else the global ones) may decide;
      the person whose message led to the call may approve it too if listed,
      unless the tool says `self_approval=False` (then someone else must).
      With no approver named, the person who started the thread decides if
      this deployment knows them; a stranger never approves their own
      request: the admins do.
    - When several approvals are required, each comes from someone else, and
      never from those whose messages led to the call (`requesters`).
    - Those a call was escalated to may settle it too.
    - An answer or a result: whoever started the thread or wrote in it, the
      approvers, and the admins.
    """
    if kind == "approval" and approvals_required > 1:
        if any(_one(people, source, a) for a in approved_by):
            return (
                f"already approved by {source.who()}; it needs {approvals_required} "
                "approvals from different people"
            )
        if any(people.same(source, r) for r in requesters(events[:call_seq])):
            return "the person who asked does not count among the approvers it needs"
    if source.admin:
        return None
    if source.user is None and source.person is None:
        return "an anonymous source cannot answer or decide"
    humans = [e.source for e in events[:call_seq] if isinstance(e, UserMessage | HumanResponse)]
    who = people.identify(source)
    is_admin = who is not None and ADMINS in who.groups
    origin = humans[0] if humans else None
    decide = deciders(people, approvers, origin, escalated)
    specs = decide.specs if decide.by == "approvers" else ()
    if kind == "approval":
        if specs:
            if not people.named(source, specs):
                return "not one of the approvers (" + ", ".join(people.describe(specs)) + ")"
            if not self_approval and any(
                people.same(source, r) for r in requesters(events[:call_seq])
            ):
                return "someone other than the person who asked must approve this (four eyes)"
            return None
        if is_admin:
            return None
        if decide.by == "starter" and people.same(source, origin):
            return None
        if people.same(source, origin):
            return (
                "the request came from someone this deployment does not know; "
                "an admin must decide it"
            )
        return "only the person who started the thread (if known) or an admin may decide"
    if is_admin or takes_part(people, events, source):
        return None
    if specs and people.named(source, specs):
        return None
    return "only people taking part in the thread and its approvers may answer"
