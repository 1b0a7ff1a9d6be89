"""Operator alerts: what the on-call people hear, posted through the same channels as notices.

The store raises alerts into an outbox, in the transaction that saw the event, deduplicated by key:
- ``exhausted``: a delivery ran out of retries (once per outlet per run of failures);
- ``paused``: an outlet was paused (410, or failing for the whole auto-pause window);
- ``recovered``: an outlet whose breaker had opened delivers again;
- ``urgent-late``: an urgent notice is not everywhere ``DEBUNKBOT_URGENT_DEADLINE`` minutes after release;
- ``review-waiting``: a draft has waited for its next review stage over ``DEBUNKBOT_REVIEW_ALERT_AFTER`` minutes
  (once per draft and round: a send-back or an edit starts a new wait).

The ``Alerter`` sends what is waiting as one digest message to each operator channel (the top-level
``operators:`` list of the outlet matrix), at most one message per channel per ``DEBUNKBOT_ALERT_INTERVAL``
seconds, so a bad night is a few messages. The outbox records which channel took which alert: a channel
that failed is tried again alone, and the others never get the same alert twice. With no operator
channel, alerts go to the log.

    >>> await Alerter(store, matrix, settings, client, db).tick()   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bot.http import Sender, SendFailed
from bot.logs import log_fields
from bot.matrix import LiveMatrix
from bot.outlets import Outlet, OutletMatrix
from bot.settings import Settings
from bot.store import Store, utcnow
from channels import AlertChannel, AnyChannel

log = logging.getLogger("debunkbot.alerts")
T = TypeVar("T")

DIGEST_LINES = 20  # alerts listed in one message; the rest are counted


class Alerter:
    def __init__(
        self, store: Store, matrix: OutletMatrix | LiveMatrix, settings: Settings, client: Sender,
        db: Callable[..., Awaitable[Any]] | None = None, channels: Mapping[str, AnyChannel] | None = None,
    ) -> None:
        self.store = store
        self.live = LiveMatrix.of(matrix)
        self.settings = settings
        self.client = client
        self.channels = channels or self.live.matrix.channels
        self._db = db
        self._next_try: dict[str | None, datetime] = {}  # per operator channel: no try before then (after a failure)

    @property
    def matrix(self) -> OutletMatrix:
        """The live matrix: its ``operators`` are where alerts go."""
        return self.live.matrix

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is not None:
            return await self._db(fn, *args)  # type: ignore[no-any-return]
        return await asyncio.to_thread(fn, *args)

    async def tick(self) -> int:
        """Raise late-urgent alerts, then send each operator channel what it has not taken yet, if its
        interval allows. A channel that fails is tried again alone; the others are not sent the same alerts
        again. Returns the alerts every channel now has."""
        now = utcnow()
        outbox = self.store.outbox
        await self.db(outbox.flag_late_urgent, timedelta(minutes=self.settings.urgent_deadline))
        if self.settings.review_stages:
            await self.db(self.store.review.flag_waiting, timedelta(minutes=self.settings.review_alert_after))
        if not self.matrix.operators:
            if not await self._due(None, now):
                return 0
            waiting = await self.db(outbox.unsent)
            for alert in waiting:
                log.warning("operator alert (no operators: channel configured): %s", alert["text"])
            return await self.db(outbox.mark_sent, [a["id"] for a in waiting])
        everyone = [o.id for o in self.matrix.operators]
        done = 0
        for operator in self.matrix.operators:
            if not await self._due(operator.id, now):
                continue
            waiting = await self.db(outbox.unsent, operator.id)
            if not waiting:
                continue
            title, text = digest(waiting)
            if await self._post(operator, title, text, f"alert_{waiting[0]['id']}_{waiting[-1]['id']}"):
                done += await self.db(outbox.mark_sent, [a["id"] for a in waiting], operator.id, everyone)
            else:
                self._next_try[operator.id] = now + timedelta(seconds=max(self.settings.scan_interval, 5.0))
        return done

    async def _due(self, operator_id: str | None, now: datetime) -> bool:
        """Whether this channel (None: the log) may get a message now: not backing off, interval passed."""
        if now < self._next_try.get(operator_id, now):
            return False
        last = await self.db(self.store.outbox.last_sent_at, operator_id)
        return last is None or (now - last).total_seconds() >= self.settings.alert_interval

    async def _post(self, operator: Outlet, title: str, text: str, message_id: str) -> bool:
        """Post to one operator channel; True when it took it. A resend carries the same message id."""
        channel = self.channels[operator.channel]
        assert isinstance(channel, AlertChannel)  # load_matrix refuses an operator channel that is not
        now = utcnow()
        rendered = channel.render_alert(title, text, now)
        request = channel.build(rendered, operator, self.matrix.secret_for(operator.id), message_id, now)
        try:
            answer = await self.client.send(request)
            outcome = channel.classify(answer.status, answer.headers, answer.body)
        except SendFailed as exc:
            log.warning("operator channel %s unreachable: %s", operator.id, exc.kind,
                        extra=log_fields(outlet_id=operator.id))
            return False
        if outcome.result != "delivered":
            log.warning("operator channel %s refused the alert: %s", operator.id, outcome.error,
                        extra=log_fields(outlet_id=operator.id))
            return False
        return True


def digest(waiting: list[dict[str, Any]]) -> tuple[str, str]:
    """One message for every alert waiting: a title and a list, the oldest first."""
    kinds = sorted({a["kind"] for a in waiting})
    title = f"debunkbot: {len(waiting)} alert(s) ({', '.join(kinds)})"
    lines = [f"- [{a['kind']}] {a['text']}" for a in waiting[:DIGEST_LINES]]
    if len(waiting) > DIGEST_LINES:
        lines.append(f"- … and {len(waiting) - DIGEST_LINES} more: see `debunkbot outlets` and `debunkbot log`")
    return title, "\n".join(lines)
