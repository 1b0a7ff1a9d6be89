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

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from bot.model import UNPRINTABLE
from bot.settings import TEMPLATES

if TYPE_CHECKING:
    from bot.model import Notice
    from channels.fit import Form

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~@])")


def markdown_escape(value: object) -> str:
    """Make editor text inert in markdown: no links, emphasis, headings, HTML or @-mentions."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(value))


def markdown_url(value: object) -> str:
    """A URL safe inside markdown's ``[text](url)``: parentheses, spaces and angle brackets percent-encoded."""
    return str(value).translate({ord(c): f"%{ord(c):02X}" for c in "()<> \\`*_[]"})


def plain_inert(value: object) -> str:
    """Plain text that platforms still parse (Weibo's ``@name`` and ``#topic#``) made inert with full-width signs."""
    return str(value).replace("@", "＠").replace("#", "＃")


@cache
def environment() -> Environment:
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
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context).strip()


def notice_context(notice: Notice, published_at: datetime) -> dict[str, Any]:
    """What every template may use. All of it is data."""
    return {
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


def printable(text: str) -> str:
    """Editor text without control, bidi or invisible characters (intake refuses them; older stored text may
    hold some); CR LF -> LF."""
    return UNPRINTABLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


_SENTENCE_END = ("。", "！", "？", "!", "?", "…", "……", ".")


def quoted(text: object) -> str:
    """A quoted claim as one sentence: “…撤离。” when it already ends one, “…撤离”。 when not (never “…。”。)."""
    text = str(text)
    return f"“{text}”" if text.rstrip().endswith(_SENTENCE_END) else f"“{text}”。"


def form_context(notice: Notice, published_at: datetime, form: Form) -> dict[str, Any]:
    """``notice_context`` showing a (possibly cut) form of the notice; see channels.fit."""
    return notice_context(notice, published_at) | {
        "title": " ".join(printable(form.title).split()),  # a title is one line in every format
        "authority": printable(form.authority),
        "rumour": printable(form.rumour),
        "truth": printable(form.truth),
        "sources": list(form.sources),
        "cut": form.cut,
        "read_more": form.read_more,
    }
