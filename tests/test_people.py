"""Who may answer or decide: the one rule every channel goes through
(`bot.people.may_settle`), as a pure function over a thread's events, and
the people file it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import UsageError
from bot.events import Event, HumanResponse, Source, ToolCall, UserMessage
from bot.people import People, Person, may_settle

ANN = Person("ann", "Ann Lee", slack="U_ANN", emails=("ann@example.com",), groups=("ops",))
BOB = Person("bob", "Bob", slack="U_BOB", emails=("bob@example.com",))
ROOT = Person("root", "Root", emails=("root@example.com",), groups=("admins",))


def slack(user: str) -> Source:
    return Source(channel="slack", user=user, auth="slack", member=True)


def mail(address: str) -> Source:
    return Source(channel="email", user=address, auth="email:signed")


def thread(starter: Source, *, approvers: tuple[str, ...] = ()) -> list[Event]:
    return [
        UserMessage(text="deploy the api", source=starter),
        ToolCall(
            call_id="c1", name="deploy", arguments={}, requires_approval=True, approvers=approvers
        ),
    ]


def decide(
    people: People, events: list[Event], source: Source, *, self_approval: bool = True
) -> str | None:
    call = events[-1]
    assert isinstance(call, ToolCall)
    return may_settle(
        people,
        events,
        kind="approval",
        call_seq=len(events) - 1,
        approvers=call.approvers,
        self_approval=self_approval,
        source=source,
    )


PEOPLE = People([ANN, BOB, ROOT])


@pytest.mark.parametrize(
    ("spec", "source"),
    [
        ("ann", slack("U_ANN")),  # a person, from Slack
        ("ann", mail("Ann@Example.com")),  # the same person by mail, any case
        ("group:ops", mail("ann@example.com")),
        ("ann@example.com", slack("U_ANN")),  # an address names the person on Slack too
        ("U_ANN", mail("ann@example.com")),  # and a Slack id names them by mail
    ],
)
def test_approvers_name_one_person_on_every_channel(spec: str, source: Source) -> None:
    events = thread(slack("U_BOB"), approvers=(spec,))
    assert decide(PEOPLE, events, source) is None
    assert decide(PEOPLE, events, slack("U_BOB")) is not None
    assert decide(PEOPLE, events, mail("bob@example.com")) is not None


def test_global_approvers_apply_when_the_tool_names_nobody() -> None:
    people = People([ANN, BOB], approvers=("group:ops",))
    events = thread(slack("U_BOB"))
    assert decide(people, events, slack("U_ANN")) is None
    assert "approvers (group:ops)" in (decide(people, events, slack("U_BOB")) or "")


def test_a_listed_approver_approves_their_own_request_unless_four_eyes() -> None:
    events = thread(slack("U_ANN"), approvers=("ann", "bob"))
    assert decide(PEOPLE, events, slack("U_ANN")) is None
    why = decide(PEOPLE, events, mail("ann@example.com"), self_approval=False)
    assert why is not None and "four eyes" in why
    assert decide(PEOPLE, events, slack("U_BOB"), self_approval=False) is None


def test_four_eyes_looks_at_whoever_led_to_the_call() -> None:
    # Bob asked, Ann's answer shaped the call: neither may approve it.
    events: list[Event] = [
        UserMessage(text="deploy", source=slack("U_BOB")),
        ToolCall(call_id="q", name="request_human_input", arguments={"question": "which?"}),
        HumanResponse(call_id="q", text="1.4.2", source=slack("U_ANN")),
        ToolCall(
            call_id="c1",
            name="deploy",
            arguments={},
            requires_approval=True,
            approvers=("ann", "bob", "root"),
        ),
    ]
    assert decide(PEOPLE, events, slack("U_ANN"), self_approval=False) is not None
    assert decide(PEOPLE, events, slack("U_BOB"), self_approval=False) is not None
    assert decide(PEOPLE, events, mail("root@example.com"), self_approval=False) is None


def test_with_no_approver_a_known_starter_decides() -> None:
    assert decide(PEOPLE, thread(mail("ann@example.com")), mail("ann@example.com")) is None
    # Everyone who signs a Slack request is a member of the workspace.
    assert decide(People(), thread(slack("U_NEW")), slack("U_NEW")) is None
    # Someone else may not, even if known.
    assert decide(PEOPLE, thread(mail("ann@example.com")), slack("U_BOB")) is not None


def test_a_stranger_never_approves_their_own_request() -> None:
    stranger = mail("mallory@evil.example")
    why = decide(PEOPLE, thread(stranger), stranger)
    assert why is not None and "admin" in why
    # The admins decide it.
    assert decide(PEOPLE, thread(stranger), mail("root@example.com")) is None
    # A listed sender is known, as the senders list stands now.
    senders = People([ROOT], senders=("@evil.example",))
    assert decide(senders, thread(stranger), stranger) is None
    delisted = People([ROOT], senders=("@good.example",))
    assert decide(delisted, thread(stranger), stranger) is not None


def test_an_operator_decides_anything_and_anonymous_nothing() -> None:
    events = thread(mail("mallory@evil.example"), approvers=("ann",))
    operator = Source(channel="http", auth="operator", admin=True)
    assert decide(PEOPLE, events, operator) is None
    assert decide(PEOPLE, events, Source(channel="http")) is not None


def test_answers_come_from_people_in_the_thread_and_approvers() -> None:
    events = thread(slack("U_ANN"))
    people = People([ANN, BOB, ROOT], approvers=("bob",))

    def answer(source: Source) -> str | None:
        return may_settle(
            people,
            events,
            kind="question",
            call_seq=1,
            approvers=(),
            self_approval=True,
            source=source,
        )

    assert answer(mail("ann@example.com")) is None  # the starter, by mail this time
    assert answer(slack("U_BOB")) is None  # an approver
    assert answer(mail("root@example.com")) is None  # an admin
    assert answer(mail("mallory@evil.example")) is not None


def test_the_people_file(tmp_path: Path) -> None:
    path = tmp_path / "people.toml"
    path.write_text(
        '[people.ann]\nname = "Ann Lee"\nslack = "U_ANN"\nemail = "Ann@Example.com"\n'
        'groups = ["ops"]\n\n[people.bob]\nemail = ["bob@example.com", "b@example.org"]\n'
    )
    people = People.load(path, approvers=["group:ops", " "], senders=["@Example.com"])
    assert people.find("U_ANN") == people.find("ann@example.com") == people.find("ann")
    assert people.find("b@example.org") is not None and people.find("b@example.org").id == "bob"
    assert people.approvers == ("group:ops",)
    assert people.sender_allowed("zed@example.com") and not people.sender_allowed("z@evil.test")
    # Slack's directory completes a person known by one of id or address.
    people.learn(slack="U_BOB", email="bob@example.com", name="Bob B")
    assert people.find("U_BOB") is not None and people.find("U_BOB").id == "bob"


@pytest.mark.parametrize(
    "text",
    ["[people.ann\n", '[people]\nann = "x"\n', "[people.ann]\nemail = [1]\n", "people = 3\n"],
)
def test_a_broken_people_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "people.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="people file"):
        People.load(path)
