"""What an editor or an operator asks of the bot, and what it does for them, below any surface: the CLI
prints these, the HTTP API answers with them. Neither computes any of it on its own.

    >>> status = notice_status(store, "cq-2026-1127-001")                  # doctest: +SKIP
    >>> [(t.tier, t.delivered, t.held) for t in status.tiers]               # doctest: +SKIP
    >>> retry(store, outlet_id="dist-yuzhong", dry_run=True).held           # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.regions import CHONGQING, Tier

if TYPE_CHECKING:  # the read commands import this: only what they run is imported (bot.cli)
    from bot.model import Notice
    from bot.outlets import OutletMatrix
    from bot.store import Actor, Store

STATES = ("delivered", "pending", "held", "failed", "cancelled")


@dataclass(frozen=True)
class TierSummary:
    tier: str
    outlets: int
    delivered: int
    pending: int
    held: int
    failed: int
    cancelled: int
    published: int = 0  # of the delivered, how many confirmed they republished the current version (receipts)


@dataclass(frozen=True)
class NoticeStatus:
    """Who has a notice: per tier, and each delivery not yet delivered (held ones with why)."""

    ref: str
    notice: Notice
    deliveries: int
    tiers: list[TierSummary]
    missing: list[dict[str, Any]]  # delivery-log rows (store.log.page) whose status is not delivered
    version: int = 1  # 2 and on: corrected (更正)
    retraction: dict[str, Any] | None = None  # at, by, reason: retracted (撤回)


def notice_status(store: Store, ref: str) -> NoticeStatus | None:
    """None when no notice has ``ref``."""
    found = store.log.notice(ref)
    if found is None:
        return None
    rows = with_receipts(store, store.log.deliveries(ref=ref))
    tiers = []
    for tier in Tier:
        mine = [r for r in rows if r["tier"] == tier.value]
        if mine:
            counts = {s: sum(r["status"] == s for r in mine) for s in STATES}
            published = sum(1 for r in mine if r["published"] and r["published"]["current"])
            tiers.append(TierSummary(tier.value, len(mine), **counts, published=published))
    life = store.lifecycle.state(ref) or {}
    return NoticeStatus(ref, found[1], len(rows), tiers, [r for r in rows if r["status"] != "delivered"],
                        life.get("version", 1), life.get("retraction"))


def outlet_rows(store: Store, matrix: OutletMatrix) -> list[dict[str, Any]]:
    """Every outlet of the matrix, then any other the store still knows, with its health: outlet, tier, status
    (ok, degraded, paused), consecutive_failures, last_success_at, last_failure_at, breaker_open_until,
    pending, failed, paused_reason. Never a URL or a secret."""
    health = store.health.all()
    by_outlet = store.log.by_outlet()
    tiers = {o.id: o.tier.value for o in matrix.outlets}
    rows = []
    for outlet_id in [*tiers, *sorted((by_outlet.keys() | health.keys()) - tiers.keys())]:
        h = health.get(outlet_id)
        counts = by_outlet.get(outlet_id, {})
        rows.append({
            "outlet": outlet_id, "tier": tiers.get(outlet_id) or counts.get("tier"), "status": h.status if h else "ok",
            "consecutive_failures": h.consecutive_failures if h else 0,
            "last_success_at": h.last_success_at if h else None, "last_failure_at": h.last_failure_at if h else None,
            "breaker_open_until": h.open_until if h else None, "pending": counts.get("pending", 0),
            "failed": counts.get("failed", 0), "paused_reason": h.paused_reason if h else None,
        })
    return rows


@dataclass(frozen=True)
class Hold:
    """Why requeued deliveries of an outlet still wait: its pause, or its open breaker (until when)."""

    outlet: str
    paused: bool
    until: datetime | None
    deliveries: int


@dataclass(frozen=True)
class Retried:
    rows: list[dict[str, Any]]  # notice, outlet, attempts, http_status, error, updated_at, id
    dry_run: bool
    held: dict[str, Hold] = field(default_factory=dict)  # outlet id -> why its requeued deliveries wait


def retry(
    store: Store, ref: str | None = None, outlet_id: str | None = None, since: datetime | None = None,
    status: str = "failed", dry_run: bool = False, actor: Actor | None = None, now: datetime | None = None,
) -> Retried:
    """Requeue matching deliveries (``store.queue.requeue``), audited as ``actor``'s, and say which of them
    still wait for a paused outlet or an open breaker."""
    rows = store.queue.requeue(ref=ref, outlet_id=outlet_id, since=since, status=status, dry_run=dry_run,
                               actor=actor, now=now)
    health = store.health.all()
    now = now or store.db.clock()
    held: dict[str, Hold] = {}
    for outlet in dict.fromkeys(r["outlet"] for r in rows):
        h = health.get(outlet)
        waiting = sum(r["outlet"] == outlet for r in rows)
        if h is not None and h.paused_at is not None:
            held[outlet] = Hold(outlet, True, None, waiting)
        elif h is not None and h.open_until is not None and h.open_until > now:
            held[outlet] = Hold(outlet, False, h.open_until, waiting)
    return Retried(rows, dry_run, held)


def since(text: str, now: datetime | None = None) -> datetime:
    """An age (30m, 2h, 1d) before ``now``, or an ISO 8601 time; one without an offset is Chongqing time."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[match[2]]
        return (now or datetime.now(UTC)) - timedelta(seconds=float(match[1]) * unit)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor an age such as 30m, 2h or 1d") from None
    return (when.replace(tzinfo=CHONGQING) if when.tzinfo is None else when).astimezone(UTC)


def with_receipts(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delivery-log rows with ``published``: None, or the outlet's receipt (回执) ``{version, at, url, current}``
    (``current``: it confirms the notice's latest version). The log, status and the API show it."""
    marks = store.receipts.of_deliveries([r["id"] for r in rows])
    for row in rows:
        mark = marks.get(row["id"])
        row["published"] = None if mark is None else {"version": mark.version, "at": mark.at, "url": mark.url,
                                                      "current": mark.current}
    return rows


@dataclass(frozen=True)
class ReportLine:
    """One district's line of the receipts report (what the city office sends upward)."""

    outlet: str
    name: str
    region: str
    received: int
    published: int
    median_minutes: float | None
    reminded: int


REPORT_HEADER = ("区县融媒体中心", "outlet", "region", "收到通报", "已转载", "转载用时中位数（分钟）", "需提醒")


def receipt_report(store: Store, matrix: OutletMatrix, since_: datetime, until: datetime | None = None
                   ) -> list[ReportLine]:
    """Per district outlet of the matrix: notices released in the period that reached it, how many it confirmed
    published, the median minutes from delivery to confirmation, and how many needed a reminder (提醒)."""
    districts = [o for o in matrix.outlets if o.tier.value == "district"]
    rows = {r.outlet: r for r in store.receipts.report(since_, [o.id for o in districts], until)}
    return [ReportLine(o.id, o.name, o.region, rows[o.id].received, rows[o.id].published, rows[o.id].median_minutes,
                       rows[o.id].reminded) for o in districts]


def report_csv(lines: list[ReportLine]) -> str:
    """The report as CSV with a UTF-8 byte order mark (Excel opens Chinese text right only with it)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_HEADER)
    for line in lines:
        writer.writerow([line.name, line.outlet, line.region, line.received, line.published,
                         "" if line.median_minutes is None else f"{line.median_minutes:g}", line.reminded])
    return "\ufeff" + out.getvalue()
