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
