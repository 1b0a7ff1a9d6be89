"""Loopback fakes of the outlets' platforms.

They ship with the bot, not only with the tests, because the demo and the benches use the same
ones: one implementation that behaves as each platform documents (signatures, limits, error codes).
"""

from bot.testing import chaos
from bot.testing.chaos import ChaosOutlets, ChaosRequest
from bot.testing.dingtalk import DingTalkRobots
from bot.testing.feed import read_feed
from bot.testing.feishu import FeishuBots
from bot.testing.platform import LoopbackPlatform, Window
from bot.testing.webhook import HANG, Post, WebhookOutlets
from bot.testing.wechat_mp import WeChatMPAPI
from bot.testing.wecom import WeComRobots
from bot.testing.weibo import WeiboAPI

__all__ = [
    "HANG", "ChaosOutlets", "ChaosRequest", "DingTalkRobots", "FeishuBots", "LoopbackPlatform", "Post", "WeChatMPAPI",
    "WeComRobots", "WebhookOutlets", "WeiboAPI", "Window", "chaos", "read_feed",
]
