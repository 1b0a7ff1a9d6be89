"""The channels debunkbot can post to, registered in one place.

To add one: write channels/<name>.py with a class following ``channels.base.Channel``,
its templates in templates/<name>/, and add it to CHANNELS below.
"""

from __future__ import annotations

from channels.base import AlertChannel, Channel, Outcome, Rendered, classify_http
from channels.webhook import Webhook

CHANNELS: dict[str, Channel] = {
    Webhook.name: Webhook(),
}

__all__ = ["CHANNELS", "AlertChannel", "Channel", "Outcome", "Rendered", "classify_http"]
