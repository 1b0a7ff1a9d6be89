"""Rendering: Jinja2 templates under templates/<channel>/, editor text passed in as data.

Editor text is never template source: it only ever arrives as a variable, and each format
escapes it (HTML and XML autoescape; ``|md`` for markdown). StrictUndefined turns a typo
in a template into an error instead of an empty string.

    >>> render("webhook/text.j2", notice_context(notice, published_at))  # doctest: +SKIP
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from bot.model import UNPRINTABLE
from bot.settings import TEMPLATES

if TYPE_CHECKING:
    from jinja2 import Environment

    from bot.model import Change, Notice
    from bot.receipts import Receipt
    from channels.fit import Form

# Only what can change the meaning of editor text gets a backslash, so ordinary Chinese text, dates
# (2026-11-27), decimals (10.5米), ranges (5~10) and mentions of @all stay as written: neither DingTalk nor
# WeCom documents backslash escapes, and a reader may see every one (the widely used
# prometheus-webhook-dingtalk escapes only _ * and `). Escaped (CommonMark, https://spec.commonmark.org/):
# - anywhere: emphasis and code (* _ `), link and image brackets ([ ]), strikethrough (~~), a backslash
#   before punctuation (it would escape it), an HTML tag, autolink or WeCom mention start (< before a letter,
#   / ! ? or @) and an entity (&name;);
# - at a line's start: a heading (#), a quote (>), a list item (- + or 1. followed by a space), a setext
#   underline or thematic break (a line of = or -).
# An @ before a name becomes a full-width ＠ (as on Weibo, see plain_inert): it reads the same, and no
# client can take "@all" or "@13800000000" for a mention, whatever it does with backslashes.
_MARKDOWN_INLINE = re.compile(r"[*_`\[\]]|~(?=~)|(?<=~)~|\\(?=[!-/:-@\[-`{-~])|<(?=[A-Za-z/!?@])|&(?=#?\w+;)")
_MENTION = re.compile(r"@(?=\w)")
_MARKDOWN_LINE_START = re.compile(r"^([ \t]{0,3})(#|>|[-+](?=[ \t]|$)|\d{1,9}(?=[.)](?:[ \t]|$))|=+[ \t]*$|-+[ \t]*$)",
                                  re.MULTILINE)


def markdown_escape(value: object) -> str:
    r"""Make editor text inert in markdown (no emphasis, links, headings, lists, HTML or <@mentions>) with as few
    backslashes as that takes.

    >>> print(markdown_escape("10.5米 2026-11-27 @all *重要* [点我](http://x)"))
    10.5米 2026-11-27 ＠all \*重要\* \[点我\](http://x)
    """
    text = _MARKDOWN_INLINE.sub(lambda m: "\\" + m.group(), _MENTION.sub("＠", str(value)))
    return _MARKDOWN_LINE_START.sub(_escape_line_start, text)


def _escape_line_start(match: re.Match[str]) -> str:
    indent, marker = match.group(1), match.group(2)
    if marker[0].isdigit():  # "1. " is a list item; escape its dot, which follows the digits
        return f"{indent}{marker}\\"
    return f"{indent}\\{marker}"


def markdown_url(value: object) -> str:
    """A URL safe inside markdown's ``[text](url)``: parentheses, spaces and angle brackets percent-encoded."""
    return str(value).translate({ord(c): f"%{ord(c):02X}" for c in "()<> \\`*_[]"})


def plain_inert(value: object) -> str:
    """Plain text that platforms still parse (Weibo's ``@name`` and ``#topic#``) made inert with full-width signs."""
    return str(value).replace("@", "＠").replace("#", "＃")


@cache
def environment() -> Environment:
    # here, not at the top: the CLI's read commands load the channels but never render
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html", "xml", "html.j2", "xml.j2"), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["md"] = markdown_escape
    env.filters["md_url"] = markdown_url
    env.filters["plain"] = plain_inert
    env.filters["quoted"] = quoted
    env.filters["sentence"] = sentence
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context).strip()


def notice_context(notice: Notice, published_at: datetime, change: Change | None = None,
                   receipt: Receipt | None = None) -> dict[str, Any]:
    """What every template may use. All of it is data. ``change``: the notice goes out as a correction (更正:
    ``correction`` says from which version, why and what changed) or as its retraction (撤回: ``retraction``).
    ``receipt``: the post carries a receipt link (``receipt_url``, 确认已转载), and for a reminder (提醒)
    ``remind_by``, the window's end in Chongqing time."""
    return change_context(change) | receipt_context(receipt) | {
        "ref": notice.ref,
        "title": notice.title,
        "rumour": notice.rumour,
        "truth": notice.truth,
        "verdict": notice.verdict.value,
        "verdict_label": notice.verdict.label,
        "verdict_sentence": notice.verdict.sentence,
        "authority": notice.authority,
        "regions": list(notice.regions),
        "citywide": notice.citywide,
        "category": notice.category,
        "urgent": notice.urgency.value == "urgent",
        "sources": [{"title": s.title, "url": str(s.url)} for s in notice.sources],
        "published_at": published_at,
    }


def receipt_context(receipt: Receipt | None) -> dict[str, Any]:
    """``receipt_url`` and ``remind_by`` for the templates (None and None without a receipt)."""
    if receipt is None:
        return {"receipt_url": None, "remind_by": None}
    from bot.regions import CHONGQING

    remind_by = receipt.remind_by.astimezone(CHONGQING).strftime("%m月%d日 %H:%M") if receipt.remind_by else None
    return {"receipt_url": receipt.url, "remind_by": remind_by}


def change_context(change: Change | None) -> dict[str, Any]:
    """``correction`` and ``retraction`` for the templates: None for an ordinary post."""
    correction = retraction = None
    if change is not None and change.kind == "correction":
        correction = {"version": change.version, "previous_version": change.previous_version,
                      "note": printable(change.note), "changed": "、".join(change.changed_labels) or "内容"}
    elif change is not None:
        retraction = {"reason": printable(change.note)}
    return {"correction": correction, "retraction": retraction, "word": change_word(change)}


def change_word(change: Change | None) -> str:
    """The bracketed word a title starts with: 【辟谣】, 【更正】 or 【撤回】."""
    return {None: "【辟谣】", "correction": "【更正】", "retraction": "【撤回】"}[change and change.kind]


def printable(text: str) -> str:
    """Editor text without control, bidi or invisible characters (intake refuses them; older stored text may
    hold some); CR LF -> LF."""
    return UNPRINTABLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


_SENTENCE_END = ("。", "！", "？", "!", "?", "…", "……", ".")


def quoted(text: object) -> str:
    """A quoted claim as one sentence: “…撤离。” when it already ends one, “…撤离”。 when not (never “…。”。)."""
    text = str(text)
    return f"“{text}”" if text.rstrip().endswith(_SENTENCE_END) else f"“{text}”。"


def sentence(text: object) -> str:
    """Text as one sentence: a full stop added unless it already ends one (a title before the body)."""
    text = str(text)
    return text if not text or text.rstrip().endswith(_SENTENCE_END) else f"{text}。"


def form_context(notice: Notice, published_at: datetime, form: Form, change: Change | None = None,
                 receipt: Receipt | None = None) -> dict[str, Any]:
    """``notice_context`` showing a (possibly cut) form of the notice; see channels.fit."""
    return notice_context(notice, published_at, change, receipt) | {
        "title": " ".join(printable(form.title).split()),  # a title is one line in every format
        "authority": printable(form.authority),
        "rumour": printable(form.rumour),
        "truth": printable(form.truth),
        "sources": list(form.sources),
        "cut": form.cut,
        "read_more": form.read_more,
    }
