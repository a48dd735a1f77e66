"""Reading mail and reply addresses: pure functions, no servers."""

from __future__ import annotations

import email
import email.policy

import pytest

from channels.email import ReplyTokens, parse_mail
from channels.email.channel import _decision
from channels.email.parse import auto_reply_reason, new_text


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
    address = tokens.reply_address("abc123")
    assert address.startswith("bot+abc123.") and address.endswith("@example.com")
    assert tokens.thread_of(address) == "abc123"
    assert tokens.thread_of(address.upper()) == "abc123"  # some servers change case
    assert tokens.thread_of(address.replace("abc123", "abc124")) is None
    assert ReplyTokens("other", "bot@example.com").thread_of(address) is None
    assert tokens.thread_of("bot+abc123@example.com") is None
    assert tokens.is_ours("BOT@example.com") and not tokens.is_ours("ann@example.com")


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
    assert _decision(text) == decision


def test_a_sender_that_is_not_an_address_is_none() -> None:
    assert parse_mail(b"From: =?utf-8?q?broken=\r\n\r\nbody").sender == ""
    assert parse_mail(b"From: Ann <ann@example.com>\r\n\r\nbody").sender == "ann@example.com"
