"""The channels debunkbot can post to, registered in one place.

To add one: write channels/<name>.py with a class following one of ``channels.base``'s ``Pushing``
(one request per delivery), ``Exchanging`` (several) or ``Pulling`` (outlets fetch), its templates in
templates/<name>/, and add it to CHANNELS below.

A channel module imports httpx, jinja2 (through ``bot.render``) and ``bot.http`` (aiohttp) where it builds,
renders or sends, not at its top: the CLI's read commands (``outlets``, ``status``) load this registry to check
the matrix, and must start in a blink (tests/test_cli_start.py).
"""

from __future__ import annotations

from channels.base import (
    AlertChannel,
    AnyChannel,
    Channel,
    Exchanging,
    Outcome,
    Pulling,
    Pushing,
    RateLimit,
    Rendered,
    classify_http,
    classify_json,
)
from channels.dingtalk import DingTalk
from channels.feed import Feed
from channels.feishu import Feishu, Lark
from channels.webhook import Webhook
from channels.wechat_mp import WeChatMP
from channels.wecom import WeCom
from channels.weibo import Weibo

CHANNELS: dict[str, AnyChannel] = {
    channel.name: channel
    for channel in (Webhook(), DingTalk(), WeCom(), Feishu(), Lark(), Weibo(), WeChatMP(), Feed())
}

__all__ = [
    "CHANNELS", "AlertChannel", "AnyChannel", "Channel", "Exchanging", "Outcome", "Pulling", "Pushing", "RateLimit",
    "Rendered", "classify_http", "classify_json",
]
