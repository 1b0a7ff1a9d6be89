"""The queue: notices in with their deliveries, claims under a lease, attempts recorded, embargoes released.

    >>> store.queue.add_notices([(notice, outlets)], source="cli")            # doctest: +SKIP
    >>> claims = store.queue.claim(200, per_outlet=2, lease=timedelta(seconds=60))   # doctest: +SKIP
    >>> store.queue.record([AttemptRecord(...)])                              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bot.health import HealthPolicy
from bot.model import Change, Notice
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text, insert_new
from bot.store.health import OutletHealth
from bot.store.lifecycle import NOTICE, Lifecycle, NotCorrectable, add_deliveries, settle, webhook_id
from bot.store.metrics import add_latencies
from bot.store.tables import UTCDateTime, attempts, deliveries, notice_versions, notices, outlet_health

if TYPE_CHECKING:
    from bot.outlets import Outlet
    from channels.base import RateLimit

d, a, h = deliveries, attempts, outlet_health


# -- the conditions every query of the queue shares, written once --------------------------------------

def leased(now: datetime) -> sa.ColumnElement[bool]:
    """A pending delivery under a live lease: a send in flight (or claimed ahead, waiting to be sent)."""
    return sa.and_(d.c.status == "pending", d.c.lease_expires_at > now)


def claimable(now: datetime, t: Any = d) -> sa.ColumnElement[bool]:
    """A pending delivery (of ``deliveries`` or an alias of it) that is due, under no live lease and not expired."""
    return sa.and_(t.c.status == "pending", t.c.next_attempt_at <= now,
                   sa.or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
                   sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now))


def expired(now: datetime) -> sa.ColumnElement[bool]:
    """An unsent delivery of a notice past its ``expires_at``, not under a live lease (a claimed one is the
    claimer's to cancel, just before its send would start)."""
    return sa.and_(d.c.status.in_(("pending", "held")), d.c.expires_at <= now,
                   sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now))


def _cancel_expired(conn: sa.Connection, now: datetime) -> dict[str, int]:
    """``Queue.cancel_expired`` in the caller's transaction (every claim runs it first)."""
    ids = list(conn.execute(_expiring(), {"x_now": now}).scalars())
    if not ids:
        return {}
    refs = dict(conn.execute(sa.select(notices.c.id, notices.c.ref).where(notices.c.id.in_(set(ids)))).all())
    cancelled: dict[str, int] = {}
    for notice_id in ids:
        cancelled[refs[notice_id]] = cancelled.get(refs[notice_id], 0) + 1
    return cancelled


@functools.cache
def _expiring() -> Any:
    now = sa.bindparam("x_now", type_=UTCDateTime)
    return (d.update().where(expired(now))
            .values(status="cancelled", cancel_reason=EXPIRED, next_attempt_at=None, lease_owner=None,
                    lease_expires_at=None, updated_at=now)
            .returning(d.c.notice_id))


def outlet_open(now: datetime) -> sa.ColumnElement[bool]:
    """The outlet (joined as ``outlet_health``, maybe without a row) is in the matrix (no reload took it out)
    and not paused, and its breaker is not open (a cooled-down breaker lets a probe through)."""
    return sa.and_(h.c.removed_at.is_(None), h.c.paused_at.is_(None),
                   sa.or_(h.c.open_until.is_(None), h.c.open_until <= now))


def outlet_takes_sends(now: datetime) -> sa.ColumnElement[bool]:
    """``outlet_open``, and its rate limit is not used up."""
    return sa.and_(outlet_open(now), sa.or_(h.c.rate_limited_until.is_(None), h.c.rate_limited_until <= now))


class RefConflict(ValueError):
    """A ref already stored with different content, submitted without ``correct: true``."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"ref {ref!r} is already stored with different content; use a new ref, or mark it "
                         "correct: true with a correction_note to store it as a correction (更正)")
        self.ref = ref


@dataclass(frozen=True)
class Added:
    ref: str
    created: bool  # False: the identical notice was already stored (a no-op)
    deliveries: int
    version: int = 1  # 2 and on: stored as a correction
    draft: bool = False  # stored for review (DEBUNKBOT_REVIEW_STAGES): no delivery until it is released


@dataclass(frozen=True)
class Claim:
    """A delivery claimed under a lease, ready to send."""

    delivery_id: int
    notice_id: int
    outlet_id: str
    message_id: str
    attempt: int  # the number this try will have, from 1
    schedule_start: int = 0  # attempts made before the current retry schedule began (a manual retry restarts it)
    channel_state: Mapping[str, Any] | None = None  # what the channel kept from this delivery's earlier tries
    urgent: bool = False  # in the urgent lane: claimed first, retried on the urgent schedule
    expires_at: datetime | None = None  # not sent from then on: cancelled with reason "expired"
    version: int = 1  # the notice version this try sends
    carries: str = "notice"  # notice | correction | retraction (bot.store.lifecycle)
    sent_version: int | None = None  # the version the outlet has (a correction says what changed since)
    origin: str = "submit"  # | backfill

    @property
    def trigger(self) -> str:
        if self.schedule_start and self.attempt == self.schedule_start + 1 and self.carries == "notice":
            return "manual"
        return "backfill" if self.origin == "backfill" else "scheduled"

    @property
    def webhook_id(self) -> str:
        """What the receiver dedupes on: one per version (and the retraction) x outlet."""
        return webhook_id(self.message_id, self.version, self.carries)


@dataclass(frozen=True)
class AttemptRecord:
    """What one HTTP try did, and what the delivery becomes."""

    delivery_id: int
    outlet_id: str
    attempt: int
    started_at: datetime
    latency_ms: float
    outcome: str  # delivered | retry | failed | cancelled (never sent: no attempt is logged; ``error`` says why)
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    next_attempt_at: datetime | None = None  # for retry
    pause_outlet: str | None = None  # outlet id to pause (410 Gone)
    trigger: str = "scheduled"
    exhausted: bool = False  # the retry schedule ran out: the operators hear of it
    platform_code: str | None = None  # the platform's own code in its answer (errcode 45009, …)
    channel_state: Mapping[str, Any] | None = None  # kept for the delivery's next try; None: keep what is there
    channel: str = ""  # the outlet's channel (the latency histogram's label); "" when the outlet is unknown
    version: int = 1  # the notice version tried
    carries: str = "notice"  # what the try carried: notice | correction | retraction


def new_message_id() -> str:
    """Stable per notice x outlet; sent as webhook-id on every try so receivers can dedupe."""
    return "msg_" + secrets.token_hex(12)


CLAIM_LOCK = 0x6465_6272  # pg advisory lock key ("debr"): claimers take turns
STATUS_AFTER = {"delivered": "delivered", "retry": "pending", "failed": "failed", "cancelled": "cancelled"}
URGENT_LANE, NORMAL_LANE = 0, 1  # deliveries.lane: claimed lane by lane, lowest first
EXPIRED = "expired"  # the cancel_reason of a delivery whose notice expired before it was sent


class Queue:
    def __init__(self, db: Db, health: OutletHealth, lifecycle: Lifecycle | None = None) -> None:
        self.db = db
        self.health = health
        self.lifecycle = lifecycle or Lifecycle(db)

    # -- in ---------------------------------------------------------------------------------------

    def add_notices(
        self, batch: Sequence[tuple[Notice, Sequence[Outlet]]], source: str, now: datetime | None = None,
        actor: Actor | None = None,
    ) -> list[Added]:
        """Store notices with all their deliveries in one transaction: all of them, or none. Each notice
        stored is audited as ``actor``'s (an identical one already stored changes nothing, and is not).

        Raises RefConflict, storing nothing, when a ref is already stored with other content.
        """
        with self.db.tx() as conn:
            results = self.add_in(conn, batch, source, now or self.db.now(conn), actor)
            self.db.notify(conn)
        return results

    def add_in(self, conn: sa.Connection, batch: Sequence[tuple[Notice, Sequence[Outlet]]], source: str,
               now: datetime, actor: Actor | None) -> list[Added]:
        """``add_notices`` in the caller's transaction (the review releases a draft with it); no notify."""
        results: list[Added] = []
        for notice, outlets in batch:
            digest = notice.content_hash()
            existing = conn.execute(sa.select(notices).where(notices.c.ref == notice.ref)).first()
            if existing is not None:
                if existing.content_hash == digest:
                    results.append(Added(notice.ref, created=False, deliveries=0, version=existing.version))
                    continue
                if not notice.correct:
                    raise RefConflict(notice.ref)
                version, count = self.lifecycle.correct_in(conn, existing, notice, outlets, now, actor, source)
                results.append(Added(notice.ref, created=True, deliveries=count, version=version))
                continue
            if notice.correct:
                raise NotCorrectable(notice.ref, "no notice is stored under it; submit it without correct: true")
            held = notice.publish_at is not None and notice.publish_at > now
            payload = notice.canonical_json()
            # values as parameters, not .values(): the statements are the same for every notice (no build, one key)
            notice_id = conn.execute(notices.insert(), {
                "ref": notice.ref, "content_hash": digest, "payload": payload, "title": notice.title,
                "urgency": notice.urgency.value, "publish_at": notice.publish_at, "expires_at": notice.expires_at,
                "submitted_at": now, "released_at": None if held else now, "source": source,
            }).inserted_primary_key[0]
            conn.execute(notice_versions.insert(), {
                "notice_id": notice_id, "version": 1, "content_hash": digest, "payload": payload, "created_at": now,
                "created_by": clean_text((actor.name if actor else source)[:100])})
            if outlets:
                # every outlet with deliveries has a health row: the claim goes outlet by outlet
                add_deliveries(conn, notice_id, outlets, 1, now, held, notice)
            results.append(Added(notice.ref, created=True, deliveries=len(outlets)))
            record(conn, actor, "notice.submit", notice.ref, now, deliveries=len(outlets), source=source,
                   title=notice.title, urgency=notice.urgency.value)
        return results

    def release_due(self, now: datetime | None = None) -> int:
        """Release embargoed notices whose publish_at has come; returns deliveries released.

        Exactly the deliveries of the notices this statement marked released are released (RETURNING):
        a notice committed meanwhile by another transaction waits for the next call, never half-released.
        """
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            released = list(conn.execute(
                notices.update().where(notices.c.released_at.is_(None), notices.c.publish_at <= now)
                .values(released_at=now).returning(notices.c.id)
            ).scalars())
            if not released:
                return 0
            count = conn.execute(
                d.update().where(d.c.status == "held", d.c.notice_id.in_(released))
                .values(status="pending", next_attempt_at=now, updated_at=now)
            ).rowcount
            if count:
                self.db.notify(conn)
        return count

    # -- claims -----------------------------------------------------------------------------------

    def claim(
        self, limit: int, per_outlet: int, lease: timedelta, now: datetime | None = None,
        rate_limits: Mapping[str, Sequence[RateLimit]] | None = None, skip_outlets: Collection[str] = (),
        outlets: Collection[str] | None = None, cancelled: dict[str, int] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due deliveries under a lease, urgent ones before any normal one, then
        oldest first, filling up from every outlet that has room. With ``cancelled`` given, first cancel what
        has expired (``cancel_expired``) in the same transaction, adding notice ref -> deliveries cancelled
        to it: one transaction a claim cycle, not two.

        An outlet's room is ``per_outlet`` (one probe when its breaker has cooled down) less its sends in
        flight, and no more than its ``rate_limits`` windows allow, counting every recorded attempt and
        every claim in flight, so the limits hold across restarts and workers. Outlets that are paused, have
        their breaker open or their rate limit used up are skipped; an outlet whose rate limit is used up
        waits (``rate_limited_until``) for its window to free. Outlets in ``skip_outlets`` (feeds: they
        fetch) are never claimed, nor (``outlets`` given) any outlet not among ``outlets``: a process claims
        only for the outlets its matrix has, even while another process's reload has changed the matrix.
        """
        if outlets is not None:
            skip_outlets = set(skip_outlets)
            outlets = [o for o in outlets if o not in skip_outlets]
            if not outlets:
                if cancelled is not None:
                    cancelled.update(self.cancel_expired(now))
                return []
        limits = [(o, rl.count, rl.seconds) for o, rls in (rate_limits or {}).items() for rl in rls
                  if o not in skip_outlets and (outlets is None or o in outlets)]
        with self.db.tx() as conn:
            if self.db.postgres:
                # Claimers take turns, so per-outlet and rate limits count what every worker has in flight.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
            now = now or self.db.now(conn)
            if cancelled is not None:
                cancelled.update(_cancel_expired(conn, now))
            values = {"claim_now": now, "claim_owner": self.db.owner, "claim_lease_until": now + lease,
                      "claim_per_outlet": per_outlet, "claim_limit": limit}
            if outlets is not None:
                values["claim_outlets"] = self.db.among_value(outlets)
            window = _rate_windows(limits, now)
            if window is None and (outlets is not None or not skip_outlets):
                # the same statement every claim without rate limits: built and keyed for the statement cache
                # once, not inside every claim's write transaction (they were most of its time)
                among = outlets is not None
                statement = self.db.prepared(("claim", among), lambda: self._claim_statement(among, (), None)[0])
            else:
                statement, busy = self._claim_statement(outlets is not None, skip_outlets, window)
            rows = conn.execute(statement, values).all()
            claimed = {r.outlet_id for r in rows}
            if claimed:  # a probe shuts a cooled-down breaker to everyone else until it is recorded or its lease ends
                conn.execute(h.update().where(self.db.among(h.c.outlet_id, claimed), h.c.open_until <= now)
                             .values(open_until=now + lease))
            if window is not None:
                self._wait_for_rate_windows(conn, window, busy, now)
        rows.sort(key=lambda r: (r.lane, r.id))
        return [Claim(r.id, r.notice_id, r.outlet_id, r.message_id, r.attempts + 1, r.schedule_start,
                      json.loads(r.channel_state) if r.channel_state else None, r.lane == URGENT_LANE,
                      r.expires_at, r.version, r.carries, r.sent_version, r.origin) for r in rows]

    def _claim_statement(self, among: bool, skip_outlets: Collection[str], window: Any) -> tuple[Any, Any]:
        """The claim's UPDATE ... RETURNING, and its ``busy`` CTE. Its values are bound by name at execution:
        ``claim_now``, ``claim_owner``, ``claim_lease_until``, ``claim_per_outlet``, ``claim_limit`` and (``among``)
        the outlets it may claim for, ``claim_outlets``; a rate ``window`` (``_rate_windows``) carries its own."""
        now = sa.bindparam("claim_now", type_=UTCDateTime)
        per_outlet = sa.bindparam("claim_per_outlet", type_=sa.Integer)
        busy = (sa.select(d.c.outlet_id, sa.func.count().label("n")).where(leased(now))
                .group_by(d.c.outlet_id).cte("busy"))
        rate = (sa.select(window.c.outlet_id, sa.func.min(window.c.left).label("left"))
                .group_by(window.c.outlet_id).cte("rate")) if window is not None else None
        # how many more sends each outlet takes now: the per-outlet cap (one probe when its breaker has
        # cooled down), within its rate limit, less its sends in flight
        cap: Any = sa.case((h.c.open_until.is_not(None), 1), else_=per_outlet)
        joined = h.outerjoin(busy, busy.c.outlet_id == h.c.outlet_id)
        if rate is not None:
            cap = sa.case((sa.func.coalesce(rate.c.left, cap) < cap, rate.c.left), else_=cap)
            joined = joined.outerjoin(rate, rate.c.outlet_id == h.c.outlet_id)
        room_left = cap - sa.func.coalesce(busy.c.n, 0)
        room = (sa.select(h.c.outlet_id, room_left.label("room")).select_from(joined)
                .where(outlet_takes_sends(now), room_left > 0,
                       *([self.db.among_param(h.c.outlet_id, "claim_outlets")] if among
                         else [h.c.outlet_id.not_in(list(skip_outlets))] if skip_outlets else []))
                .cte("room"))
        # each such outlet's oldest claimable deliveries (an index search per outlet: flat under any backlog)
        e = d.alias("e")
        head = (sa.select(e.c.id, e.c.lane, e.c.next_attempt_at)
                # naming the lanes lets SQLite search ix_deliveries_outlet_due on all four columns; without
                # it (no statistics) it took ix_deliveries_due, every due delivery once per outlet: 1.3 s a
                # claim at 5,000 due across 1,000 outlets
                .where(e.c.outlet_id == room.c.outlet_id, e.c.lane.in_((URGENT_LANE, NORMAL_LANE)),
                       claimable(now, e))
                .order_by(e.c.lane, e.c.next_attempt_at, e.c.id).limit(per_outlet))
        if self.db.postgres:
            per_outlet_head = head.lateral("head")
            source, chosen_from = room.join(per_outlet_head, sa.true()), per_outlet_head
        else:  # SQLite has no LATERAL; it runs this correlated list once per outlet
            source, chosen_from = room.join(d, d.c.id.in_(head.with_only_columns(e.c.id))), d
        c = chosen_from.c
        ranked = (sa.select(c.id, c.lane, c.next_attempt_at, room.c.room, sa.func.row_number().over(
            partition_by=room.c.outlet_id, order_by=(c.lane, c.next_attempt_at, c.id)).label("rank"))
            .select_from(source).cte("ranked"))
        # the urgent, then the oldest of those, up to the limit, each outlet within its room
        chosen = (sa.select(ranked.c.id).where(ranked.c.rank <= ranked.c.room)
                  .order_by(ranked.c.lane, ranked.c.next_attempt_at, ranked.c.id)
                  .limit(sa.bindparam("claim_limit", type_=sa.Integer)))
        # PostgreSQL: rows another worker is writing right now (recording an attempt) are skipped, not waited for,
        # and each row locked is checked again as it is now (a lock re-reads the row's newest version). Locked
        # once, from the chosen ids (both CTEs computed once), then leased by id. With the check in the UPDATE,
        # on tables not analyzed yet (a fan-out just stored) the planner walked every due delivery and locked the
        # chosen again for each: 1.8 s a claim at 10,000 due. SQLite holds the write lock (BEGIN IMMEDIATE) and
        # chose claimable rows only.
        if self.db.postgres:
            picked = chosen.cte("picked").prefix_with("MATERIALIZED")
            locked = (sa.select(d.c.id).select_from(picked.join(d, d.c.id == picked.c.id)).where(claimable(now))
                      .with_for_update(of=d, skip_locked=True).cte("locked").prefix_with("MATERIALIZED"))
            free: Any = sa.select(locked.c.id)
        else:
            free = chosen
        statement = (
            d.update().where(d.c.id.in_(free))
            .values(lease_owner=sa.bindparam("claim_owner", type_=sa.String),
                    lease_expires_at=sa.bindparam("claim_lease_until", type_=UTCDateTime), updated_at=now)
            .returning(d.c.id, d.c.notice_id, d.c.outlet_id, d.c.message_id, d.c.attempts, d.c.schedule_start,
                       d.c.channel_state, d.c.lane, d.c.expires_at, d.c.version, d.c.carries, d.c.sent_version,
                       d.c.origin))
        return statement, busy

    def cancel_expired(self, now: datetime | None = None) -> dict[str, int]:
        """Cancel, with reason "expired", the unsent deliveries of notices past their ``expires_at``: pending
        (due, or waiting for a retry) and held, but not those under a live lease (their claimer cancels them
        before sending, see ``Claim.expires_at``, or the lease runs out). Returns notice ref -> deliveries
        cancelled. (The dispatcher has ``claim`` do this in its own transaction.)"""
        with self.db.tx() as conn:
            return _cancel_expired(conn, now or self.db.now(conn))

    def _wait_for_rate_windows(self, conn: sa.Connection, window: Any, busy: Any, now: datetime) -> None:
        """Outlets with due deliveries and no room left in a rate window wait until the window frees. (``busy``
        is the claim statement's: its time is bound as ``claim_now``.) An outlet already waiting has its time
        set again: a window filled by sends in flight gets a short guess, made good once they are recorded."""
        full = conn.execute(
            sa.select(window.c.outlet_id, window.c.oldest, window.c.seconds, h.c.rate_limited_until)
            .select_from(window.outerjoin(busy, busy.c.outlet_id == window.c.outlet_id)
                         .outerjoin(h, h.c.outlet_id == window.c.outlet_id))
            .where(window.c.left - sa.func.coalesce(busy.c.n, 0) <= 0, outlet_open(now),
                   sa.exists().where(d.c.outlet_id == window.c.outlet_id, claimable(now))),
            {"claim_now": now},
        ).all()
        frees: dict[str, datetime] = {}
        waiting = {row.outlet_id: row.rate_limited_until for row in full}
        for row in full:
            if row.oldest:
                free = row.oldest + timedelta(seconds=row.seconds)
            else:  # no send of the window recorded yet: a guess, kept while it lasts
                until = waiting[row.outlet_id]
                free = until if until and until > now else now + timedelta(seconds=1)
            frees[row.outlet_id] = max(frees.get(row.outlet_id, free), free)
        frees = {o: until for o, until in frees.items() if until != waiting[o]}
        if frees:
            insert_new(conn, h, [{"outlet_id": o} for o in frees], "outlet_id")
            conn.execute(h.update().where(h.c.outlet_id == sa.bindparam("b_outlet")).values(
                rate_limited_until=sa.bindparam("b_until")),
                [{"b_outlet": o, "b_until": until} for o, until in frees.items()])

    # -- attempts ---------------------------------------------------------------------------------

    def record(
        self, records: Sequence[AttemptRecord], now: datetime | None = None, policy: HealthPolicy | None = None
    ) -> None:
        """Write a batch of attempts, move their deliveries on and update their outlets' health (raising
        operator alerts), in one transaction. Text the outlet answered is stored as any backend takes it."""
        if not records:
            return
        policy = policy or HealthPolicy()
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            at = self.db.to_store_time
            tried = [r for r in records if r.outcome != "cancelled"]  # a cancelled delivery was not sent
            if tried:
                conn.execute(attempts.insert(), [
                    {"delivery_id": r.delivery_id, "outlet_id": r.outlet_id, "number": r.attempt,
                     "trigger": r.trigger, "started_at": at(r.started_at), "latency_ms": r.latency_ms,
                     "outcome": r.outcome, "http_status": r.http_status, "platform_code": clean_text(r.platform_code),
                     "error": clean_text(r.error), "response": clean_text(r.response), "version": r.version,
                     "carries": r.carries}
                    for r in tried
                ])
            # what each delivery carries now: a correction or retraction may have come while its try was in flight
            carried, moved = self.db.prepared("record", self._recording)
            rows = {row.id: row for row in conn.execute(
                carried, {"b_ids": self.db.among_value({r.delivery_id for r in records})})}
            settled = {r.delivery_id: settle(STATUS_AFTER[r.outcome], r.version, r.carries, rows[r.delivery_id].version,
                                             rows[r.delivery_id].sent_version, rows[r.delivery_id].retracted_at is not None)
                       for r in records if r.delivery_id in rows}
            conn.execute(
                moved,
                [
                    {"b_id": r.delivery_id, "b_owner": self.db.owner, "b_now": now,
                     "b_status": settled[r.delivery_id].status,
                     "b_attempts": r.attempt - 1 if r.outcome == "cancelled" else r.attempt,
                     "b_next": now if settled[r.delivery_id].again else (
                         at(r.next_attempt_at) if settled[r.delivery_id].status == "pending" else None),
                     "b_http": r.http_status, "b_error": clean_text(r.error),
                     "b_cancel": settled[r.delivery_id].cancel_reason or (
                         clean_text(r.error) if settled[r.delivery_id].status == "cancelled" else None),
                     "b_delivered": at(r.started_at) if settled[r.delivery_id].status == "delivered" else None,
                     "b_state": None if r.channel_state is None else json.dumps(dict(r.channel_state)),
                     "b_sent": settled[r.delivery_id].sent_version, "b_carries": settled[r.delivery_id].carries,
                     "b_again": settled[r.delivery_id].again}
                    for r in records if r.delivery_id in settled
                ],
            )
            if tried:
                self.health.after_attempts(conn, tried, now, policy)
            add_latencies(conn, ((r.channel, r.latency_ms) for r in tried))

    def _recording(self) -> tuple[Any, Any]:
        """``record``'s look-up of what each delivery carries now (``b_ids``) and its UPDATE (``Db.prepared``)."""
        carried = (sa.select(d.c.id, d.c.version, d.c.sent_version, notices.c.retracted_at)
                   .select_from(d.join(notices, notices.c.id == d.c.notice_id))
                   .where(self.db.among_param(d.c.id, "b_ids")))
        moved = (
            d.update()
            .where(d.c.id == sa.bindparam("b_id"), d.c.status == "pending",
                   d.c.lease_owner == sa.bindparam("b_owner", type_=sa.String))
            .values(
                status=sa.bindparam("b_status"), attempts=sa.bindparam("b_attempts"),
                next_attempt_at=sa.bindparam("b_next"), lease_owner=None, lease_expires_at=None,
                sent_version=sa.bindparam("b_sent", type_=sa.Integer), carries=sa.bindparam("b_carries"),
                # a newer version or the retraction is a new message: its own retry schedule
                schedule_start=sa.case((sa.bindparam("b_again", type_=sa.Boolean), sa.bindparam("b_attempts")),
                                       else_=d.c.schedule_start),
                # a cancellation keeps the last try's answer: why it had not gone out before it expired
                http_status=sa.case((sa.bindparam("b_status") == "cancelled", d.c.http_status),
                                    else_=sa.bindparam("b_http")),
                error=sa.case((sa.bindparam("b_status") == "cancelled", d.c.error), else_=sa.bindparam("b_error")),
                delivered_at=sa.bindparam("b_delivered"), updated_at=sa.bindparam("b_now", type_=UTCDateTime),
                cancel_reason=sa.bindparam("b_cancel", type_=sa.String),
                # kept across versions: a channel tells its messages apart (wechat_mp updates an unpublished draft)
                channel_state=sa.func.coalesce(sa.bindparam("b_state", type_=sa.Text), d.c.channel_state),
            ))
        return carried, moved

    def record_fetch(self, outlet_id: str, listed: Mapping[int, tuple[int, bool]], latency_ms: float = 0.0,
                     now: datetime | None = None) -> int:
        """A feed fetch was answered: the pending deliveries it listed are delivered, the fetch recorded as their
        attempt. ``listed``: delivery id -> (the version the feed showed, whether it showed the retraction); a
        delivery corrected or retracted since the feed was read stays pending (the next fetch lists the change)."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            rows = [r for r in conn.execute(
                sa.select(d.c.id, d.c.attempts, d.c.version, d.c.carries).where(
                    d.c.id.in_(list(listed)), d.c.outlet_id == outlet_id, d.c.status == "pending")
            ).all() if listed[r.id] == (r.version, r.carries == "retraction")]
            if not rows:
                return 0
            conn.execute(attempts.insert(), [
                {"delivery_id": r.id, "outlet_id": outlet_id, "number": r.attempts + 1, "trigger": "fetch",
                 "started_at": now, "latency_ms": latency_ms, "outcome": "delivered", "http_status": 200,
                 "error": None, "response": None, "version": r.version, "carries": r.carries} for r in rows
            ])
            # the feed listed the latest version (or the retraction): that is what the outlet now has
            conn.execute(
                d.update().where(sa.tuple_(d.c.id, d.c.version, d.c.carries).in_(
                                     [(r.id, r.version, r.carries) for r in rows]), d.c.status == "pending")
                .values(status="delivered", attempts=d.c.attempts + 1, next_attempt_at=None, http_status=200,
                        error=None, delivered_at=now, updated_at=now,
                        sent_version=sa.case((d.c.carries == "retraction", d.c.sent_version), else_=d.c.version))
            )
            add_latencies(conn, [("feed", latency_ms)] * len(rows))
        return len(rows)

    def renew_leases(self, delivery_ids: Collection[int], lease: timedelta) -> set[int]:
        """Extend this owner's unexpired leases on these deliveries (claims that waited before their send);
        returns the ids renewed. A lease that ran out is not renewed: someone may have claimed it since."""
        with self.db.tx() as conn:
            now = self.db.now(conn)
            return set(conn.execute(
                d.update()
                .where(d.c.id.in_(list(delivery_ids)), d.c.lease_owner == self.db.owner, d.c.status == "pending",
                       d.c.lease_expires_at > now)
                .values(lease_expires_at=now + lease)
                .returning(d.c.id)
            ).scalars())

    def release_claims(self, delivery_ids: Collection[int] | None = None) -> int:
        """Give back this owner's unfinished claims (graceful shutdown), or only these deliveries'."""
        with self.db.tx() as conn:
            released = conn.execute(
                d.update().where(d.c.lease_owner == self.db.owner, d.c.status == "pending",
                                 *([d.c.id.in_(list(delivery_ids))] if delivery_ids is not None else []))
                .values(lease_owner=None, lease_expires_at=None)
            ).rowcount
            if released:
                self.db.notify(conn)
            return released

    def requeue(
        self, ref: str | None = None, outlet_id: str | None = None, since: datetime | None = None,
        status: str = "failed", dry_run: bool = False, now: datetime | None = None, actor: Actor | None = None,
    ) -> list[dict[str, Any]]:
        """Put matching deliveries back in the queue, due now, each with a fresh retry schedule; their
        next try is logged with trigger ``manual``; deliveries of an expired notice are left alone. Returns what
        was (or, dry run, would be) requeued. A retry that requeued something is audited as ``actor``'s, once per
        notice."""
        n = notices
        query = (
            sa.select(d.c.id, n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), d.c.attempts,
                      d.c.http_status, d.c.error, d.c.updated_at)
            .select_from(d.join(n, n.c.id == d.c.notice_id))
            .where(d.c.status == status)
            .order_by(d.c.notice_id, d.c.id)
        )
        if ref:
            query = query.where(n.c.ref == ref)
        if outlet_id:
            query = query.where(d.c.outlet_id == outlet_id)
        if since:
            query = query.where(d.c.updated_at >= since)
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            # an expired notice's deliveries stay as they are: it must not be sent late
            query = query.where(sa.or_(d.c.expires_at.is_(None), d.c.expires_at > now))
            rows = [dict(row._mapping) for row in conn.execute(query)]
            if rows and not dry_run:
                conn.execute(
                    d.update().where(d.c.id.in_([r["id"] for r in rows]), d.c.status == status)
                    .values(status="pending", next_attempt_at=now, schedule_start=d.c.attempts,
                            lease_owner=None, lease_expires_at=None, updated_at=now)
                )
                self.db.notify(conn)
                for notice_ref in dict.fromkeys(r["notice"] for r in rows):
                    mine = [r for r in rows if r["notice"] == notice_ref]
                    record(conn, actor, "deliveries.retry", notice_ref, now, status=status, requeued=len(mine),
                           outlets=[r["outlet"] for r in mine], filters={"notice": ref, "outlet": outlet_id,
                                                                          "since": since})
        return rows

    def prune_attempts(self, older_than: datetime) -> int:
        """Delete attempts started before ``older_than``. Notices and deliveries (their outcome, attempt
        count, last status and error) are kept."""
        with self.db.tx() as conn:
            return conn.execute(attempts.delete().where(attempts.c.started_at < older_than)).rowcount

    # -- what the dispatcher and the scheduler look at ----------------------------------------------

    def notices_by_id(self, notice_ids: Iterable[int]) -> dict[int, tuple[Notice, datetime]]:
        """Notices with the time they were released (their publication time)."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(notices.c.id, notices.c.payload, notices.c.released_at, notices.c.submitted_at)
                .where(notices.c.id.in_(set(notice_ids)))
            )
            return {row.id: (Notice.from_stored(row.payload), row.released_at or row.submitted_at) for row in rows}

    def editions(self, claims: Sequence[Claim], known: Collection[tuple[int, int]] = ()
                 ) -> tuple[dict[tuple[int, int], tuple[Notice, datetime]], dict[int, Change]]:
        """What the claims carry: each (notice id, version) not in ``known`` with its publication time, and the
        Change (a correction or the retraction) of each claim, by delivery id, that carries one."""
        wanted = {(c.notice_id, c.version) for c in claims} - set(known)
        with self.db.read() as conn:
            found: dict[tuple[int, int], tuple[Notice, datetime]] = {}
            if wanted:
                ids = {i for i, _ in wanted}
                published = dict(conn.execute(sa.select(
                    notices.c.id, sa.type_coerce(sa.func.coalesce(notices.c.released_at, notices.c.submitted_at),
                                                 UTCDateTime))
                    .where(notices.c.id.in_(ids))).all())
                for row in conn.execute(sa.select(notice_versions.c.notice_id, notice_versions.c.version,
                                                  notice_versions.c.payload).where(notice_versions.c.notice_id.in_(ids))):
                    if (row.notice_id, row.version) in wanted:
                        found[(row.notice_id, row.version)] = (Notice.from_stored(row.payload),
                                                               published[row.notice_id])
            keys = {c.delivery_id: (c.notice_id, c.version, c.carries, c.sent_version, c.message_id)
                    for c in claims if c.carries != NOTICE}
            changes = self.lifecycle.changes_for(conn, set(keys.values())) if keys else {}
        return found, {delivery_id: changes[key] for delivery_id, key in keys.items()}

    def next_due_at(self, skip_outlets: Collection[str] = (), outlets: Collection[str] | None = None
                    ) -> datetime | None:
        """When the earliest pending delivery comes due (on this process's clock); None when nothing is
        pending. A delivery waits for the latest of: its next try, another process's lease on it, its
        outlet's open breaker and its outlet's rate window. Paused outlets' deliveries wait for an operator,
        removed outlets' for a reload that brings them back; ``outlets`` given, only theirs are looked at.
        A delivery whose notice expires before then is due when it expires: to be cancelled."""
        due: Any = d.c.next_attempt_at
        for later in (d.c.lease_expires_at, h.c.open_until, h.c.rate_limited_until):
            due = sa.type_coerce(sa.case((later > due, later), else_=due), UTCDateTime)
        due = sa.type_coerce(sa.case((d.c.expires_at < due, d.c.expires_at), else_=due), UTCDateTime)
        with self.db.read() as conn:
            when: datetime | None = conn.execute(
                sa.select(sa.func.min(due)).select_from(d.outerjoin(h, h.c.outlet_id == d.c.outlet_id)).where(
                    d.c.status == "pending", h.c.paused_at.is_(None), h.c.removed_at.is_(None),
                    *([d.c.outlet_id.not_in(list(skip_outlets))] if skip_outlets else []),
                    *([self.db.among(d.c.outlet_id, outlets)] if outlets is not None else []),
                )
            ).scalar_one_or_none()
        return None if when is None else when - self.db.skew

    def next_release_at(self) -> datetime | None:
        with self.db.read() as conn:
            return conn.execute(
                sa.select(sa.func.min(notices.c.publish_at)).where(notices.c.released_at.is_(None))
            ).scalar_one_or_none()


def _rate_windows(limits: Sequence[tuple[str, int, float]], now: datetime) -> Any:
    """Per outlet and rate window: sends left (the limit less the attempts started in the window) and the
    oldest of those attempts. None when no outlet has a rate limit."""
    if not limits:
        return None
    spec = sa.values(sa.column("outlet_id", sa.String), sa.column("max_sends", sa.Integer),
                     sa.column("seconds", sa.Float), sa.column("since", UTCDateTime), name="limits").data(
        [(o, count, seconds, now - timedelta(seconds=seconds)) for o, count, seconds in limits]).cte("limits")
    return (
        sa.select(spec.c.outlet_id, spec.c.seconds, (spec.c.max_sends - sa.func.count(a.c.id)).label("left"),
                  sa.func.min(a.c.started_at).label("oldest"))
        .select_from(spec.outerjoin(a, sa.and_(a.c.outlet_id == spec.c.outlet_id, a.c.started_at > spec.c.since)))
        .group_by(spec.c.outlet_id, spec.c.max_sends, spec.c.seconds, spec.c.since)
        .cte("windows")
    )
