"""Loopback fakes of the outlets' platforms.

They ship with the bot, not only with the tests, because the demo and the benches use the same
ones: one implementation that behaves as each platform documents (signatures, limits, error codes).
"""

from bot.testing import chaos
from bot.testing.chaos import ChaosOutlets, ChaosRequest
from bot.testing.webhook import HANG, Post, WebhookOutlets

__all__ = ["HANG", "ChaosOutlets", "ChaosRequest", "Post", "WebhookOutlets", "chaos"]
