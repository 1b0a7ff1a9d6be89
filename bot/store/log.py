"""The delivery log, read-only: what `log`, `status`, `outlets`, the feeds, and later the web API and the
dashboard read. Pages with a cursor, filters by notice, outlet, tier and state, summaries per tier.

A delivery's state is what an operator needs to act on: ``pending`` (due, in flight or waiting for its
next try), ``delivered``, ``failed``, ``held``, with a reason: ``embargo until T``, ``removed from matrix``
(a reload took its outlet out; a reload that brings it back sends it), ``outlet paused``, ``breaker open until
T`` or ``rate limit until T``, or ``cancelled`` (never to be sent), with its reason: ``expired`` or
``retracted``; a pending correction or retraction says so (``correction to version 2``, ``retraction``).

    >>> page = store.log.page(tier="district", status="held", limit=50)     # doctest: +SKIP
    >>> store.log.page(tier="district", status="held", after=page.next)     # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bot.model import Change, Notice
from bot.store.engine import Db
from bot.store.lifecycle import CORRECTION, NOTICE, RETRACTION, Lifecycle
from bot.store.tables import UTCDateTime, attempts, deliveries, notices, outlet_health, receipts

d, n, a, h = deliveries, notices, attempts, outlet_health
STATES = ("pending", "held", "delivered", "failed", "cancelled")


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: int | None  # pass as ``after`` for the next page; None: this was the last


@dataclass(frozen=True)
class Edition:
    """What one fan-out of a notice sends: a version of it (1: the notice as first published; 2 and on: a
    correction, 更正), or its retraction (撤回). An outlet that had received nothing when the notice was corrected
    gets the new version as its first post: that post is part of the correction's fan-out, since the editor who
    corrected the notice expects the correction's line to mean every outlet has the corrected text."""

    notice_id: int
    version: int
    retraction: bool = False


@dataclass
class FanOut:
    """An edition's first tries: what each delivery's first try of it did (one an outlet), and when the first of
    them began and the last ended."""

    edition: Edition
    ref: str
    outcomes: dict[str, int] = field(default_factory=dict)  # delivered | retry | failed -> deliveries
    started: datetime | None = None
    ended: datetime | None = None

    @property
    def outlets(self) -> int:
        return sum(self.outcomes.values())

    @property
    def carries(self) -> str:
        if self.edition.retraction:
            return RETRACTION
        return CORRECTION if self.edition.version > 1 else NOTICE

    @property
    def subject(self) -> str:
        """How its line names it: ``cq-1`` (the notice as first published), ``cq-1 correction v2``,
        ``cq-1 retraction``."""
        if self.carries == NOTICE:
            return self.ref
        return f"{self.ref} {self.carries}" + (f" v{self.edition.version}" if self.carries == CORRECTION else "")

    @property
    def seconds(self) -> float:
        """From the start of the first try to the end of the last."""
        return (self.ended - self.started).total_seconds() if self.started and self.ended else 0.0

    def add(self, outcome: str, started: datetime, latency_ms: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        ended = started + timedelta(milliseconds=latency_ms)
        self.started = min(self.started or started, started)
        self.ended = max(self.ended or ended, ended)


def _sent(attempt: Any) -> tuple[Any, Any]:
    """The edition an attempt sent: its version, and whether it was the retraction (an attempt stored before
    versions existed sent version 1 of the notice)."""
    return sa.func.coalesce(attempt.c.version, 1), sa.func.coalesce(attempt.c.carries, NOTICE) == RETRACTION


def _first_of_its_edition() -> Any:
    """The attempt is its delivery's first try of what it sent: its first try at all, or no earlier attempt of the
    delivery sent the same (looked up by the attempts' index on delivery_id)."""
    earlier = a.alias("earlier")
    version, retraction = _sent(a)
    earlier_version, earlier_retraction = _sent(earlier)
    return sa.or_(a.c.number == 1, ~sa.exists().where(earlier.c.delivery_id == a.c.delivery_id, earlier.c.id < a.c.id,
                                                      earlier_version == version, earlier_retraction == retraction))


def _starts_fan_out() -> Any:
    """A try that can start an edition's fan-out: not an operator's retry, nor a backfill's post to an outlet that
    joined later (a single outlet's try, whose attempt lines say what it did)."""
    return sa.and_(a.c.trigger != "manual", sa.or_(a.c.trigger != "backfill", a.c.carries != NOTICE))


def _awaiting() -> Any:
    """A delivery waiting for its first try of the edition it carries now: pending or embargoed, to an outlet the
    parameter ``skip`` (the feeds: they fetch) leaves, and no attempt of it sent that version (or, when it carries
    the retraction, the retraction) yet."""
    version, retraction = _sent(a)
    tried = sa.exists().where(a.c.delivery_id == d.c.id, version == d.c.version,
                              retraction == (d.c.carries == RETRACTION))
    return sa.and_(d.c.status.in_(("pending", "held")), d.c.outlet_id.not_in(sa.bindparam("skip", expanding=True)),
                   sa.or_(d.c.attempts == 0, ~tried))


_FANNING_OUT = (sa.select(d.c.notice_id, d.c.version, (d.c.carries == RETRACTION).label("retraction"))
                .where(_awaiting()).distinct())
# One edition, looked at until its first delivery waiting; one statement for every edition (built once: a statement
# shaped by how many editions were asked about was compiled again, and kept, for each count: 10 MB at F4's 200).
_EDITION_FANNING_OUT = (sa.select(sa.literal(1)).where(
    _awaiting(), d.c.notice_id == sa.bindparam("notice_id"), d.c.version == sa.bindparam("version"),
    (d.c.carries == RETRACTION) == sa.bindparam("retraction", type_=sa.Boolean)).limit(1))


def _hold(now: datetime) -> tuple[Any, Any]:
    """Why a delivery is held (None: it is not), and until when."""
    pending = d.c.status == "pending"
    kind = sa.case(
        (d.c.status == "held", "embargo"),
        (pending & h.c.removed_at.is_not(None), "removed from matrix"),
        (pending & h.c.paused_at.is_not(None), "outlet paused"),
        (pending & (h.c.open_until > now), "breaker open"),
        (pending & (h.c.rate_limited_until > now), "rate limit"),
        else_=sa.null(),
    )
    until = sa.type_coerce(sa.case(
        (d.c.status == "held", d.c.next_attempt_at),
        (pending & (h.c.removed_at.is_not(None) | h.c.paused_at.is_not(None)), sa.null()),
        (pending & (h.c.open_until > now), h.c.open_until),
        (pending & (h.c.rate_limited_until > now), h.c.rate_limited_until),
        else_=sa.null(),
    ), UTCDateTime)
    return kind, until


def _state(kind: Any) -> Any:
    return sa.case((kind.is_not(None), "held"), else_=d.c.status)


def _reason(row: dict[str, Any]) -> str | None:
    kind, until, why, cancelled = row.pop("hold"), row.pop("until"), row.pop("paused_reason"), row.pop("cancel_reason")
    if row["status"] == "cancelled":
        return cancelled
    if kind is None:  # a pending correction or retraction says so (a held one says why it waits)
        if row["status"] == "pending" and row["carries"] != "notice":
            return "retraction" if row["carries"] == "retraction" else f"correction to version {row['version']}"
        return None
    if kind == "outlet paused":
        return f"outlet paused: {why}" if why else kind
    return f"{kind} until {until.isoformat(timespec='seconds')}" if until else kind


def _first_tries(where: Any) -> Any:
    """The editions with a first try among the attempts ``where`` picks, to the outlets the parameter ``skip``
    leaves (built once: the daemon's leader runs these every scan interval)."""
    version, retraction = _sent(a)
    return (sa.select(d.c.notice_id, version, retraction).select_from(a.join(d, d.c.id == a.c.delivery_id))
            .where(where, _starts_fan_out(), d.c.outlet_id.not_in(sa.bindparam("skip", expanding=True)),
                   _first_of_its_edition())
            .distinct())


_FIRST_TRIED_SINCE = _first_tries(a.c.started_at >= sa.bindparam("since"))
_FIRST_TRIED_AFTER = _first_tries(a.c.id > sa.bindparam("after"))


class DeliveryLog:
    def __init__(self, db: Db) -> None:
        self.db = db

    def notice(self, ref: str) -> tuple[int, Notice] | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(n.c.id, n.c.payload).where(n.c.ref == ref)).first()
        return (row.id, Notice.from_stored(row.payload)) if row else None

    def page(
        self, ref: str | None = None, outlet_id: str | None = None, tier: str | None = None,
        status: str | None = None, after: int | None = None, limit: int | None = 100, since: datetime | None = None,
    ) -> Page:
        """Deliveries in the order they were stored, ``limit`` at a time from the cursor ``after``; each row:
        notice, outlet, tier, status (the state above), reason (why it is held or cancelled; what a pending
        correction or retraction carries), attempts, http_status, error, delivered_at, next_attempt_at, message_id,
        version (of the notice it carries), carries (notice | correction | retraction)."""
        with self.db.read() as conn:
            kind, until = _hold(self.db.now(conn))
            query = (
                sa.select(
                    d.c.id, n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), d.c.tier,
                    _state(kind).label("status"), kind.label("hold"), until.label("until"), h.c.paused_reason,
                    d.c.cancel_reason,
                    d.c.attempts, d.c.http_status, d.c.error, d.c.delivered_at, d.c.next_attempt_at, d.c.message_id,
                    d.c.version, d.c.carries,
                )
                .select_from(d.join(n, n.c.id == d.c.notice_id).outerjoin(h, h.c.outlet_id == d.c.outlet_id))
                .order_by(d.c.id)
            )
            for column, value in ((n.c.ref, ref), (d.c.outlet_id, outlet_id), (d.c.tier, tier),
                                  (_state(kind), status)):
                if value is not None:
                    query = query.where(column == value)
            if after is not None:
                query = query.where(d.c.id > after)
            if since is not None:  # changed since then (the pages' delivery log)
                query = query.where(d.c.updated_at >= since)
            if limit is not None:
                query = query.limit(limit + 1)
            rows = [dict(row._mapping) for row in conn.execute(query)]
        more = limit is not None and len(rows) > limit
        rows = rows[:limit] if more else rows
        for row in rows:
            row["reason"] = _reason(row)
        return Page(rows, rows[-1]["id"] if more else None)

    def notices(
        self, state: str | None = None, since: datetime | None = None, until: datetime | None = None,
        urgency: str | None = None, region: str | None = None, category: str | None = None,
        after: int | None = None, limit: int = 50, newest_first: bool = False, notice_id: int | None = None,
    ) -> Page:
        """Notices in the order they were submitted (``newest_first``: newest first, ``after`` then counting down),
        ``limit`` at a time from the cursor ``after``, filtered by state, submission time (``since`` inclusive,
        ``until`` exclusive), urgency, a region the notice names
        (a citywide notice names 全市) and category. Each row: id, ref, notice (the Notice), state, submitted_at,
        released_at, and its deliveries by stored status (delivered, pending, held, failed, cancelled).

        A notice's state: ``retracted`` (撤回: whatever its deliveries say), ``held`` (embargoed, not released), ``failed`` (some outlet's delivery failed),
        ``pending`` (some outlet does not have it yet), ``cancelled`` (it expired before some outlet had it:
        nothing more goes out) or ``delivered`` (every outlet has it). ``notice_id``: that one notice only. Only the
        deliveries of the notices returned are counted, never the whole store's.
        """
        def some(*statuses: str) -> Any:  # one of the notice's deliveries is in one of these (it stops at the first)
            return sa.exists().where(d.c.notice_id == n.c.id, d.c.status.in_(statuses))

        notice_state = sa.case((n.c.retracted_at.is_not(None), "retracted"), (n.c.released_at.is_(None), "held"),
                               (some("failed"), "failed"), (some("pending", "held"), "pending"),
                               (some("cancelled"), "cancelled"), else_="delivered")
        query = (sa.select(n.c.id, n.c.ref, n.c.payload, n.c.submitted_at, n.c.released_at,
                           notice_state.label("state"))
                 .order_by(n.c.id.desc() if newest_first else n.c.id))
        if notice_id is not None:
            query = query.where(n.c.id == notice_id)
        if state is not None:
            query = query.where(notice_state == state)
        if since is not None:
            query = query.where(n.c.submitted_at >= since)
        if until is not None:
            query = query.where(n.c.submitted_at < until)
        if urgency is not None:
            query = query.where(n.c.urgency == urgency)
        # The payload is canonical JSON (sorted keys, no spaces, quotes inside strings escaped), so these
        # substrings can only be the field itself; a region is then checked exactly on the notice.
        if category is not None:
            query = query.where(n.c.payload.contains(f'"category":{json.dumps(category, ensure_ascii=False)}',
                                                     autoescape=True))
        if region is not None:
            query = query.where(n.c.payload.contains(json.dumps(region, ensure_ascii=False), autoescape=True))
        rows: list[dict[str, Any]] = []
        cursor = after
        with self.db.read() as conn:
            while len(rows) <= limit:
                page = query if cursor is None else query.where(n.c.id < cursor if newest_first else n.c.id > cursor)
                batch = list(conn.execute(page.limit(limit + 1)))
                for row in batch:
                    notice = Notice.from_stored(row.payload)
                    if region is None or region in notice.regions:
                        rows.append({"id": row.id, "ref": row.ref, "notice": notice, "state": row.state,
                                     "submitted_at": row.submitted_at, "released_at": row.released_at})
                if len(batch) <= limit:
                    break
                cursor = batch[-1].id
            more = len(rows) > limit
            rows = rows[:limit]
            counts = self._status_counts(conn, [r["id"] for r in rows])  # the page's notices only
        for row in rows:
            row.update({s: counts.get((row["id"], s), 0) for s in STATES})
        return Page(rows, rows[-1]["id"] if more else None)

    @staticmethod
    def _status_counts(conn: sa.Connection, notice_ids: list[int]) -> dict[tuple[int, str], int]:
        """(notice id, stored status) -> how many of its deliveries have it, for these notices."""
        if not notice_ids:
            return {}
        return {(r.notice_id, r.status): r.n for r in conn.execute(
            sa.select(d.c.notice_id, d.c.status, sa.func.count().label("n"))
            .where(d.c.notice_id.in_(notice_ids)).group_by(d.c.notice_id, d.c.status))}

    def tier_counts(self, notice_ids: Collection[int]) -> dict[int, dict[str, dict[str, int]]]:
        """notice id -> tier -> its deliveries by stored status and in all (``total``), for a page of notices:
        ``{7: {"city": {"delivered": 5, "total": 5}, "district": {"delivered": 30, "pending": 9, "total": 39}}}``."""
        out: dict[int, dict[str, dict[str, int]]] = {}
        if not notice_ids:
            return out
        with self.db.read() as conn:
            for row in conn.execute(sa.select(d.c.notice_id, d.c.tier, d.c.status, sa.func.count().label("n"))
                                    .where(d.c.notice_id.in_(list(notice_ids)))
                                    .group_by(d.c.notice_id, d.c.tier, d.c.status)):
                tier = out.setdefault(row.notice_id, {}).setdefault(row.tier, {"total": 0})
                tier[row.status] = row.n
                tier["total"] += row.n
        return out

    def cells(self, ref: str, updated_since: datetime | None = None) -> list[dict[str, Any]]:
        """A notice's deliveries as the matrix page shows them, one per outlet: id, outlet, tier, status (the state
        above), reason, attempts, http_status, error, updated_at, published_at (when the outlet confirmed, by its
        receipt, that it published the version the delivery carries); ``updated_since``: only those changed since
        then (a receipt touches its delivery's updated_at). The pages' live matrix polls this."""
        published = (sa.select(receipts.c.published_at)
                     .where(receipts.c.delivery_id == d.c.id, receipts.c.version == d.c.version)
                     .scalar_subquery())
        with self.db.read() as conn:
            kind, until = _hold(self.db.now(conn))
            query = (
                sa.select(d.c.id, d.c.outlet_id.label("outlet"), d.c.tier, _state(kind).label("status"),
                          kind.label("hold"), until.label("until"), h.c.paused_reason, d.c.cancel_reason,
                          d.c.attempts, d.c.http_status, d.c.error, d.c.updated_at, d.c.version, d.c.carries,
                          published.label("published_at"))
                .select_from(d.outerjoin(h, h.c.outlet_id == d.c.outlet_id))
                .where(d.c.notice_id == sa.select(n.c.id).where(n.c.ref == ref).scalar_subquery())
                .order_by(d.c.id)
            )
            if updated_since is not None:
                query = query.where(d.c.updated_at >= updated_since)
            result = conn.execute(query)
            keys = list(result.keys())  # once, not once a row: a matrix has a thousand
            rows = [dict(zip(keys, row, strict=True)) for row in result]
        for row in rows:
            row["reason"] = _reason(row)
        return rows

    def notice_row(self, ref: str) -> dict[str, Any] | None:
        """One notice as ``notices`` lists it, by ref."""
        with self.db.read() as conn:
            notice_id = conn.execute(sa.select(n.c.id).where(n.c.ref == ref)).scalar_one_or_none()
        if notice_id is None:
            return None
        rows = self.notices(notice_id=notice_id, limit=1).rows
        return rows[0] if rows else None

    def delivery(self, delivery_id: int) -> dict[str, Any] | None:
        """One delivery as ``page`` lists it."""
        rows = self.page(after=delivery_id - 1, limit=1).rows
        return rows[0] if rows and rows[0]["id"] == delivery_id else None

    def deliveries(
        self, ref: str | None = None, outlet_id: str | None = None, status: str | None = None, tier: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every matching delivery, in one list (``page`` for a screenful)."""
        return self.page(ref, outlet_id, tier, status, limit=None).rows

    def attempts(
        self, ref: str | None = None, outlet_id: str | None = None, after: int | None = None, limit: int | None = None,
        delivery_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Every HTTP try, in order (``id`` is the cursor for ``after``)."""
        query = (
            sa.select(
                a.c.id, n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), a.c.number.label("attempt"),
                a.c.trigger, a.c.started_at, a.c.latency_ms, a.c.outcome, a.c.http_status, a.c.platform_code,
                a.c.error, a.c.response,
            )
            .select_from(a.join(d, d.c.id == a.c.delivery_id).join(n, n.c.id == d.c.notice_id))
            .order_by(a.c.id)
        )
        if ref:
            query = query.where(n.c.ref == ref)
        if outlet_id:
            query = query.where(d.c.outlet_id == outlet_id)
        if delivery_id is not None:
            query = query.where(a.c.delivery_id == delivery_id)
        if after is not None:
            query = query.where(a.c.id > after)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def tiers(self, ref: str | None = None) -> dict[str, dict[str, int]]:
        """Deliveries per tier and state, for one notice or all: {"district": {"delivered": 39, "held": 2}}."""
        with self.db.read() as conn:
            state = _state(_hold(self.db.now(conn))[0])
            query = (sa.select(d.c.tier, state.label("state"), sa.func.count().label("n"))
                     .select_from(d.outerjoin(h, h.c.outlet_id == d.c.outlet_id))
                     .group_by(d.c.tier, state))
            if ref:
                query = query.where(d.c.notice_id == sa.select(n.c.id).where(n.c.ref == ref).scalar_subquery())
            summary: dict[str, dict[str, int]] = {}
            for row in conn.execute(query):
                summary.setdefault(row.tier, {})[row.state] = row.n
        return summary

    def counts(self, ref: str | None = None) -> dict[str, int]:
        """Deliveries by state, for one notice or all."""
        total: dict[str, int] = {}
        for states in self.tiers(ref).values():
            for state, count in states.items():
                total[state] = total.get(state, 0) + count
        return total

    def by_outlet(self) -> dict[str, dict[str, Any]]:
        """outlet id -> its tier and its deliveries counted by stored status (pending: not yet delivered)."""
        out: dict[str, dict[str, Any]] = {}
        with self.db.read() as conn:
            for row in conn.execute(
                sa.select(d.c.outlet_id, d.c.tier, d.c.status, sa.func.count().label("n"))
                .group_by(d.c.outlet_id, d.c.tier, d.c.status)
            ):
                out.setdefault(row.outlet_id, {"tier": row.tier})[row.status] = row.n
        return out

    def notices_of(self, delivery_ids: Collection[int]) -> list[Any]:
        """(id, notice_id, ref) of each of these deliveries: how the daemon's log names them."""
        ids = sorted(delivery_ids)
        with self.db.read() as conn:
            return [row for start in range(0, len(ids), 500)  # SQLite caps the parameters of one statement
                    for row in conn.execute(sa.select(d.c.id, d.c.notice_id, n.c.ref).join(n, n.c.id == d.c.notice_id)
                                            .where(d.c.id.in_(ids[start:start + 500])))]

    def last_attempt_id(self) -> int:
        """The id of the newest attempt (0: none yet)."""
        with self.db.read() as conn:
            return conn.execute(sa.select(sa.func.max(a.c.id))).scalar_one() or 0

    def fanning_out(self, editions: Collection[Edition] | None, skip_outlets: Collection[str] = ()) -> set[Edition]:
        """The editions (of ``editions``; None: of all) with a delivery waiting for its first try of it.
        ``skip_outlets``, the feeds, fetch instead."""
        skip = list(skip_outlets)
        with self.db.read() as conn:
            if editions is None:
                return {Edition(row.notice_id, row.version, bool(row.retraction))
                        for row in conn.execute(_FANNING_OUT, {"skip": skip})}
            return {e for e in editions if conn.execute(_EDITION_FANNING_OUT, {
                "skip": skip, "notice_id": e.notice_id, "version": e.version, "retraction": e.retraction}).first()}

    def first_tried_since(self, since: datetime, skip_outlets: Collection[str] = ()) -> set[Edition]:
        """The editions a delivery had its first try of at ``since`` or later."""
        return self._editions(_FIRST_TRIED_SINCE, since=since, skip=list(skip_outlets))

    def first_tried_after(self, after: int, skip_outlets: Collection[str] = ()) -> set[Edition]:
        """The editions a delivery had its first try of in an attempt after attempt ``after``."""
        return self._editions(_FIRST_TRIED_AFTER, after=after, skip=list(skip_outlets))

    def _editions(self, query: Any, **params: Any) -> set[Edition]:
        with self.db.read() as conn:
            return {Edition(row[0], row[1], bool(row[2])) for row in conn.execute(query, params)}

    def fan_outs(self, editions: Collection[Edition], skip_outlets: Collection[str] = ()) -> list[FanOut]:
        """Each edition's first tries, whichever process made them: one a delivery (its earliest try of the edition,
        should a process have died before it recorded its own and another tried again), to the outlets
        ``skip_outlets`` leaves; an edition not tried yet is left out."""
        wanted = set(editions)
        if not wanted:
            return []
        version, retraction = _sent(a)
        ids = list({e.notice_id for e in wanted})
        pushed = sa.and_(d.c.notice_id.in_(ids), d.c.outlet_id.not_in(list(skip_outlets)))
        first = (sa.select(sa.func.min(a.c.id)).select_from(a.join(d, d.c.id == a.c.delivery_id))
                 .where(pushed).group_by(a.c.delivery_id, version, retraction))
        with self.db.read() as conn:
            refs = {r.id: r.ref for r in conn.execute(sa.select(n.c.id, n.c.ref).where(n.c.id.in_(ids)))}
            fan_outs = {e: FanOut(e, refs[e.notice_id]) for e in wanted}
            for row in conn.execute(sa.select(d.c.notice_id, version, retraction, a.c.outcome, a.c.started_at,
                                              a.c.latency_ms)
                                    .select_from(a.join(d, d.c.id == a.c.delivery_id)).where(a.c.id.in_(first))):
                fan_out = fan_outs.get(Edition(row[0], row[1], bool(row[2])))
                if fan_out is not None:
                    fan_out.add(row.outcome, row.started_at, row.latency_ms)
        return [f for f in fan_outs.values() if f.outlets]

    def unsettled(self) -> list[Any]:
        """Deliveries not yet settled, counted per outlet, stored status and embargo (one grouped query):
        outlet_id, status, embargoed, count, next_at, publish_at, paused_at, open_until, removed_at."""
        query = (
            sa.select(d.c.outlet_id, d.c.status, n.c.released_at.is_(None).label("embargoed"),
                      sa.func.count().label("count"), sa.func.min(d.c.next_attempt_at).label("next_at"),
                      sa.func.min(n.c.publish_at).label("publish_at"), sa.func.max(h.c.paused_at).label("paused_at"),
                      sa.func.max(h.c.open_until).label("open_until"), sa.func.max(h.c.removed_at).label("removed_at"))
            .select_from(d.join(n, n.c.id == d.c.notice_id).outerjoin(h, h.c.outlet_id == d.c.outlet_id))
            .where(d.c.status.in_(("pending", "held")))
            .group_by(d.c.outlet_id, d.c.status, n.c.released_at.is_(None))
        )
        with self.db.read() as conn:
            return list(conn.execute(query).all())

    def feed_entries(self, outlet_id: str, limit: int = 50
                     ) -> list[tuple[int, str, Notice, datetime, Change | None]]:
        """An outlet's released notices, newest first: (delivery id, delivery status, notice (its latest version),
        published at, and the change a feed shows in its place: the retraction, or the correction of the version
        before; None for a notice as first published)."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(d.c.id, d.c.status, d.c.message_id, n.c.id.label("notice_id"), n.c.payload, n.c.released_at,
                          n.c.version, n.c.retracted_at, n.c.retraction_reason)
                .select_from(d.join(n, n.c.id == d.c.notice_id))
                .where(d.c.outlet_id == outlet_id, d.c.status.in_(("pending", "delivered")),
                       n.c.released_at.is_not(None))
                .order_by(n.c.released_at.desc(), n.c.id.desc())
                .limit(limit)
            ).all()
            keys = {(r.notice_id, r.version, "retraction" if r.retracted_at else "correction",
                     r.version - 1 if r.version > 1 else None, r.message_id)
                    for r in rows if r.retracted_at or r.version > 1}
            changes = Lifecycle(self.db).changes_for(conn, keys) if keys else {}
        return [(r.id, r.status, Notice.from_stored(r.payload), r.released_at, changes.get(
            (r.notice_id, r.version, "retraction" if r.retracted_at else "correction",
             r.version - 1 if r.version > 1 else None, r.message_id))) for r in rows]


def dumps(row: dict[str, Any]) -> str:
    """A delivery-log row as one JSON line."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}, ensure_ascii=False
    )
