"""Rendering: editor text is data, never template source."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from markdown_it import MarkdownIt

from bot.intake import read_notices
from bot.model import Notice
from bot.regions import RegionTable
from bot.render import markdown_escape, notice_context, render
from bot.settings import ROOT

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_template_syntax_in_editor_text_comes_out_literally(make_notice: Callable[..., Notice]) -> None:
    notice = make_notice(truth="{{ 7*7 }} {% if true %}x{% endif %} <script>alert(1)</script>")
    text = render("webhook/text.j2", notice_context(notice, NOW))
    assert "{{ 7*7 }}" in text and "{% if true %}x{% endif %}" in text and "49" not in text


def test_the_text_follows_the_shape_of_a_chongqing_notice(make_notice: Callable[..., Notice]) -> None:
    text = render("webhook/text.j2", notice_context(make_notice(), NOW))
    assert text.startswith("【辟谣】网传")
    assert "近日，有网民发布信息称“长江重庆段水位今晚将暴涨10米。”" in text
    assert "经核实，网传信息系谣言。" in text
    assert "（核实单位：重庆市水利局）" in text
    assert text.endswith("不信谣、不传谣。")


def test_each_verdict_reads_differently(make_notice: Callable[..., Notice]) -> None:
    texts = {v: render("webhook/text.j2", notice_context(make_notice(verdict=v), NOW))
             for v in ("false", "misleading", "misconception", "unproven")}
    assert len(set(texts.values())) == 4
    assert "不实" in texts["misleading"] and "误区" in texts["misconception"] and "未经证实" in texts["unproven"]


def _visible(markdown: str) -> tuple[str, list[str], list[str]]:
    """What a CommonMark reader shows: the text, the links' targets, and any live HTML."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    shown, links, html = [], [], []
    for token in tokens:
        if token.type == "html_block":
            html.append(token.content)
        for child in token.children or ():
            if child.type in ("text", "code_inline"):
                shown.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                shown.append("\n")
            elif child.type == "link_open":
                links.append(str(child.attrs.get("href")))
            elif child.type == "html_inline":
                html.append(child.content)
            elif child.type not in ("link_close", "strong_open", "strong_close"):
                shown.append(f"<{child.type}>")  # emphasis, images...: markup the editor's text made live
    return "".join(shown), links, html


def _sample_notices() -> list[Notice]:
    from bot.intake import expand, read_notices
    from bot.regions import RegionTable
    from bot.settings import CONFIG

    regions = RegionTable.load(CONFIG / "regions.yaml")
    return [n for path in expand([CONFIG / "samples"]) for n in read_notices(path, regions, NOW)]


def _matrix_options() -> list[tuple[str, dict[str, object]]]:
    """One (channel, options) per distinct shape in the example matrix: every channel, every msgtype."""
    import yaml

    from bot.settings import CONFIG

    entries = yaml.safe_load((CONFIG / "outlets.yaml").read_text(encoding="utf-8"))["outlets"]
    shapes = {(e["channel"], repr(sorted((e.get("options") or {}).items()))): e for e in entries}
    return [(e["channel"], e.get("options") or {}) for e in shapes.values()]


def test_no_sample_renders_a_doubled_full_stop_or_a_space_between_chinese_sentences_on_any_channel() -> None:
    import re

    from channels import CHANNELS

    notices = _sample_notices()
    shapes = _matrix_options()
    assert len(notices) >= 3 and {c for c, _ in shapes} >= {"webhook", "dingtalk", "wecom", "feishu", "weibo",
                                                            "wechat_mp", "feed"}
    for notice in notices:
        for channel, options in shapes:
            text = CHANNELS[channel].render(notice, NOW, options).text
            assert not re.search(r"[。！？][”」]?。", text), (channel, notice.ref, text)
            assert not re.search(r"[\u4e00-\u9fff。，；：！？] [\u4e00-\u9fff]", text), (channel, notice.ref, text)


def test_a_quoted_claim_ends_with_one_full_stop(make_notice: Callable[..., Notice]) -> None:
    ends = render("webhook/text.j2", notice_context(make_notice(rumour="请尽快撤离。"), NOW))
    bare = render("webhook/text.j2", notice_context(make_notice(rumour="请尽快撤离"), NOW))
    assert "“请尽快撤离。”\n" in ends and "“请尽快撤离”。\n" in bare


def test_the_verdict_sentence_is_the_same_on_every_channel(make_notice: Callable[..., Notice]) -> None:
    from channels import CHANNELS

    for verdict in ("false", "misleading", "misconception", "unproven"):
        notice = make_notice(verdict=verdict)
        for channel, options in _matrix_options():
            if channel != "weibo":  # Weibo's 140 characters may cut it
                assert notice.verdict.sentence in CHANNELS[channel].render(notice, NOW, options).text, channel


HOSTILE = ("[点我](http://evil.example) ![图](http://evil.example/x.png) *重要* __粗__ `代码` ~~删~~ <b>粗</b> "
           "<http://evil.example> <@zhangsan> &lt;i&gt; \\*")
PLAIN = "10.5米 2026-11-27 15:30 5~10℃ 3+2 (a) 1/2 #话题# @all 100%。"


@pytest.mark.parametrize("line_start", ["# 标题", "> 引用", "- 列表", "+ 列表", "1. 列表", "2026) 年", "---", "==="])
def test_markdown_escape_keeps_line_starts_plain(line_start: str) -> None:
    shown, links, html = _visible(f"第一行\n\n{markdown_escape(line_start)}")
    assert shown == f"第一行{line_start}" and links == html == []


def test_markdown_escape_makes_links_emphasis_html_and_mentions_inert_and_shows_the_text() -> None:
    shown, links, html = _visible(markdown_escape(HOSTILE))
    assert links == [] and html == []
    # what the editor wrote (its @ full-width, so no mention), and no <em> or <image>
    assert shown == HOSTILE.replace("\\\\", "\\").replace("@", "＠")


def test_markdown_escape_leaves_ordinary_text_dates_and_decimals_alone() -> None:
    assert markdown_escape(PLAIN) == PLAIN.replace("@all", "＠all")


@pytest.mark.parametrize("channel", ["dingtalk", "wecom"])
@pytest.mark.parametrize("sample", sorted(p.name for p in (ROOT / "config" / "samples").iterdir()))
def test_the_samples_render_as_markdown_with_no_stray_backslash_and_every_number_intact(
    channel: str, sample: str, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    from channels import CHANNELS

    notices = read_notices(ROOT / "config" / "samples" / sample, regions, NOW)
    notices.append(make_notice(title="网传“水位10.5米”系谣言", truth=f"{PLAIN}\n{HOSTILE}\n# 不是标题\n1. 不是列表"))
    for notice in notices:
        rendered = CHANNELS[channel].render(notice, NOW, {"read_more_url": "https://piyao.cq.example/{ref}"})
        body = json.loads(rendered.body)
        markdown = body["markdown"]["text"] if channel == "dingtalk" else body["markdown"]["content"]
        shown, links, html = _visible(markdown)
        editor = [notice.title, notice.rumour, notice.truth, notice.authority]
        assert "\\" not in shown.replace("\\*", ""), shown  # only the hostile text's own backslash shows
        if notice.ref != "cq-test-001":  # a sample: nothing in it needs escaping, so no backslash is sent at all,
            assert "\\" not in markdown, markdown  # whatever the platform makes of escapes
        assert set(links) <= {str(s.url) for s in notice.sources} | {f"https://piyao.cq.example/{notice.ref}"}
        assert all(tag.startswith(("<font", "</font")) for tag in html), html  # the template's colours only
        for number in {n for text in editor for n in re.findall(r"\d[\d.:\-~/%]*\d|\d", text)}:
            assert number in shown, number
