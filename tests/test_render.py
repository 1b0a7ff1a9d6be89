"""Rendering: editor text is data, never template source."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from bot.model import Notice
from bot.render import markdown_escape, notice_context, render

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


def test_markdown_escape_makes_links_emphasis_and_mentions_inert() -> None:
    import re

    escaped = markdown_escape("[点我](http://evil.example) *重要* @all # 标题")
    assert re.findall(r"(?<!\\)[\[\]()*@#]", escaped) == []  # every special character is escaped
    assert escaped.replace("\\", "") == "[点我](http://evil.example) *重要* @all # 标题"
