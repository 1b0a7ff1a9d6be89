"""The channels debunkbot can post to, registered in one place.

To add one: write channels/<name>.py with a class following ``channels.base.Channel``,
its templates in templates/<name>/, and add it to CHANNELS below.
"""

from __future__ import annotations

from channels.base import AlertChannel, Channel, Outcome, Rendered, classify_http, classify_json
from channels.dingtalk import DingTalk
from channels.feed import Feed
from channels.feishu import Feishu, Lark
from channels.webhook import Webhook
from channels.wechat_mp import WeChatMP
from channels.wecom import WeCom
from channels.weibo import Weibo

CHANNELS: dict[str, Channel] = {
    channel.name: channel
    for channel in (Webhook(), DingTalk(), WeCom(), Feishu(), Lark(), Weibo(), WeChatMP(), Feed())
}

__all__ = ["CHANNELS", "AlertChannel", "Channel", "Outcome", "Rendered", "classify_http", "classify_json"]
