"""Operator alerts: what the on-call people hear, posted through the same channels as notices.

The store raises alerts into an outbox, in the transaction that saw the event, deduplicated by key:
- ``exhausted``: a delivery ran out of retries (once per outlet per run of failures);
- ``paused``: an outlet was paused (410, or failing for the whole auto-pause window);
- ``recovered``: an outlet whose breaker had opened delivers again;
- ``urgent-late``: an urgent notice is not everywhere ``DEBUNKBOT_URGENT_DEADLINE`` minutes after release.

The ``Alerter`` sends what is waiting as one digest message to every operator channel (the top-level
``operators:`` list of the outlet matrix), at most one message per ``DEBUNKBOT_ALERT_INTERVAL``
seconds, so a bad night is a few messages. With no operator channel, alerts go to the log.

    >>> await Alerter(store, matrix, settings, client, db).tick()   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from bot.http import Sender, SendFailed
from bot.outlets import OutletMatrix
from bot.settings import Settings
from bot.store import Store, utcnow
from channels import AlertChannel, AnyChannel

log = logging.getLogger("debunkbot.alerts")
T = TypeVar("T")

DIGEST_LINES = 20  # alerts listed in one message; the rest are counted


class Alerter:
    def __init__(
        self, store: Store, matrix: OutletMatrix, settings: Settings, client: Sender,
        db: Callable[..., Awaitable[Any]] | None = None, channels: Mapping[str, AnyChannel] | None = None,
    ) -> None:
        self.store = store
        self.matrix = matrix
        self.settings = settings
        self.client = client
        self.channels = channels or matrix.channels
        self._db = db
        self._next_try = utcnow()

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is not None:
            return await self._db(fn, *args)  # type: ignore[no-any-return]
        return await asyncio.to_thread(fn, *args)

    async def tick(self) -> int:
        """Raise late-urgent alerts, then send what waits if the interval allows. Returns alerts sent."""
        now = utcnow()
        await self.db(self.store.flag_late_urgent, timedelta(minutes=self.settings.urgent_deadline))
        if now < self._next_try:
            return 0
        last = await self.db(self.store.last_alert_sent_at)
        if last is not None and (now - last).total_seconds() < self.settings.alert_interval:
            return 0
        waiting = await self.db(self.store.unsent_alerts)
        if not waiting:
            return 0
        title, text = digest(waiting)
        if not self.matrix.operators:
            for alert in waiting:
                log.warning("operator alert (no operators: channel configured): %s", alert["text"])
        elif not await self._post(title, text, f"alert_{waiting[0]['id']}_{waiting[-1]['id']}"):
            self._next_try = now + timedelta(seconds=max(self.settings.scan_interval, 5.0))
            return 0
        await self.db(self.store.mark_alerts_sent, [a["id"] for a in waiting])
        return len(waiting)

    async def _post(self, title: str, text: str, message_id: str) -> bool:
        """Post to every operator channel; True when all took it. A resend carries the same message id."""
        ok = True
        for operator in self.matrix.operators:
            channel = self.channels[operator.channel]
            assert isinstance(channel, AlertChannel)  # load_matrix refuses an operator channel that is not
            now = utcnow()
            rendered = channel.render_alert(title, text, now)
            request = channel.build(rendered, operator, self.matrix.secret_for(operator.id), message_id, now)
            try:
                answer = await self.client.send(request)
                outcome = channel.classify(answer.status, answer.headers, answer.body)
            except SendFailed as exc:
                log.warning("operator channel %s unreachable: %s", operator.id, exc.kind)
                ok = False
                continue
            if outcome.result != "delivered":
                log.warning("operator channel %s refused the alert: %s", operator.id, outcome.error)
                ok = False
        return ok


def digest(waiting: list[dict[str, Any]]) -> tuple[str, str]:
    """One message for every alert waiting: a title and a list, the oldest first."""
    kinds = sorted({a["kind"] for a in waiting})
    title = f"debunkbot: {len(waiting)} alert(s) ({', '.join(kinds)})"
    lines = [f"- [{a['kind']}] {a['text']}" for a in waiting[:DIGEST_LINES]]
    if len(waiting) > DIGEST_LINES:
        lines.append(f"- … and {len(waiting) - DIGEST_LINES} more: see `debunkbot outlets` and `debunkbot log`")
    return title, "\n".join(lines)
