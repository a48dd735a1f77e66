"""Reading mail and reply addresses: pure functions, no servers."""

from __future__ import annotations

import email
import email.policy

import pytest

from bot import UsageError
from bot.notices import read_decision
from channels.email import ReplyTokens, parse_mail
from channels.email.compose import build_mail, reply_subject
from channels.email.parse import auto_reply_reason, dmarc_failed, new_text


def msg(headers: str, body: str = "hi") -> email.message.Message:
    return email.message_from_string(headers + "\n\n" + body, policy=email.policy.default)


@pytest.mark.parametrize(
    "headers, return_path, reason",
    [
        ("Auto-Submitted: auto-replied", "a@x", "Auto-Submitted"),
        ("Auto-Submitted: auto-generated", "a@x", "Auto-Submitted"),
        ("Precedence: bulk", "a@x", "Precedence"),
        ("Precedence: list", "a@x", "Precedence"),
        ("X-Autoreply: yes", "a@x", "X-Autoreply"),
        ("X-Autorespond: on", "a@x", "X-Autorespond"),
        ("Content-Type: multipart/report; report-type=delivery-status", "a@x", "report"),
        ("From: ann@example.com", "", "empty return path"),
        ("From: ann@example.com", "<>", "empty return path"),
        ("From: MAILER-DAEMON@example.com", "x@y", "mailer-daemon"),
    ],
)
def test_automatic_mail_is_recognised(headers: str, return_path: str, reason: str) -> None:
    found = auto_reply_reason(msg(headers), return_path)
    assert found is not None and reason in found


def test_a_person_is_not_automatic() -> None:
    assert (
        auto_reply_reason(msg("From: ann@example.com\nAuto-Submitted: no"), "ann@example.com")
        is None
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        ("1.4.2\n\nOn Mon, Nov 30, 2026 at 6:13 AM bot <b@x> wrote:\n> Which?\n", "1.4.2"),
        ("yes\n\n-----Original Message-----\nFrom: bot\nSent: Monday\n\nold", "yes"),
        ("ok\n\nSent from my iPhone\n\n> On 30 Nov 2026, at 06:13, bot wrote:\n> old", "ok"),
        ("sure\n\n-- \nAnn\nOps", "sure"),
        ("two lines\nof answer\n\n> quoted\n> more", "two lines\nof answer"),
        ("- first\n- second", "- first\n- second"),
    ],
)
def test_new_text(body: str, expected: str) -> None:
    assert new_text(body) == expected


def test_missing_message_id_is_made_from_the_content() -> None:
    a = parse_mail(b"From: a@x\r\n\r\nhello")
    b = parse_mail(b"From: a@x\r\n\r\nhello")
    assert a.message_id == b.message_id and a.message_id.startswith("<sha256.")


def test_reply_tokens() -> None:
    tokens = ReplyTokens("secret", "Bot@Example.com")
    address = tokens.reply_address("abc123", 4, "Ann@Example.com")
    assert address.startswith("bot+abc123.4.") and address.endswith("@example.com")
    assert len(address.partition("@")[0]) <= 64
    reply = tokens.read(address.upper())  # some servers change case
    assert reply is not None and (reply.thread_id, reply.seq) == ("abc123", 4)
    assert tokens.signed_for(reply, "ann@example.com")
    # Bound to the recipient, the thread and the call it was sent for.
    assert not tokens.signed_for(reply, "lead@example.com")
    assert not tokens.signed_for(reply, "zoë@example.com")  # no TypeError
    moved = tokens.read(address.replace("abc123.4", "abc124.4"))
    assert moved is not None and not tokens.signed_for(moved, "ann@example.com")
    later = tokens.read(address.replace("abc123.4", "abc123.5"))
    assert later is not None and not tokens.signed_for(later, "ann@example.com")
    assert not ReplyTokens("other", "bot@example.com").signed_for(reply, "ann@example.com")
    assert tokens.read("bot+abc123@example.com") is None
    assert tokens.read("bot+abc123.4.é@example.com") is None
    assert tokens.is_plain("BOT@example.com") and not tokens.is_plain("ann@example.com")


def test_message_ids_are_keyed_by_the_secret_and_stable() -> None:
    a = ReplyTokens("secret", "bot@example.com")
    mid = a.message_id("abc123", 4, "ann@example.com")
    assert mid == a.message_id("abc123", 4, "ann@example.com")  # a resend is the same mail
    assert mid != ReplyTokens("other", "bot@example.com").message_id("abc123", 4, "ann@example.com")
    assert mid != a.message_id("abc123", 4, "lead@example.com")
    assert mid != "<tb.abc123.4@example.com>"


def test_a_long_bot_address_is_refused_at_start() -> None:
    with pytest.raises(UsageError):
        ReplyTokens("secret", "a-very-long-name-for-the-ops-bot@example.com")


def test_a_subject_with_line_breaks_is_folded() -> None:
    raw = (
        b"From: ann@example.com\r\nSubject: =?utf-8?q?deploy=0D=0ABcc=3A_x=40evil?=\r\n"
        b"Message-ID: <crlf@x>\r\n\r\nhi"
    )
    mail = parse_mail(raw)
    assert mail.subject == "deploy Bcc: x@evil"
    # A subject stored before it was cleaned is cleaned when a mail is written.
    assert reply_subject("deploy\r\nBcc: x@evil\x00") == "Re: deploy Bcc: x@evil"
    msg = build_mail(
        sender="bot@example.com",
        reply_to="bot+a.1.b@example.com",
        to=["ann@example.com"],
        subject=reply_subject("a\r\nb"),
        text="hi",
        message_id="<m@x>",
        in_reply_to=None,
        references=[],
    )
    assert b"Subject: Re: a b\n" in msg.as_bytes()


def _with_results(*values: str) -> bytes:
    headers = "".join(f"Authentication-Results: {v}\r\n" for v in values)
    return (f"From: Ann <ann@example.com>\r\n{headers}Message-ID: <a@x>\r\n\r\nhi").encode()


@pytest.mark.parametrize(
    "values, failed",
    [
        (["mx.example.net; dmarc=fail (p=reject) header.from=example.com"], True),
        (["MX.example.net 1; spf=pass; dmarc=permerror header.from=example.com"], True),
        (["mx.example.net; dmarc=fail header.from=other.org"], False),
        (["mx.example.net; dmarc=pass header.from=example.com"], False),
        (["evil.example; dmarc=fail header.from=example.com"], False),  # not our server
        (["mx.example.net; none"], False),
        ([], False),
    ],
)
def test_dmarc_failed(values: list[str], failed: bool) -> None:
    assert dmarc_failed(parse_mail(_with_results(*values)), "mx.example.net") is failed


@pytest.mark.parametrize(
    "text, decision",
    [
        ("approve", (True, None)),
        ("Yes, go ahead", (True, "go ahead")),
        ("LGTM", (True, None)),
        ("reject: not today", (False, "not today")),
        ("No\n\nthe migration is not done", (False, "the migration is not done")),
        ("what is this?", None),
        ("", None),
    ],
)
def test_decisions(text: str, decision: tuple[bool, str | None] | None) -> None:
    assert read_decision(text) == decision


def test_a_sender_that_is_not_an_address_is_none() -> None:
    assert parse_mail(b"From: =?utf-8?q?broken=\r\n\r\nbody").sender == ""
    assert parse_mail(b"From: Ann <ann@example.com>\r\n\r\nbody").sender == "ann@example.com"
