"""Receipts (回执): a link in every delivered post by which a district confirms it republished the notice.

- ``ReceiptLinks`` signs and reads the links: ``{DEBUNKBOT_PUBLIC_URL}/r/TOKEN``, where TOKEN is an itsdangerous
  timed signature (HMAC-SHA256 under ``DEBUNKBOT_RECEIPT_KEY``) of the delivery id and the notice version.
  It works for ``DEBUNKBOT_RECEIPT_TTL`` (7 days) and once: the store refuses a second confirmation of the same
  delivery and version. Without ``DEBUNKBOT_PUBLIC_URL`` there are no links (a district could not open one).
- ``Receipt`` is what a channel's templates show: the link, and for a reminder (提醒) the deadline.
- ``Reminders`` is the daemon's job: halfway through a notice's ``publish_within`` window each district outlet
  that has not confirmed gets one reminder through its own channel; at the window's end the operators get one
  alert per notice listing the districts that have not (``bot.store.receipts`` makes both happen once).

    >>> links = ReceiptLinks("https://piyao.example", "k" * 32, timedelta(days=7))
    >>> ticket = links.read(links.token(17, 2))
    >>> (ticket.delivery_id, ticket.version)
    (17, 2)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

if TYPE_CHECKING:
    from bot.http import Sender
    from bot.matrix import LiveMatrix
    from bot.settings import Settings
    from bot.store import Reminder, Store

log = logging.getLogger("debunkbot.receipts")
T = TypeVar("T")

# Channels whose posts carry a receipt link: the robots and webhooks a district's staff read, and feeds.
# Weibo and WeChat MP posts are public (the bot itself publishes them on the outlet's account): no link there.
RECEIPT_CHANNELS = frozenset({"webhook", "dingtalk", "wecom", "feishu", "lark", "feed"})
# Channels a reminder can be pushed through (a feed is fetched: its outlets are reminded by the operators).
REMINDER_CHANNELS = RECEIPT_CHANNELS - {"feed"}
RECEIPT_TIER = "district"  # reminders and escalations are about the district centres (区县融媒体中心)
SALT = "debunkbot.receipt"


@dataclass(frozen=True)
class Receipt:
    """What a template shows: the receipt link, and for a reminder when the window ends."""

    url: str
    remind_by: datetime | None = None


@dataclass(frozen=True)
class Ticket:
    """A receipt token read back: the delivery and version it confirms, and when it was made."""

    delivery_id: int
    version: int
    issued_at: datetime


class TokenRefused(Exception):
    """A receipt token that is forged, damaged or expired: ``status`` (400, 410) and a message for the district."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ReceiptLinks:
    def __init__(self, base_url: str, key: str, ttl: timedelta, clock: Callable[[], float] = time.time) -> None:
        """``clock``: seconds since the epoch, when tokens are made and read (tests move it)."""
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl
        signer = type("ReceiptSigner", (TimestampSigner,), {"get_timestamp": lambda _self: int(clock())})
        self._serializer = URLSafeTimedSerializer(key, salt=SALT, signer=signer,
                                                  signer_kwargs={"digest_method": hashlib.sha256})

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptLinks | None:
        """None without ``DEBUNKBOT_PUBLIC_URL``: no link is added anywhere."""
        if not settings.public_url or settings.receipt_key is None:
            return None
        return cls(settings.public_url, settings.receipt_key.get_secret_value(), settings.receipt_lifetime)

    def token(self, delivery_id: int, version: int) -> str:
        return self._serializer.dumps([delivery_id, version])

    def url(self, delivery_id: int, version: int) -> str:
        return f"{self.base_url}/r/{self.token(delivery_id, version)}"

    def read(self, token: str) -> Ticket:
        """The ticket a token holds; TokenRefused when it was not made with our key or is too old."""
        try:
            (delivery_id, version), signed = self._serializer.loads(token, max_age=self.ttl.total_seconds(),
                                                                    return_timestamp=True)
        except SignatureExpired as exc:
            when = exc.date_signed
            since = f" (it was sent on {when:%Y-%m-%d %H:%M} UTC)" if when else ""
            raise TokenRefused(410, f"this receipt link has expired: links work for {_days(self.ttl)}{since}; "
                               "ask the city office to record your receipt; nothing was recorded") from None
        except (BadSignature, ValueError, TypeError):
            raise TokenRefused(400, "this receipt link is not valid (damaged, or not made by debunkbot): copy the "
                               "whole link from the post; nothing was recorded") from None
        if not isinstance(delivery_id, int) or not isinstance(version, int):
            raise TokenRefused(400, "this receipt link is not valid; nothing was recorded")
        return Ticket(delivery_id, version, signed.astimezone(UTC))


def _days(ttl: timedelta) -> str:
    days = ttl.total_seconds() / 86400
    return f"{days:g} day{'s' if days != 1 else ''}" if days >= 1 else f"{ttl.total_seconds() / 3600:g} hours"


class Reminders:
    """The daemon's receipt job: escalate what is overdue, then send the reminders due, each once.

    >>> await Reminders(store, live, settings, sender, links).tick()     # doctest: +SKIP
    """

    def __init__(self, store: Store, live: LiveMatrix, settings: Settings, sender: Sender, links: ReceiptLinks,
                 db: Callable[..., Awaitable[Any]]) -> None:
        from bot.store import Windows

        self.store = store
        self.live = live
        self.sender = sender
        self.links = links
        self.db = db
        self.windows = Windows(*settings.publish_windows)
        self.lookback = settings.receipt_lifetime
        self.since: datetime | None = None  # when receipts were switched on for the store (older notices: no link)

    def _outlets(self, channels: frozenset[str]) -> list[str]:
        return [o.id for o in self.live.matrix.outlets if o.tier.value == RECEIPT_TIER and o.channel in channels]

    async def tick(self) -> tuple[int, int]:
        """Returns (alerts raised, reminders sent)."""
        matrix = self.live.matrix
        names = {o.id: o.name for o in matrix.outlets}
        if self.since is None:
            self.since = await self.db(self.store.receipts.switched_on)
        raised = await self.db(self.store.receipts.escalate, self.windows, self._outlets(RECEIPT_CHANNELS), names,
                               None, self.lookback, self.since)
        if raised:
            log.info("%d notice(s) not confirmed published by every district in time: operators alerted", raised)
        due = await self.db(self.store.receipts.claim_reminders, self.windows, self._outlets(REMINDER_CHANNELS), None,
                            200, self.since)
        sent = 0
        for reminder in due:
            error = await self._send(reminder)
            if error is None:
                sent += 1
                log.info("reminded %s to publish notice %s and confirm it (by %s)", reminder.outlet_id, reminder.ref,
                         reminder.deadline.isoformat(timespec="seconds"))
            else:
                log.warning("the reminder to %s about notice %s was not sent: %s (it is not sent again; the "
                            "operators are alerted at the window's end)", reminder.outlet_id, reminder.ref, error)
                await self.db(self.store.receipts.reminder_failed, reminder.delivery_id, reminder.version, error)
        return raised, sent

    async def _send(self, reminder: Reminder) -> str | None:
        """Send one reminder through the outlet's own channel; the error, or None when it was taken."""
        from bot.http import SendFailed
        from bot.store import webhook_id

        matrix = self.live.matrix
        outlet = matrix.by_id.get(reminder.outlet_id)
        if outlet is None:
            return "the outlet is no longer in the outlet matrix"
        channel: Any = matrix.channels[outlet.channel]
        receipt = Receipt(self.links.url(reminder.delivery_id, reminder.version), remind_by=reminder.deadline)
        now = datetime.now(UTC)
        try:
            rendered = channel.render(reminder.notice, reminder.released_at, outlet.options, receipt=receipt)
            message_id = webhook_id(reminder.message_id, reminder.version, "notice") + ".reminder"
            request = channel.build(rendered, outlet, matrix.secret_for(outlet.id), message_id, now)
            answer = await self.sender.send(request)
            outcome = channel.classify(answer.status, answer.headers, answer.body)
        except SendFailed as exc:
            return exc.kind
        except Exception as exc:  # a render or build that fails would fail again: noted, not retried
            return f"{type(exc).__name__}"
        return None if outcome.result == "delivered" else (outcome.error or outcome.result)


def receipt_for(links: ReceiptLinks | None, channel: str, delivery_id: int, version: int,
                carries: str) -> Receipt | None:
    """The receipt link a delivery's post carries: none without links, for a retraction, or on a public channel."""
    if links is None or carries == "retraction" or channel not in RECEIPT_CHANNELS:
        return None
    return Receipt(links.url(delivery_id, version))
