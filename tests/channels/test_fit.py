"""The shared length rule: every template at its limit is sent whole, at limit + 1 it is sent shorter.

One cut helper serves every channel (channels/fit.py); these tests run each template against its
platform's loopback fake, which enforces the platform's own limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.model import FIELD_LABELS, Change, Notice
from bot.render import change_word, markdown_escape, plain_inert, printable
from channels import CHANNELS, Rendered
from channels.feishu import SIGNATURE_PLACEHOLDER
from channels.fit import cut, lead, safe_boundary, weibo_length
from tests.channels.conftest import Platforms, render_for, send
from tests.conftest import notice_data


def _signed_size(rendered: Rendered) -> int:
    body = SIGNATURE_PLACEHOLDER | json.loads(rendered.body)
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


# template -> (channel, options, the size the platform counts, its limit)
TEMPLATES: dict[str, tuple[str, dict[str, Any], Callable[[Rendered], int], int]] = {
    "dingtalk markdown": ("dingtalk", {}, lambda r: len(r.body), 20_000),
    "dingtalk actionCard": ("dingtalk", {"msgtype": "actionCard"}, lambda r: len(r.body), 20_000),
    "wecom markdown": ("wecom", {}, lambda r: len(r.text.encode()), 4096),
    "wecom news": ("wecom", {"msgtype": "news"}, lambda r: len(r.text.encode()), 512),
    "feishu post": ("feishu", {}, _signed_size, 20_000),
    "feishu interactive": ("feishu", {"msg_type": "interactive"}, _signed_size, 20_000),
    "lark post": ("lark", {}, _signed_size, 20_000),
    "weibo status": ("weibo", {}, lambda r: weibo_length(r.text), 140),
    "wechat_mp article": ("wechat_mp", {}, lambda r: len(r.text), 19_999),
}
SOURCE = {"title": "重庆市水利局水情通报", "url": "https://slj.cq.example/notice/1"}


def _notice_of_size(outlet: Any, measure: Callable[[Rendered], int], size: int, **fields: Any) -> Notice:
    """A notice whose full rendering measures exactly ``size``: padded with 字 (3 bytes or 1 char), 'a', and
    when the text fields are full (WeChat's 20,000 characters), sources with long URLs."""
    base = {"ref": "cq-limit", "title": "网传“长江水位暴涨”系谣言", "rumour": "水位暴涨。",
            "truth": "经核实，水位平稳。", "sources": [SOURCE]} | fields

    def size_of(data: dict[str, Any]) -> int:
        return measure(render_for(outlet, Notice.model_validate(notice_data(**data))))

    per_char = size_of(base | {"truth": base["truth"] + "字"}) - size_of(base)
    while size - size_of(base) > per_char * 6500:
        base = base | {"sources": [*base["sources"], {"title": "来源", "url": "https://slj.cq.example/" + "a" * 1900}]}
    chars, ascii_ = divmod(size - size_of(base), per_char)
    in_truth = min(chars, 4900)
    padded = base | {"truth": base["truth"] + "字" * in_truth + "a" * ascii_,
                     "rumour": base["rumour"] + "字" * (chars - in_truth)}
    assert size_of(padded) == size
    return Notice.model_validate(notice_data(**padded))


@pytest.mark.parametrize("template", TEMPLATES)
async def test_a_notice_at_the_limit_is_sent_whole_and_at_limit_plus_one_is_sent_shorter(
    platforms: Platforms, template: str
) -> None:
    channel, options, measure, limit = TEMPLATES[template]
    outlet, secret = platforms.outlet(channel, **options)
    fields = {"title": "辟谣"} if channel == "weibo" else {}
    at_limit = _notice_of_size(outlet, measure, limit, **fields)
    whole = render_for(outlet, at_limit)
    assert "已节选" not in whole.text and "…" not in whole.text
    assert (await send(outlet, secret, whole)).result == "delivered"

    over = Notice.model_validate(at_limit.model_dump() | {"truth": at_limit.truth + "a"})
    shorter = render_for(outlet, over)
    assert measure(shorter) <= limit
    assert over.title in shorter.text or over.title in shorter.body.decode()
    if template == "wecom news":  # the card itself opens the full text
        assert json.loads(shorter.body)["news"]["articles"][0]["url"] == SOURCE["url"]
    else:
        assert "阅读全文" in shorter.text + shorter.body.decode()
    if channel not in ("weibo", "wecom"):  # their short forms are one line; the others say they were cut
        assert "已节选" in shorter.text
    assert lead(over.truth)[:20] in shorter.text  # the truth's lead survives the cut
    assert (await send(outlet, secret, shorter)).result == "delivered"


def test_a_cut_prefers_a_sentence_end_and_never_splits_what_a_reader_sees_as_one_character() -> None:
    assert cut("水位平稳。请勿信谣，以官方发布为准。", 8) == "水位平稳。"
    assert cut("水位平稳。请勿信谣，以官方发布为准。", 14) == "水位平稳。请勿信谣，以官方…"
    family = "👨\u200d👩\u200d👧"
    for room in range(1, len(family) + 2):
        text = cut("家" + family + "平安", room)
        assert "\u200d" not in text[-1:] and not text.rstrip("…").endswith(("👨", "👨\u200d👩")), text
    flags = "🇨🇳🇨🇳"
    assert safe_boundary(flags, 3) == 2 and safe_boundary(flags, 1) == 0
    assert cut("e\u0301e\u0301e\u0301", 4) == "e\u0301…"  # a combining accent stays with its letter


# -- the property: random Chinese, emoji and markup-heavy notices, through every channel ------------------

MARKUP = ["<script>alert(1)</script>", "*", "**", "_", "[x](y)", "[阅读全文](javascript:alert(1))", "@all", "＠所有人",
          "{{ 7*7 }}", "{% if %}", "#话题#", "<at user_id=\"all\">", "&amp;", "\\", "`", "\n", "\n\n# ", "> ", "|",
          "😀", "👨‍👩‍👧", "🇨🇳", "é", "\u200d", "。", "！", "？", "；", "“", "”"]
text = st.lists(st.one_of(st.sampled_from(MARKUP), st.text(alphabet=st.characters(min_codepoint=0x4E00,
                                                                                   max_codepoint=0x4FFF), min_size=1,
                                                          max_size=40),
                          # any printable text: intake refuses control, format (bidi, zero-width) and line
                          # separator characters (newlines come from MARKUP)
                          st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs", "Cf", "Zl", "Zp")),
                                  min_size=1, max_size=10)),
                 min_size=1, max_size=200).map("".join)


def _visible(text: str, default: str) -> str:
    """The text, or the default when it has no visible character (intake refuses those)."""
    text = text.strip()
    return text if any(not (c.isspace() or c == "\u200d") for c in text) else default


notices = st.builds(
    lambda title, rumour, truth, authority, sources, urgent: Notice.model_validate(notice_data(
        ref="cq-prop", title=_visible(title[:120], "标题"), rumour=_visible(rumour[:2000], "网传"),
        truth=_visible(truth, "经核实"), authority=_visible(authority[:200], "重庆市"),
        urgency="urgent" if urgent else "normal",
        sources=[{"title": "来源", "url": "https://slj.cq.example/a(b)?c=1&d=<e>"}] if sources else [])),
    text, text, st.lists(text, min_size=1, max_size=8).map("".join).map(lambda t: t[:5000]), text,
    st.booleans(), st.booleans(),
)


class _WellFormed(HTMLParser):
    VOID = {"br", "img", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"


def _balanced_links(markdown: str) -> None:
    """Every unescaped '[' and '(' in the markdown is part of a whole [text](url) link."""
    unescaped = re.sub(r"\\.", "", markdown)
    links = re.sub(r"\[[^\[\]]*\]\([^()\s]*\)", "", unescaped)
    assert not re.search(r"[\[\]]", links), links


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _shows_title(rendered: Rendered, notice: Notice, channel: str, word: str = "【辟谣】") -> bool:
    """The title is there, as the format writes it (escaped for markdown or HTML, inert for Weibo)."""
    title = " ".join(printable(notice.title).split())  # titles are shown on one line, without control characters
    forms = {notice.title, title, markdown_escape(title), escape(title, quote=False), plain_inert(title)}
    haystack = [rendered.text] + ([] if channel == "weibo" else _strings(json.loads(rendered.body)))
    if any(form in text for form in forms for text in haystack):
        return True
    body = json.loads(rendered.body) if channel == "wecom" else {}
    if body.get("msgtype") == "news":
        # a news card's title is at most 128 bytes (WeCom cuts it): a long title's head is kept, whole characters
        shown = body["news"]["articles"][0]["title"]
        head = shown.split(word, 1)[-1].removesuffix("…")
        return len(shown.encode()) <= 128 and head != "" and any(form.startswith(head) for form in forms)
    # Weibo: 140 characters cannot always hold a 120-character title and the link; its head is kept, cut.
    head = rendered.text.split(word, 1)[-1].split("…", 1)[0]
    if word == "【撤回】":
        head = rendered.text.split("此前发布的《", 1)[-1].split("…", 1)[0]
    return channel == "weibo" and "…" in rendered.text and plain_inert(title).startswith(head) and head != ""


changes = st.one_of(
    st.none(),
    st.builds(lambda note, fields: Change(kind="correction", version=2, previous_version=1, previous_message_id="m",
                                          note=_visible(note[:2000], "更正"), changed=tuple(fields),
                                          at=datetime(2026, 11, 28, tzinfo=UTC)),
              text, st.lists(st.sampled_from(sorted(FIELD_LABELS)), unique=True)),
    st.builds(lambda note: Change(kind="retraction", version=1, previous_version=1, previous_message_id="m",
                                  note=_visible(note[:2000], "撤回"), at=datetime(2026, 11, 28, tzinfo=UTC)), text),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(notice=notices, change=changes)
def test_every_channel_renders_any_notice_within_its_limit_valid_for_its_format_and_with_its_title(
    notice: Notice, change: Change | None,
) -> None:
    """As an ordinary post, a correction (更正) or a retraction (撤回)."""
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    outputs = [(name, *spec) for name, spec in TEMPLATES.items()]
    outputs += [("webhook", "webhook", {}, lambda r: 0, 0), ("feed", "feed", {}, lambda r: 0, 0)]
    for template, channel, options, measure, limit in outputs:
        options = options | ({"read_more_url": "https://piyao.cq.example/{ref}"} if channel == "weibo" else {})
        if template == "wecom news" and not notice.sources:  # no link for a card: markdown is sent
            limit = TEMPLATES["wecom markdown"][3]
        rendered = CHANNELS[channel].render(notice, now, options, change=change)
        assert measure(rendered) <= limit, template
        if channel == "wechat_mp":
            parser = _WellFormed()
            parser.feed(rendered.text)
            parser.close()
            assert parser.open == [] and "<script" not in rendered.text.lower(), template
        elif channel != "weibo":
            json.loads(rendered.body)
        if channel in ("dingtalk", "wecom") and rendered.text.startswith("#"):  # markdown
            _balanced_links(rendered.text)
            assert "@all" not in rendered.text.replace("\\@", ""), template
        if channel == "weibo":
            assert "@" not in rendered.text and "#" not in rendered.text, template
        assert _shows_title(rendered, notice, channel, change_word(change)), (template, rendered.text)
        if change is not None and channel != "webhook":
            assert change_word(change) in rendered.text + rendered.body.decode(), template
