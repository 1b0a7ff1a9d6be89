"""Length, counted the platform's way, and overflow handled by rendering a shorter form.

Every channel renders through ``fit``: the full form if it fits; otherwise the same template
with the editor's text cut (never the markup around it), in this order of sacrifice: the source
list, the rumour (down to its lead sentence, then nothing), the truth past its lead sentence,
the truth lead, and only as a last resort the title and authority. Cuts fall on a sentence end when that keeps
most of the room, else on a character boundary, and never split a surrogate pair, an emoji
sequence or a combining mark. Because text is cut before the template escapes it, a cut can never
fall inside a markdown link, an HTML tag or an escape. A cut form says so and links to the full
text (``read_more``).

    >>> text, form = fit(lambda form: "【辟谣】" + form.truth, notice, [Limit(4096, "bytes")], None)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bot.model import Notice

Unit = Literal["bytes", "chars", "weibo"]
ELLIPSIS = "…"
SENTENCE_END = re.compile(r"[。！？!?；…\n]+[”’」』）)]*")


# Weibo's count (statuses/share, https://open.weibo.com/wiki/2/statuses/share: at most 140 characters): two
# ASCII characters count as one, a link as WEIBO_URL_LENGTH whatever its length, and anything else by its UTF-16
# units (a CJK character one, an emoji two), rounded up. Reverse-engineered from Weibo's web client (the
# figure 10 for a link is that work's, not a documented one).
WEIBO_URL = re.compile(r"https?://[!-~]+")
WEIBO_URL_LENGTH = 10


def weibo_length(text: str) -> int:
    """``text``'s length as Weibo counts it.

    >>> weibo_length("辟谣ab👍 https://piyao.cq.example/a-very-long-ref")
    16
    """
    halves = 0
    for index, part in enumerate(WEIBO_URL.split(text)):
        if index:
            halves += 2 * WEIBO_URL_LENGTH
        ascii_count = sum(1 for char in part if char < "\x80")
        halves += ascii_count + 2 * (len(part.encode("utf-16-le")) // 2 - ascii_count)
    return -(-halves // 2)


@dataclass(frozen=True)
class Limit:
    """At most ``size`` units, counted as the platform counts: UTF-8 bytes, characters (code points), or
    Weibo's count (``weibo_length``).

    >>> Limit(4, "bytes").measure("重庆")
    6
    """

    size: int
    unit: Unit

    def measure(self, text: str) -> int:
        if self.unit == "bytes":
            return len(text.encode("utf-8"))
        return weibo_length(text) if self.unit == "weibo" else len(text)

    def __str__(self) -> str:
        return f"{self.size:,} " + {"bytes": "UTF-8 bytes", "chars": "characters", "weibo": "characters as Weibo "
                                    "counts them"}[self.unit]


@dataclass(frozen=True)
class Form:
    """What a template shows of a notice: the editor's text, possibly cut, and whether it was."""

    title: str
    authority: str
    rumour: str
    truth: str
    sources: tuple[dict[str, str], ...]
    cut: bool = False
    read_more: str | None = None


def fits(text: str, limits: Sequence[Limit]) -> bool:
    return all(limit.measure(text) <= limit.size for limit in limits)


class DoesNotFit(ValueError):
    """Even the shortest form is over the limit: the template's own text is too long."""


def fit(
    render: Callable[[Form], str], notice: Notice, limits: Sequence[Limit], read_more: str | None
) -> tuple[str, Form]:
    """The fullest rendering of ``notice`` within ``limits`` and the form it shows (see the module docstring).

    ``render`` returns exactly what the platform measures (a JSON body, a markdown content, a status).
    """
    sources = tuple({"title": s.title, "url": str(s.url)} for s in notice.sources)
    full = Form(notice.title, notice.authority, notice.rumour, notice.truth, sources, read_more=read_more)
    text = render(full)
    if fits(text, limits):
        return text, full
    short = replace(full, sources=(), cut=True)
    truth_lead = lead(notice.truth)
    for rumour in (notice.rumour, lead(notice.rumour), ""):
        form = replace(short, rumour=rumour)
        best = _longest(lambda n, f=form: replace(f, truth=cut(notice.truth, n)), len(notice.truth), render, limits)
        if best is not None and (best[0] >= len(truth_lead) or rumour == ""):
            return best[1], best[2]
    bare = replace(short, rumour="", truth="")  # a 140-character post may not hold a long title and authority
    # the authority gives way first; the title is cut only if even no authority leaves it too little room
    best = _longest(lambda n: replace(bare, authority=cut(notice.authority, n, sentence=False)),
                    len(notice.authority), render, limits)
    if best is not None:
        return best[1], best[2]
    upto = max(len(notice.title), len(notice.authority))
    best = _longest(lambda n: replace(bare, title=cut(notice.title, n, sentence=False),
                                      authority=cut(notice.authority, n, sentence=False)), upto, render, limits)
    if best is None:
        raise DoesNotFit(f"even the title-only form is over {', '.join(map(str, limits))}")
    return best[1], best[2]


def _longest(
    form: Callable[[int], Form], upto: int, render: Callable[[Form], str], limits: Sequence[Limit]
) -> tuple[int, str, Form] | None:
    """The largest n in [0, upto] whose form's rendering fits (binary search: size grows with n)."""
    low, high, found = 0, upto, None
    while low <= high:
        middle = (low + high) // 2
        candidate = form(middle)
        text = render(candidate)
        if fits(text, limits):
            found, low = (middle, text, candidate), middle + 1
        else:
            high = middle - 1
    return found


def cut_to(text: str, limits: Sequence[Limit], render: Callable[[str], str] = str) -> str:
    """The longest cut of ``text`` whose ``render`` fits ``limits`` (operator alerts, titles).

    >>> cut_to("水位平稳。请勿信谣。", (Limit(15, "bytes"),))
    '水位平稳。'
    """
    low, high, best = 0, len(text), ""
    while low <= high:
        middle = (low + high) // 2
        candidate = cut(text, middle)
        if fits(render(candidate), limits):
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def lead(text: str) -> str:
    """The first sentence of ``text`` (all of it when it has no sentence end)."""
    match = SENTENCE_END.search(text)
    return text[: match.end()].rstrip() if match else text


def cut(text: str, room: int, sentence: bool = True) -> str:
    """``text`` in at most ``room`` characters: whole; up to a sentence end if that keeps most of it (and
    ``sentence``); else cut on a character boundary with an ellipsis.

    >>> cut("水位平稳。请勿信谣。", 6)
    '水位平稳。'
    >>> cut("👨‍👩‍👧水位", 3)
    '…'
    """
    if len(text) <= room:
        return text
    if room <= 0:
        return ""
    ends = [m.end() for m in SENTENCE_END.finditer(text, 0, room + 1) if m.end() <= room]
    if sentence and ends and ends[-1] >= room * 0.6:
        return text[: ends[-1]].rstrip()
    return text[: safe_boundary(text, room - 1)].rstrip() + ELLIPSIS


def safe_boundary(text: str, index: int) -> int:
    """The largest position <= ``index`` that does not split a character as people see it."""
    index = max(0, min(index, len(text)))
    while 0 < index < len(text) and _joins(text[index - 1], text[index]):
        index -= 1
    if 0 < index < len(text) and _regional(text[index]):  # a flag is two regional indicators
        run = index
        while run > 0 and _regional(text[run - 1]):
            run -= 1
        if (index - run) % 2:
            index -= 1
    return index


def _joins(before: str, after: str) -> bool:
    return (
        before == "\u200d" or after == "\u200d"  # zero-width joiner sequences
        or unicodedata.combining(after) != 0
        or "\ufe00" <= after <= "\ufe0f" or "\U000e0100" <= after <= "\U000e01ef"  # variation selectors
        or "\U0001f3fb" <= after <= "\U0001f3ff"  # skin tones
        or "\U000e0020" <= after <= "\U000e007f"  # tag sequences (subdivision flags)
        or after == "\u20e3"  # keycap
        or "\ud800" <= before <= "\udbff"  # a lone high surrogate (text decoded with surrogatepass)
    )


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def read_more(notice: Notice, options: Mapping[str, Any]) -> str | None:
    """Where the full text is: the outlet's ``read_more_url`` (``{ref}`` filled in), else the first source."""
    if template := options.get("read_more_url"):
        return str(template).replace("{ref}", notice.ref)
    return str(notice.sources[0].url) if notice.sources else None
