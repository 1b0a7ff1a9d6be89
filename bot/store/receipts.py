"""Receipts (回执): which outlets confirmed they republished a notice, the one reminder (提醒) each silent one
gets halfway through the notice's ``publish_within`` window, and the one operator alert per notice version at
its end. One row of ``receipts`` per delivery x version, made by the first of these to happen.

Every claim is a transaction that only succeeds once: a confirmation sets ``published_at`` where it is null; a
reminder sets ``reminded_at`` where it is null (``UPDATE … RETURNING``, so of two processes one gets the row and
the other nothing, on SQLite and PostgreSQL); an escalation is an operator alert with the key
``unpublished:REF:vN`` (``alerts.key`` is unique), and marks ``escalated_at`` in the same transaction.

    >>> store.receipts.confirm(17, 1, "https://yz.example/a/1", via="page", actor=actor)   # doctest: +SKIP
    >>> store.receipts.claim_reminders(windows, outlets=["dist-yuzhong"])                     # doctest: +SKIP
    >>> store.receipts.report(since, outlets=["dist-yuzhong", "dist-nanan"])                   # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.model import Notice
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text, insert_new
from bot.store.outbox import alert, raise_alerts
from bot.store.tables import alerts, deliveries, notice_versions, notices, receipts

d, n, r, v = deliveries, notices, receipts, notice_versions
SWITCHED_ON = "receipts:on"


class ReceiptRefused(Exception):
    """A receipt the store will not take, with the HTTP status that says why; nothing was changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Confirmed:
    delivery_id: int
    ref: str
    outlet_id: str
    version: int
    published_at: datetime
    published_url: str | None


@dataclass(frozen=True)
class Published:
    """An outlet's confirmation of one version of a notice (what the log, status, the API and the matrix show)."""

    version: int
    at: datetime
    url: str | None
    current: bool  # it confirms the notice's latest version (a confirmed v1 of a corrected notice is not)


@dataclass(frozen=True)
class Reminder:
    """A reminder this process claimed and now sends (once: a failed send is noted, never repeated)."""

    delivery_id: int
    ref: str
    outlet_id: str
    version: int
    message_id: str
    notice: Notice
    released_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class Windows:
    """How long an outlet has to publish a notice, from its release (or its correction): by urgency."""

    normal: timedelta
    urgent: timedelta

    def of(self, urgency: str) -> timedelta:
        return self.urgent if urgency == "urgent" else self.normal


@dataclass(frozen=True)
class ReportRow:
    """One outlet's figures over a period (``store.receipts.report``)."""

    outlet: str
    received: int  # notices (released in the period) that reached it
    published: int  # of those, confirmed published (any version)
    median_minutes: float | None  # median time from delivery to confirmation
    reminded: int  # how many needed a reminder


def _starts() -> Any:
    """When a notice's window starts: its release, or the creation of its current version if later."""
    created = (sa.select(v.c.created_at).where(v.c.notice_id == n.c.id, v.c.version == n.c.version)
               .correlate(n).scalar_subquery())
    return sa.case((created > n.c.released_at, created), else_=n.c.released_at)


class Receipts:
    def __init__(self, db: Db) -> None:
        self.db = db

    # --- confirming -------------------------------------------------------------------------------------------

    def confirm(self, delivery_id: int, version: int, published_url: str | None, via: str,
                source: str | None = None, now: datetime | None = None) -> Confirmed:
        """Record that the outlet of ``delivery_id`` published ``version`` (at ``published_url``). Raises
        ReceiptRefused (404 no such delivery, 409 already confirmed or a corrected version, 410 retracted) and
        changes nothing then. With ``source`` (the client's address), audited in the same transaction as
        ``receipt.confirm`` by the outlet (role ``receipt``)."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            row = conn.execute(
                sa.select(d.c.id, d.c.outlet_id, d.c.delivered_at, d.c.sent_version, n.c.ref, n.c.version,
                          n.c.retracted_at, n.c.id.label("notice_id"))
                .select_from(d.join(n, n.c.id == d.c.notice_id)).where(d.c.id == delivery_id)).first()
            if row is None:
                raise ReceiptRefused(404, "this receipt link names a delivery the bot does not have; nothing was "
                                     "recorded")
            if row.retracted_at is not None:
                raise ReceiptRefused(410, f"notice {row.ref} was retracted (撤回) on {row.retracted_at:%Y-%m-%d %H:%M} "
                                     "UTC: there is nothing to publish, please take it down; nothing was recorded")
            if version < row.version:
                corrected = conn.execute(sa.select(v.c.created_at).where(
                    v.c.notice_id == row.notice_id, v.c.version == row.version)).scalar_one_or_none()
                when = f" on {corrected:%Y-%m-%d %H:%M} UTC" if corrected else ""
                raise ReceiptRefused(409, f"this link confirms version {version} of notice {row.ref}, which was "
                                     f"corrected (更正) to version {row.version}{when}: publish the correction and "
                                     "confirm with the link in the 更正 post; nothing was recorded")
            if version > row.version:
                raise ReceiptRefused(400, "this receipt link names a version the notice does not have; nothing was "
                                     "recorded")
            insert_new(conn, r, [{"delivery_id": delivery_id, "version": version}], ("delivery_id", "version"))
            done = conn.execute(
                r.update().where(r.c.delivery_id == delivery_id, r.c.version == version, r.c.published_at.is_(None))
                .values(published_at=now, published_url=clean_text(published_url), published_via=via,
                        delivered_at=row.delivered_at)
                .returning(r.c.published_at)).first()
            if done is None:
                earlier = conn.execute(sa.select(r.c.published_at).where(
                    r.c.delivery_id == delivery_id, r.c.version == version)).scalar_one()
                raise ReceiptRefused(409, f"this receipt was already confirmed on {earlier:%Y-%m-%d %H:%M} UTC: a "
                                     "receipt link works once; nothing was changed")
            conn.execute(d.update().where(d.c.id == delivery_id).values(updated_at=now))  # the live matrix sees it
            actor = None if source is None else Actor(row.outlet_id, "receipt", source)
            record(conn, actor, "receipt.confirm", row.ref, now, delivery=delivery_id, version=version,
                   published_url=published_url, via=via)
        return Confirmed(delivery_id, row.ref, row.outlet_id, version, now, published_url)

    def receipt_notice(self, delivery_id: int) -> tuple[str, str, Notice, int, datetime | None] | None:
        """What the confirm page shows: (ref, outlet id, the notice's latest version, that version, released at)."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(n.c.ref, d.c.outlet_id, n.c.payload, n.c.version, n.c.released_at)
                .select_from(d.join(n, n.c.id == d.c.notice_id)).where(d.c.id == delivery_id)).first()
        return None if row is None else (row.ref, row.outlet_id, Notice.from_stored(row.payload), row.version,
                                         row.released_at)

    # --- reading ----------------------------------------------------------------------------------------------

    def of_deliveries(self, delivery_ids: Collection[int]) -> dict[int, Published]:
        """The latest confirmation of each delivery that has one (for the log, the API and status)."""
        if not delivery_ids:
            return {}
        found: dict[int, Published] = {}
        with self.db.read() as conn:
            ids = list(delivery_ids)
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(r.c.delivery_id, r.c.version, r.c.published_at, r.c.published_url,
                              n.c.version.label("latest"))
                    .select_from(r.join(d, d.c.id == r.c.delivery_id).join(n, n.c.id == d.c.notice_id))
                    .where(r.c.delivery_id.in_(ids[start:start + 500]), r.c.published_at.is_not(None))
                    .order_by(r.c.version)).all()
                for row in rows:
                    found[row.delivery_id] = Published(row.version, row.published_at, row.published_url,
                                                       row.version == row.latest)
        return found

    def published_outlets(self, ref: str) -> dict[str, Published]:
        """For the matrix page: each outlet that confirmed it published notice ``ref``, by outlet id (``current``
        says whether it confirmed the latest version)."""
        with self.db.read() as conn:
            ids = dict(conn.execute(sa.select(d.c.id, d.c.outlet_id).select_from(d.join(n, n.c.id == d.c.notice_id))
                                    .where(n.c.ref == ref)).all())
        return {ids[delivery_id]: mark for delivery_id, mark in self.of_deliveries(list(ids)).items()}

    # --- reminders and escalation -----------------------------------------------------------------------------

    def switched_on(self, now: datetime | None = None) -> datetime:
        """When receipts were first switched on (DEBUNKBOT_PUBLIC_URL) for this store: notices released before
        then carried no link, so they get no reminder and no escalation. Raised once as an operator alert
        (kind ``receipts``), whose time is that moment, by whichever process is first."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            raise_alerts(conn, [alert(SWITCHED_ON, "receipts", "receipt links are on: notices released from now on "
                                      "carry them, and districts that do not confirm get one reminder, then you an "
                                      "alert", now)])
            return conn.execute(sa.select(alerts.c.created_at).where(alerts.c.key == SWITCHED_ON)).scalar_one()

    def claim_reminders(self, windows: Windows, outlets: Collection[str], now: datetime | None = None,
                        limit: int = 200, since: datetime | None = None) -> list[Reminder]:
        """Claim, once for all processes, the reminders due now: deliveries to ``outlets`` that have the
        notice's latest version, halfway through its window (not yet past its end), not confirmed and not
        reminded, of notices neither retracted nor expired. The caller sends each (``reminder_failed`` notes a
        send that failed; it is not tried again)."""
        if not outlets:
            return []
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            rows = self._silent(conn, now, outlets, half=True, windows=windows, limit=limit, since=since)
            if not rows:
                return []
            insert_new(conn, r, [{"delivery_id": row.id, "version": row.version} for row in rows],
                       ("delivery_id", "version"))
            claimed = {(c.delivery_id, c.version) for c in conn.execute(
                r.update().where(sa.tuple_(r.c.delivery_id, r.c.version).in_([(row.id, row.version) for row in rows]),
                                 r.c.reminded_at.is_(None), r.c.published_at.is_(None))
                .values(reminded_at=now).returning(r.c.delivery_id, r.c.version))}
        return [Reminder(row.id, row.ref, row.outlet_id, row.version, row.message_id, Notice.from_stored(row.payload),
                         row.released_at, row.starts + windows.of(row.urgency))
                for row in rows if (row.id, row.version) in claimed]

    def reminder_failed(self, delivery_id: int, version: int, error: str) -> None:
        with self.db.tx() as conn:
            conn.execute(r.update().where(r.c.delivery_id == delivery_id, r.c.version == version)
                         .values(reminder_error=clean_text(error[:500])))

    def escalate(self, windows: Windows, outlets: Collection[str], names: Mapping[str, str] | None = None,
                 now: datetime | None = None, lookback: timedelta = timedelta(days=7),
                 since: datetime | None = None) -> int:
        """Raise one operator alert per notice version whose window ended (within ``lookback``) while some of
        ``outlets`` had not confirmed it, listing them; marks each listed delivery ``escalated_at``. Once per
        notice version across processes and restarts (the alert's key). Returns the alerts raised."""
        if not outlets:
            return 0
        names = names or {}
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            rows = self._silent(conn, now, outlets, half=False, windows=windows, lookback=lookback, since=since)
            by_notice: dict[tuple[str, int], list[Any]] = {}
            for row in rows:
                by_notice.setdefault((row.ref, row.version), []).append(row)
            raised = 0
            for (ref, version), silent in by_notice.items():
                key = f"unpublished:{ref}:v{version}"
                if conn.execute(sa.select(alerts.c.id).where(alerts.c.key == key)).first() is not None:
                    continue
                window = windows.of(silent[0].urgency)
                listed = "、".join(f"{names.get(s.outlet_id, s.outlet_id)} ({s.outlet_id}"
                                  f"{'' if s.status == 'delivered' else ', ' + s.status})" for s in silent)
                text = (f"notice {ref}{f' (version {version})' if version > 1 else ''} is not confirmed published "
                        f"by {len(silent)} district outlet(s) {_span(window)} after its release: {listed}. "
                        f"See `debunkbot status {ref}`")
                raise_alerts(conn, [alert(key, "unpublished", text, now)])
                insert_new(conn, r, [{"delivery_id": s.id, "version": version} for s in silent],
                           ("delivery_id", "version"))
                conn.execute(r.update().where(r.c.delivery_id.in_([s.id for s in silent]), r.c.version == version,
                                              r.c.escalated_at.is_(None)).values(escalated_at=now))
                raised += 1
        return raised

    def _silent(self, conn: Connection, now: datetime, outlets: Collection[str], half: bool, windows: Windows,
                limit: int | None = None, lookback: timedelta = timedelta(days=7),
                since: datetime | None = None) -> list[Any]:
        """Deliveries to ``outlets`` of live notices that did not confirm the latest version: for a reminder
        (``half``), those that have that version, past half the window and before its end, not yet reminded;
        for the escalation, every one not cancelled of notices whose window ended within ``lookback``."""
        starts = _starts()
        confirmed = sa.exists().where(r.c.delivery_id == d.c.id, r.c.version == n.c.version,
                                      r.c.published_at.is_not(None))
        # a window starts at the release or later, so these bound the rows read before the exact test below
        shortest = min(windows.normal, windows.urgent)
        payload = n.c.payload if half else sa.null().label("payload")  # only a reminder shows the notice
        query = (sa.select(d.c.id, d.c.outlet_id, d.c.status, d.c.message_id, n.c.ref, n.c.version, n.c.urgency,
                           payload, n.c.released_at, starts.label("starts"))
                 .select_from(d.join(n, n.c.id == d.c.notice_id))
                 .where(d.c.outlet_id.in_(list(outlets)), n.c.released_at.is_not(None), n.c.retracted_at.is_(None),
                        sa.or_(n.c.expires_at.is_(None), n.c.expires_at > now),
                        n.c.released_at > now - lookback - max(windows.normal, windows.urgent),
                        n.c.released_at <= now - (shortest / 2 if half else shortest), ~confirmed)
                 .order_by(d.c.id))
        if since is not None:
            query = query.where(n.c.released_at >= since)
        if half:
            reminded = sa.exists().where(r.c.delivery_id == d.c.id, r.c.version == n.c.version,
                                         r.c.reminded_at.is_not(None))
            query = query.where(d.c.status == "delivered", d.c.sent_version == n.c.version, ~reminded)
        else:
            query = query.where(d.c.status != "cancelled")
        rows = []
        for row in conn.execute(query):  # the window's arithmetic in Python: the same on both backends
            window = windows.of(row.urgency)
            start = row.starts
            if half and start + window / 2 <= now < start + window:
                rows.append(row)
            elif not half and now - lookback <= start + window <= now:
                rows.append(row)
        return rows[:limit] if limit is not None else rows

    # --- the report -------------------------------------------------------------------------------------------

    def report(self, since: datetime, outlets: Collection[str], until: datetime | None = None) -> list[ReportRow]:
        """Per outlet, over the notices released from ``since`` (to ``until``): received, published, the median
        time from delivery to confirmation, and how many needed a reminder. Outlets in the order given."""
        query = (sa.select(d.c.id, d.c.outlet_id, d.c.sent_version, r.c.published_at, r.c.delivered_at,
                           r.c.reminded_at)
                 .select_from(d.join(n, n.c.id == d.c.notice_id).outerjoin(r, r.c.delivery_id == d.c.id))
                 .where(d.c.outlet_id.in_(list(outlets)), n.c.released_at >= since))
        if until is not None:
            query = query.where(n.c.released_at < until)
        per: dict[str, dict[int, dict[str, Any]]] = {o: {} for o in outlets}
        with self.db.read() as conn:
            for row in conn.execute(query):
                seen = per[row.outlet_id].setdefault(row.id, {"received": row.sent_version is not None,
                                                              "published": None, "reminded": False})
                earlier = seen["published"]
                if row.published_at is not None and (earlier is None or row.published_at < earlier[0]):
                    seen["published"] = (row.published_at, row.delivered_at)
                seen["reminded"] = seen["reminded"] or row.reminded_at is not None
        rows = []
        for outlet in outlets:
            mine = per[outlet].values()
            times = [(p[0] - p[1]).total_seconds() / 60 for s in mine if (p := s["published"]) and p[1] is not None]
            rows.append(ReportRow(outlet, sum(s["received"] for s in mine),
                                  sum(s["published"] is not None for s in mine),
                                  round(statistics.median(times), 1) if times else None,
                                  sum(s["reminded"] for s in mine)))
        return rows


def _span(window: timedelta) -> str:
    seconds = window.total_seconds()
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g}s"
