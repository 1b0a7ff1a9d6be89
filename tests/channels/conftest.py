"""Every platform fake on loopback, an outlet and secret for each channel, and one way to send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bot.http import Sender
from bot.model import Notice
from bot.outlets import Outlet
from bot.testing import DingTalkRobots, FeishuBots, WeChatMPAPI, WeComRobots, WeiboAPI
from channels import CHANNELS, Exchanging, Outcome, Pushing, Rendered

DINGTALK = ("dt0a1b2c3d4e5f", "SEC0123456789abcdef0123456789abcdef")
WECOM = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
FEISHU = ("fs-hook-2b5c9e6a", "feishu-signing-secret-1")
LARK = ("lk-hook-7d1e0f3a", "lark-signing-secret-1")
WEIBO = "2.00weibo-access-token"
WECHAT = ("wx1234567890abcdef", "wechat-app-secret-0123456789")
THUMB = "thumb-media-0001"
SAFE_DOMAIN = "piyao.cq.example"


@dataclass
class Platforms:
    dingtalk: DingTalkRobots
    wecom: WeComRobots
    feishu: FeishuBots
    lark: FeishuBots
    weibo: WeiboAPI
    wechat_mp: WeChatMPAPI

    def outlet(self, channel: str, **options: Any) -> tuple[Outlet, str]:
        """An outlet of ``channel`` pointed at its fake, and its secret as the environment would hold it."""
        url, secret = {
            "dingtalk": (self.dingtalk.url, ":".join(DINGTALK)),
            "wecom": (self.wecom.url, WECOM),
            "feishu": (self.feishu.url, ":".join(FEISHU)),
            "lark": (self.lark.url, ":".join(LARK)),
            "weibo": (self.weibo.url, WEIBO),
            "wechat_mp": (self.wechat_mp.url, WECHAT[1]),
        }[channel]
        if channel == "weibo":
            options.setdefault("read_more_url", f"https://{SAFE_DOMAIN}/{{ref}}")
            options.setdefault("rip", "203.0.113.10")
        if channel == "wechat_mp":
            options = {"appid": WECHAT[0], "thumb_media_id": THUMB} | options
        outlet = Outlet(id=f"test-{channel}", name=f"测试{channel}", tier="district", channel=channel, url=url,
                        secret_env="TEST_SECRET", options=options)
        assert CHANNELS[channel].check_outlet(outlet) == []
        return outlet, secret


@pytest.fixture
async def platforms() -> AsyncIterator[Platforms]:
    fakes = Platforms(
        DingTalkRobots({DINGTALK[0]: DINGTALK[1]}),
        WeComRobots({WECOM}),
        FeishuBots({FEISHU[0]: FEISHU[1]}),
        FeishuBots({LARK[0]: LARK[1]}),
        WeiboAPI({WEIBO}, SAFE_DOMAIN),
        WeChatMPAPI({WECHAT[0]: WECHAT[1]}, {THUMB}),
    )
    for fake in vars(fakes).values():
        await fake.__aenter__()
    yield fakes
    for fake in vars(fakes).values():
        await fake.__aexit__(None, None, None)


async def send(
    outlet: Outlet, secret: str, rendered: Rendered, now: datetime | None = None, attempt: int = 1,
    state: dict[str, Any] | None = None,
) -> Outcome:
    """One delivery as the dispatcher makes it: ``deliver`` if the channel has one, else build + send; then classify."""
    channel = CHANNELS[outlet.channel]
    now = now or datetime.now(UTC)
    async with Sender(httpx.AsyncHTTPTransport(), timeout=10) as sender:
        if isinstance(channel, Exchanging):
            answer = await channel.deliver(sender, rendered, outlet, secret, "msg_test", now, dict(state or {}))
            if state is not None and answer.state is not None:  # kept for the next try, as the store keeps it
                state.clear()
                state.update(answer.state)
        else:
            assert isinstance(channel, Pushing)
            answer = await sender.send(channel.build(rendered, outlet, secret, "msg_test", now))
    return channel.classify(answer.status, answer.headers, answer.body, attempt=attempt)


def render_for(outlet: Outlet, notice: Notice) -> Rendered:
    return CHANNELS[outlet.channel].render(notice, datetime(2026, 11, 27, 10, 0, tzinfo=UTC), outlet.options)
