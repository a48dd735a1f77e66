"""What threadbot posts in Slack: mrkdwn text and Block Kit blocks.

Slack has limits: a section's text is at most 3,000 characters, a message at
most 50 blocks, a button label 75. Long answers are split to fit.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from markdown_to_mrkdwn import SlackMarkdownConverter

__all__ = [
    "SECTION_LIMIT",
    "approval_blocks",
    "context",
    "date",
    "decided_blocks",
    "escape",
    "question_blocks",
    "reject_modal",
    "respond_modal",
    "split_mrkdwn",
    "to_mrkdwn",
]

SECTION_LIMIT = 3000
SECTIONS_PER_MESSAGE = 10
"""Sections per message: far under the 50-block cap, so a message stays readable."""
BUTTON_LIMIT = 75

Block = dict[str, Any]

_converter = SlackMarkdownConverter()
_QUOTE_MARK = re.compile(r"^(\s*)&gt;", re.MULTILINE)
_LINK = re.compile(r"<([^|>]+)\|([^>]*)>")


def escape(text: str) -> str:
    """Slack's three control characters, escaped as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """The model's Markdown as Slack mrkdwn: bold, italics, strikethrough,
    links, headings, lists and code converted; `&`, `<` and `>` escaped
    (a `>` that starts a quote stays a quote). A link shows where it goes:
    `label (<url>)`, so a label that looks like another address hides
    nothing."""
    escaped = _QUOTE_MARK.sub(r"\1>", escape(markdown))
    converted: str = _converter.convert(escaped)
    return _LINK.sub(_shown_link, converted).strip()


def _shown_link(link: re.Match[str]) -> str:
    url, label = link.group(1), link.group(2).strip()
    return f"<{url}>" if label in ("", url) else f"{label} (<{url}>)"


def split_mrkdwn(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Cut text into pieces of at most `limit` characters, at paragraph, then
    line, then word boundaries; a code block cut in two is closed and reopened."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit - 4]  # room to close a code fence
        cut = max(window.rfind("\n\n"), 0)
        if cut < limit // 2:
            cut = window.rfind("\n")
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = len(window)
        piece, rest = rest[:cut], rest[cut:].lstrip("\n ")
        if piece.count("```") % 2 == 1:
            piece += "\n```"
            rest = "```\n" + rest
        pieces.append(piece)
    if rest.strip():
        pieces.append(rest)
    return pieces


def answer_messages(markdown: str) -> list[tuple[str, list[Block]]]:
    """An answer as one or more messages: (fallback text, blocks) each."""
    sections = split_mrkdwn(to_mrkdwn(markdown) or "…")
    messages = []
    for i in range(0, len(sections), SECTIONS_PER_MESSAGE):
        group = sections[i : i + SECTIONS_PER_MESSAGE]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in group]
        messages.append((group[0][:SECTION_LIMIT], blocks))
    return messages


def _label(text: str) -> str:
    return text if len(text) <= BUTTON_LIMIT else text[: BUTTON_LIMIT - 1] + "…"


def action_value(thread_id: str, call_id: str, **extra: Any) -> str:
    return json.dumps({"t": thread_id, "c": call_id, **extra}, separators=(",", ":"))


def date(at: float) -> str:
    """A time as Slack shows it in each reader's own time zone (the
    fallback, for clients that cannot, in UTC)."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
    return f"<!date^{int(at)}^{{date_short_pretty}} {{time}}|{fallback}>"


def context(*lines: str) -> Block:
    """Small grey lines under a post."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in lines if t]}


def _cancel_button(value: str) -> Block:
    return {
        "type": "button",
        "action_id": "tb_cancel",
        "style": "danger",
        "text": {"type": "plain_text", "text": "Cancel thread"},
        "value": value,
        "confirm": {
            "title": {"type": "plain_text", "text": "Cancel the thread?"},
            "text": {
                "type": "plain_text",
                "text": "The agent stops here: nothing it waits for is done.",
            },
            "confirm": {"type": "plain_text", "text": "Cancel thread"},
            "deny": {"type": "plain_text", "text": "Keep it"},
            "style": "danger",
        },
    }


def question_blocks(
    thread_id: str,
    call_id: str,
    question: str,
    options: list[str],
    *,
    before: list[str] | None = None,
    notes: list[str] | None = None,
) -> list[Block]:
    """A question, its options as buttons, and a way to cancel the thread.
    `before`: lines that say why it is here (a reminder, where it started);
    `notes`: lines under it (its deadline)."""
    text = split_mrkdwn(to_mrkdwn(question) or "?")[0]
    blocks: list[Block] = [context(*before)] if before else []
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    value = action_value(thread_id, call_id)
    if options:
        buttons = [
            {
                "type": "button",
                "action_id": f"tb_option_{i}",
                "text": {"type": "plain_text", "text": _label(option)},
                "value": action_value(thread_id, call_id, i=i),
            }
            for i, option in enumerate(options[:25])
        ]
        blocks.append({"type": "actions", "block_id": "tb_options", "elements": buttons})
        hint = "Pick one, or reply in this thread."
    else:
        hint = "Reply in this thread to answer."
    blocks.append({"type": "actions", "block_id": "tb_thread", "elements": [_cancel_button(value)]})
    blocks.append(context(hint, *(notes or ())))
    return blocks


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 500 else text[:499] + "…"


def approval_text(tool: str, arguments: dict[str, Any]) -> str:
    lines = [f"*Approval needed:* `{escape(tool)}`"]
    lines += [f"• *{escape(k)}:* `{escape(_value(v))}`" for k, v in arguments.items()]
    return split_mrkdwn("\n".join(lines))[0]


def approval_blocks(
    thread_id: str,
    call_id: str,
    tool: str,
    arguments: dict[str, Any],
    who_may: str,
    *,
    before: list[str] | None = None,
    notes: list[str] | None = None,
) -> list[Block]:
    """An approval request: Approve, Reject, Reply instead, Cancel thread.
    `before` and `notes` as for `question_blocks`."""
    value = action_value(thread_id, call_id)
    blocks: list[Block] = [context(*before)] if before else []
    blocks += [
        {"type": "section", "text": {"type": "mrkdwn", "text": approval_text(tool, arguments)}},
        {
            "type": "actions",
            "block_id": "tb_approval",
            "elements": [
                {
                    "type": "button",
                    "action_id": "tb_approve",
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": "tb_reject",
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Reject"},
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": "tb_respond",
                    "text": {"type": "plain_text", "text": "Reply instead"},
                    "value": value,
                },
                _cancel_button(value),
            ],
        },
        context(who_may, *(notes or ())),
    ]
    return blocks


def decided_blocks(blocks: list[Block], outcome: str) -> list[Block]:
    """The same message once decided or answered: buttons gone, outcome shown."""
    kept = [b for b in blocks if b.get("type") not in ("actions", "context")]
    return [*kept, {"type": "context", "elements": [{"type": "mrkdwn", "text": outcome}]}]


def _text_modal(
    callback_id: str, meta: dict[str, str], title: str, label: str, placeholder: str
) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": title},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": _label(label)},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "text",
                    "multiline": True,
                    "placeholder": {"type": "plain_text", "text": placeholder},
                },
            }
        ],
    }


def reject_modal(thread_id: str, call_id: str, channel: str, ts: str, tool: str) -> dict[str, Any]:
    meta = {"t": thread_id, "c": call_id, "ch": channel, "ts": ts}
    return _text_modal(
        "tb_reject_modal", meta, "Reject", f"Why reject {tool}?", "The agent reads this."
    )


def respond_modal(thread_id: str, call_id: str, channel: str, ts: str, tool: str) -> dict[str, Any]:
    """A reply instead of a decision: the call does not run, the agent reads it."""
    meta = {"t": thread_id, "c": call_id, "ch": channel, "ts": ts}
    return _text_modal(
        "tb_respond_modal",
        meta,
        "Reply instead",
        f"What should the agent do instead of {tool}?",
        f"{tool} does not run; the agent reads this.",
    )
