"""The outbox of operator alerts: raised in the transaction that saw the event, deduplicated by key, and
taken by each operator channel on its own, so a failing channel is retried without repeating the others.

    >>> waiting = store.outbox.unsent("ops-oncall")                      # doctest: +SKIP
    >>> store.outbox.mark_sent([a["id"] for a in waiting], "ops-oncall", ["ops-oncall", "ops-2"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.store.engine import Db, insert_new
from bot.store.tables import alert_sends, alerts, deliveries, notices


def alert(key: str, kind: str, text: str, now: datetime) -> dict[str, Any]:
    return {"key": key[:200], "kind": kind, "text": text, "created_at": now, "sent_at": None}


def raise_alerts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Raise alerts in the caller's transaction; a key already raised is skipped."""
    insert_new(conn, alerts, rows, "key")


def late_urgent(now: datetime, after: timedelta) -> sa.Select[Any]:
    """Urgent notices released more than ``after`` before ``now`` that some outlet does not have yet: ref, and
    how many outlets are missing it (``missing``). What the urgent-late alert and /metrics count."""
    d, n = deliveries, notices
    return (sa.select(n.c.ref, sa.func.count().label("missing"))
            .select_from(n.join(d, d.c.notice_id == n.c.id))
            .where(n.c.urgency == "urgent", n.c.released_at <= now - after,
                   d.c.status.not_in(("delivered", "cancelled")))  # cancelled (expired): nothing left to do
            .group_by(n.c.ref))


class Outbox:
    def __init__(self, db: Db) -> None:
        self.db = db

    def flag_late_urgent(self, after: timedelta, now: datetime | None = None) -> int:
        """Raise an alert (once per notice) for each urgent notice released more than ``after`` ago that
        some outlet still does not have. Returns the alerts raised."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            raised = sa.exists().where(alerts.c.key == sa.literal("urgent-late:") + notices.c.ref)
            rows = conn.execute(late_urgent(now, after).where(~raised)).all()
            late = [alert(f"urgent-late:{r.ref}", "urgent-late",
                          f"urgent notice {r.ref} is not delivered everywhere {after.total_seconds() / 60:g} "
                          f"minutes after release: {r.missing} outlet(s) without it. See `debunkbot status {r.ref}`",
                          now) for r in rows]
            raise_alerts(conn, late)
        return len(late)

    def unsent(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        """Alerts not yet sent to every operator channel, oldest first; with ``operator_id``, those that
        channel has not taken yet."""
        query = (sa.select(alerts.c.id, alerts.c.kind, alerts.c.text, alerts.c.created_at)
                 .where(alerts.c.sent_at.is_(None)).order_by(alerts.c.id))
        if operator_id is not None:
            query = query.where(~sa.exists().where(alert_sends.c.alert_id == alerts.c.id,
                                                   alert_sends.c.operator_id == operator_id))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def last_sent_at(self, operator_id: str | None = None) -> datetime | None:
        """When the operators (or one operator channel) last got an alert message."""
        query = (sa.select(sa.func.max(alerts.c.sent_at)) if operator_id is None else
                 sa.select(sa.func.max(alert_sends.c.sent_at)).where(alert_sends.c.operator_id == operator_id))
        with self.db.read() as conn:
            return conn.execute(query).scalar_one_or_none()

    def mark_sent(self, ids: Sequence[int], operator_id: str | None = None, operators: Collection[str] = (),
                  now: datetime | None = None) -> int:
        """``operator_id`` took these alerts (None: they went to the log, no channel is configured). An alert
        every one of ``operators`` has taken is sent. Returns the alerts that became sent."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            done = alerts.c.id.in_(list(ids)) & alerts.c.sent_at.is_(None)
            if operator_id is not None:
                insert_new(conn, alert_sends, [{"alert_id": i, "operator_id": operator_id, "sent_at": now}
                                               for i in ids], ("alert_id", "operator_id"))
                taken_by = (sa.select(sa.func.count()).where(alert_sends.c.alert_id == alerts.c.id,
                                                             alert_sends.c.operator_id.in_(list(operators)))
                            .scalar_subquery())
                done = done & (taken_by >= len(set(operators) | {operator_id}))
            return conn.execute(alerts.update().where(done).values(sent_at=now)).rowcount
