"""更正 and 撤回 in every channel: each platform's fake on loopback takes them, in its own form and limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bot.http import Sender
from bot.model import Change, Notice
from channels import CHANNELS
from tests.channels.conftest import Platforms, send
from tests.conftest import notice_data

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
NOTICE = Notice.model_validate(notice_data(truth="经核实，长江重庆段水位平稳，较昨日上涨0.3米。"))
CORRECTION = Change(kind="correction", version=2, previous_version=1, previous_message_id="msg_1",
                    note="水位数据有误 *已更正* @all <b>", changed=("truth",), at=NOW)
RETRACTION = Change(kind="retraction", version=2, previous_version=2, previous_message_id="msg_1.v2",
                    note="经复核，通报所涉事件存在出入 [点我](http://x) #话题#", at=NOW)
PLATFORMS = ["dingtalk", "wecom", "feishu", "weibo", "wechat_mp"]


def shown(platforms: Platforms, channel: str) -> str:
    """What the platform's fake took last, as text."""
    fake = getattr(platforms, channel)
    payload = fake.received[-1].payload
    return payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)


@pytest.mark.parametrize("channel", PLATFORMS)
async def test_a_correction_is_taken_by_the_platform_and_says_what_changed_and_why(
    platforms: Platforms, channel: str
) -> None:
    outlet, secret = platforms.outlet(channel)
    rendered = CHANNELS[channel].render(NOTICE, NOW, outlet.options, change=CORRECTION)
    assert (await send(outlet, secret, rendered)).result == "delivered"
    text = shown(platforms, channel)
    assert "【更正】" in text and "上涨0.3米" in text
    if channel != "weibo":  # 140 characters: the note only, cut; the link has the rest
        assert "事实已更正" in text
    assert "水位数据有误" in text
    # the editor's note stays inert: escaped for markdown and HTML, no mention where the platform reads one
    if channel in ("dingtalk", "wecom", "weibo"):
        assert "@all" not in rendered.text
    if channel in ("dingtalk", "wecom"):
        assert "\\*已更正\\*" in rendered.text and "\\<b>" in rendered.text
    if channel == "wechat_mp":
        assert "&lt;b&gt;" in rendered.text and "<b>" not in rendered.text


@pytest.mark.parametrize("channel", PLATFORMS)
async def test_a_retraction_is_taken_by_the_platform_says_why_and_no_longer_carries_the_notice(
    platforms: Platforms, channel: str
) -> None:
    outlet, secret = platforms.outlet(channel)
    rendered = CHANNELS[channel].render(NOTICE, NOW, outlet.options, change=RETRACTION)
    assert (await send(outlet, secret, rendered)).result == "delivered"
    text = shown(platforms, channel)
    assert "【撤回】" in text and "经复核" in text and "已撤回" in text
    assert "上涨0.3米" not in text
    if channel == "weibo":
        assert "#" not in rendered.text
    if channel in ("dingtalk", "wecom"):
        assert "[点我](http://x)" not in rendered.text  # escaped: no link


def test_the_webhook_event_names_the_version_the_previous_webhook_id_and_claim_reviews_correction() -> None:
    body = json.loads(CHANNELS["webhook"].render(NOTICE, NOW, {}, change=CORRECTION).body)
    assert body["type"] == "notice.corrected"
    assert (body["data"]["version"], body["data"]["previous_webhook_id"]) == (2, "msg_1")
    assert body["data"]["claim_review"]["correction"] == {
        "@type": "CorrectionComment", "text": "更正：水位数据有误 *已更正* @all <b>", "datePublished": NOW.isoformat()}
    retracted = json.loads(CHANNELS["webhook"].render(NOTICE, NOW, {}, change=RETRACTION).body)
    assert retracted["type"] == "notice.retracted" and retracted["data"]["previous_webhook_id"] == "msg_1.v2"
    ordinary = json.loads(CHANNELS["webhook"].render(NOTICE, NOW, {}).body)
    assert ordinary["type"] == "notice.published" and "correction" not in ordinary["data"]["claim_review"]
    assert "correct" not in ordinary["data"] and "correction_note" not in ordinary["data"]


async def deliver_as(outlet: Any, secret: str, rendered: Any, message_id: str, state: dict[str, Any]) -> str:
    """One wechat_mp delivery of ``message_id``, keeping its state as the store does; returns the outcome."""
    channel = CHANNELS["wechat_mp"]
    async with Sender(httpx.AsyncHTTPTransport(), timeout=10) as sender:
        answer = await channel.deliver(sender, rendered, outlet, secret, message_id, NOW, dict(state))
    if answer.state is not None:
        state.clear()
        state.update(answer.state)
    return channel.classify(answer.status, answer.headers, answer.body).result


async def test_a_wechat_draft_not_yet_published_is_updated_by_the_correction_and_the_retraction_not_added_again(
    platforms: Platforms,
) -> None:
    outlet, secret = platforms.outlet("wechat_mp")
    channel, state = CHANNELS["wechat_mp"], {}
    wechat = platforms.wechat_mp
    assert await deliver_as(outlet, secret, channel.render(NOTICE, NOW, outlet.options), "msg_1", state) == "delivered"
    (draft,) = wechat.drafts
    corrected = channel.render(NOTICE, NOW, outlet.options, change=CORRECTION)
    assert await deliver_as(outlet, secret, corrected, "msg_1.v2", state) == "delivered"
    assert list(wechat.drafts) == [draft] and wechat.updates == [draft]
    assert wechat.drafts[draft]["title"].startswith("【更正】")
    retracted = channel.render(NOTICE, NOW, outlet.options, change=RETRACTION)
    assert await deliver_as(outlet, secret, retracted, "msg_1.retracted", state) == "delivered"
    assert list(wechat.drafts) == [draft] and wechat.drafts[draft]["title"].startswith("【撤回】")
    # a retry of the same message changes nothing more
    assert await deliver_as(outlet, secret, retracted, "msg_1.retracted", state) == "delivered"
    assert wechat.updates == [draft, draft]


async def test_a_published_wechat_article_is_corrected_by_a_new_draft(platforms: Platforms) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    channel, state = CHANNELS["wechat_mp"], {}
    wechat = platforms.wechat_mp
    rendered = channel.render(NOTICE, NOW, outlet.options)
    assert await deliver_as(outlet, secret, rendered, "msg_1", state) == "retry"  # the publish task was accepted
    assert await deliver_as(outlet, secret, rendered, "msg_1", state) == "delivered"  # and is published
    corrected = channel.render(NOTICE, NOW, outlet.options, change=CORRECTION)
    assert await deliver_as(outlet, secret, corrected, "msg_1.v2", state) == "retry"
    assert await deliver_as(outlet, secret, corrected, "msg_1.v2", state) == "delivered"
    assert len(wechat.drafts) == 2 and wechat.updates == [] and len(wechat.published) == 2
