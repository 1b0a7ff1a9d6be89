"""The central store: notices, their deliveries (one per notice x outlet) and every attempt.

One narrow interface over SQLAlchemy Core, portable SQL, SQLite by default (WAL, one file),
PostgreSQL for scale-out. Every method is synchronous and short; the dispatcher calls them
off the event loop.

    >>> store = Store.open("sqlite:///var/debunkbot.sqlite3")   # doctest: +SKIP
    >>> store.add_notices([(notice, outlets)], source="cli")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bot.health import Health, HealthEvent, HealthPolicy, after_attempt, resumed
from bot.model import Notice
from bot.outlets import Outlet
from channels.base import RateLimit

metadata = sa.MetaData()

# What the database raises when it is locked, busy, unreachable or full. The dispatcher backs off on
# these; intake refuses the submission. Nothing of the failed transaction was kept.
STORE_FAULTS: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)


def describe_fault(exc: Exception) -> str:
    """A store fault in one line an operator can act on."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    if is_disk_full(exc):
        return f"the disk holding the store is full ({cause})"
    return f"the store is unavailable ({cause})"


def is_disk_full(exc: Exception) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's SQLSTATE 53100 disk_full, or the OS's ENOSPC."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "53100":
        return True
    text = str(orig).lower()
    return "disk is full" in text or "no space left" in text or "disk full" in text


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


notices = sa.Table(
    "notices", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ref", sa.String(64), nullable=False, unique=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("urgency", sa.String(16), nullable=False),
    sa.Column("publish_at", UTCDateTime, nullable=True),
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime, nullable=True),
    sa.Column("source", sa.String(500), nullable=False),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("notices.id"), nullable=False),
    sa.Column("outlet_id", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    # held (embargoed) -> pending -> delivered | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # the attempt count when the current retry schedule began: 0, or where a manual retry restarted it
    sa.Column("schedule_start", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.UniqueConstraint("notice_id", "outlet_id"),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_deliveries_outlet", "outlet_id", "status"),
    # claim_due counts leases in flight: without this it reads every pending row (slow with a backlog)
    sa.Index("ix_deliveries_leased", "status", "lease_expires_at"),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False, index=True),
    sa.Column("outlet_id", sa.String(64), nullable=False),  # copied from the delivery: rate limits count by outlet
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # scheduled | manual
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | retry | failed
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    sa.Index("ix_attempts_outlet_time", "outlet_id", "started_at"),
    sa.Index("ix_attempts_started", "started_at"),  # pruning
)

# Each outlet's health, shared by every worker and kept across restarts. A row appears with the first
# attempt. The circuit breaker opens (``open_until``) after repeated failures; a paused outlet (410, or
# failing for the whole auto-pause window) has its deliveries held until an operator resumes it.
outlet_health = sa.Table(
    "outlet_health", metadata,
    sa.Column("outlet_id", sa.String(64), primary_key=True),
    sa.Column("paused_at", UTCDateTime, nullable=True),
    sa.Column("paused_reason", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False, default="ok", server_default="ok"),  # ok | degraded | paused
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("failing_since", UTCDateTime, nullable=True),  # first failure of the current run of failures
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
    sa.Column("open_until", UTCDateTime, nullable=True),  # breaker open: no sends before then, then one probe
)

# Operator alerts: an outbox, deduplicated by key, written in the transaction that saw the event.
alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),  # exhausted | paused | recovered | urgent-late
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Index("ix_alerts_unsent", "sent_at"),
)


class RefConflict(ValueError):
    """A ref already stored with different content. Corrections are a later feature."""


@dataclass(frozen=True)
class Added:
    ref: str
    created: bool  # False: the identical notice was already stored (a no-op)
    deliveries: int


@dataclass(frozen=True)
class Claim:
    """A delivery claimed under a lease, ready to send."""

    delivery_id: int
    notice_id: int
    outlet_id: str
    message_id: str
    attempt: int  # the number this try will have, from 1
    schedule_start: int = 0  # attempts made before the current retry schedule began (a manual retry restarts it)

    @property
    def trigger(self) -> str:
        return "manual" if self.schedule_start and self.attempt == self.schedule_start + 1 else "scheduled"


@dataclass(frozen=True)
class AttemptRecord:
    """What one HTTP try did, and what the delivery becomes."""

    delivery_id: int
    outlet_id: str
    attempt: int
    started_at: datetime
    latency_ms: float
    outcome: str  # delivered | retry | failed
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    next_attempt_at: datetime | None = None  # for retry
    pause_outlet: str | None = None  # outlet id to pause (410 Gone)
    trigger: str = "scheduled"
    exhausted: bool = False  # the retry schedule ran out: the operators hear of it


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_message_id() -> str:
    """Stable per notice x outlet; sent as webhook-id on every try so receivers can dedupe."""
    return "msg_" + secrets.token_hex(12)


CLAIM_LOCK = 0x6465_6272  # pg advisory lock keys ("debr", "debs")
LEADER_LOCK = 0x6465_6273
WORK_CHANNEL = "debunkbot_work"  # pg NOTIFY channel: new deliveries are due


class Store:
    def __init__(self, engine: Engine, owner: str | None = None) -> None:
        self.engine = engine
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.postgres = engine.dialect.name == "postgresql"
        self._leader: Connection | None = None
        self._watch: Any = None  # the connection changed_since_last_look keeps (SQLite)
        self._seen_version: int | None = None

    @classmethod
    def open(cls, url: str, busy_timeout: float = 30.0) -> Store:
        """Open the store; an empty one is created, an outdated one refused (SchemaOutdated).

        ``busy_timeout``: seconds a SQLite call waits for a lock before it fails (and the caller backs off).
        """
        from bot.schema import ensure_current

        engine = make_engine(url, busy_timeout)
        ensure_current(engine)
        return cls(engine)

    def close(self) -> None:
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.engine.dispose()

    def changed_since_last_look(self) -> bool:
        """Whether another connection may have committed since the previous call; False on the first.

        The dispatcher's cheap wake-up for work written by other processes (``debunkbot submit``).
        SQLite: ``PRAGMA data_version`` on a connection kept for this, microseconds per look; it also
        changes on this process's own writes, which costs the dispatcher an empty claim at most.
        Other databases: always False, and the poll every scan_interval stands (PostgreSQL: LISTEN/NOTIFY).
        """
        if self.engine.dialect.name != "sqlite":
            return False
        if self._watch is None:
            self._watch = self.engine.raw_connection()
        cursor = self._watch.cursor()
        try:
            version = cursor.execute("PRAGMA data_version").fetchone()[0]
        finally:
            cursor.close()
        changed = self._seen_version is not None and version != self._seen_version
        self._seen_version = version
        return changed

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, so writers queue rather than fail)."""
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    # -- intake ---------------------------------------------------------------------------------

    def add_notices(
        self, batch: Sequence[tuple[Notice, Sequence[Outlet]]], source: str, now: datetime | None = None
    ) -> list[Added]:
        """Store notices with all their deliveries in one transaction: all of them, or none.

        Raises RefConflict, storing nothing, when a ref is already stored with other content.
        """
        now = now or utcnow()
        results: list[Added] = []
        with self._tx() as conn:
            for notice, outlets in batch:
                digest = notice.content_hash()
                existing = conn.execute(
                    sa.select(notices.c.id, notices.c.content_hash).where(notices.c.ref == notice.ref)
                ).first()
                if existing is not None:
                    if existing.content_hash != digest:
                        raise RefConflict(
                            f"ref {notice.ref!r} is already stored with different content; "
                            "use a new ref (corrections are not supported yet)"
                        )
                    results.append(Added(notice.ref, created=False, deliveries=0))
                    continue
                held = notice.publish_at is not None and notice.publish_at > now
                notice_id = conn.execute(
                    notices.insert().values(
                        ref=notice.ref, content_hash=digest, payload=notice.canonical_json(),
                        title=notice.title, urgency=notice.urgency.value, publish_at=notice.publish_at,
                        submitted_at=now, released_at=None if held else now, source=source,
                    )
                ).inserted_primary_key[0]
                if outlets:
                    conn.execute(deliveries.insert(), [
                        {"notice_id": notice_id, "outlet_id": o.id, "tier": o.tier.value,
                         "status": "held" if held else "pending", "message_id": new_message_id(),
                         "attempts": 0, "next_attempt_at": notice.publish_at if held else now,
                         "updated_at": now}
                        for o in outlets
                    ])
                results.append(Added(notice.ref, created=True, deliveries=len(outlets)))
            self._notify(conn)
        return results

    def release_due(self, now: datetime | None = None) -> int:
        """Release embargoed notices whose publish_at has come; returns deliveries released."""
        now = now or utcnow()
        with self._tx() as conn:
            due = sa.select(notices.c.id).where(notices.c.released_at.is_(None), notices.c.publish_at <= now)
            released = conn.execute(
                deliveries.update()
                .where(deliveries.c.status == "held", deliveries.c.notice_id.in_(due))
                .values(status="pending", next_attempt_at=now, updated_at=now)
            ).rowcount
            conn.execute(notices.update().where(notices.c.id.in_(due)).values(released_at=now))
            if released:
                self._notify(conn)
        return released

    # -- dispatch -------------------------------------------------------------------------------

    def claim_due(
        self, limit: int, per_outlet: int, lease: timedelta, now: datetime | None = None,
        rate_limits: Mapping[str, Sequence[RateLimit]] | None = None, skip_outlets: Collection[str] = (),
    ) -> list[Claim]:
        """Claim up to ``limit`` due deliveries under a lease.

        At most ``per_outlet`` are in flight per outlet, and an outlet with ``rate_limits`` gets no more
        sends than its windows allow, counting every recorded attempt and every claim in flight, so the
        limit holds across restarts and workers. An outlet at its limit has its due deliveries moved to
        the moment its window frees up. Outlets in ``skip_outlets`` (feeds: they fetch) are never claimed.
        """
        now = now or utcnow()
        d = deliveries
        in_flight = (
            sa.select(d.c.outlet_id, sa.func.count().label("n"))
            .where(d.c.status == "pending", d.c.lease_expires_at > now)
            .group_by(d.c.outlet_id)
            .cte("in_flight")
        )
        # A bounded look at the head of the queue keeps the claim cheap with a deep backlog.
        head = (
            sa.select(d.c.id, d.c.outlet_id, d.c.next_attempt_at)
            .where(
                d.c.status == "pending", d.c.next_attempt_at <= now,
                sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now),
                d.c.outlet_id.not_in(_held_outlets(now)),
                *([d.c.outlet_id.not_in(list(skip_outlets))] if skip_outlets else []),
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(limit * 4)
            .cte("head")
        )
        ranked = sa.select(
            head.c.id, head.c.outlet_id, head.c.next_attempt_at,
            sa.func.row_number().over(partition_by=head.c.outlet_id, order_by=(head.c.next_attempt_at, head.c.id))
            .label("rank"),
        ).cte("ranked")
        chosen = (
            sa.select(ranked.c.id)
            .select_from(ranked.outerjoin(in_flight, in_flight.c.outlet_id == ranked.c.outlet_id))
            .where(ranked.c.rank + sa.func.coalesce(in_flight.c.n, 0) <= per_outlet)
            .order_by(ranked.c.next_attempt_at, ranked.c.id)
            .limit(limit)
        )
        chosen = chosen.add_columns(ranked.c.outlet_id)
        with self._tx() as conn:
            if self.postgres:
                # Claimers take turns, so per-outlet and rate limits count what every worker has in flight.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
            candidates = conn.execute(chosen).all()
            limited = {r.outlet_id for r in candidates} & (rate_limits or {}).keys()
            if limited:
                assert rate_limits is not None
                candidates = self._within_rate_limits(conn, candidates, limited, rate_limits, now)
            candidates = self._one_probe_per_open_breaker(conn, candidates, lease, now)
            ids = [row.id for row in candidates]
            if ids and self.postgres:
                # Rows another worker is writing right now (recording an attempt) are skipped, not waited for.
                ids = list(conn.execute(
                    sa.select(d.c.id).where(d.c.id.in_(ids)).with_for_update(skip_locked=True)
                ).scalars())
            if not ids:
                return []
            rows = conn.execute(
                d.update()
                .where(d.c.id.in_(ids), sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now))
                .values(lease_owner=self.owner, lease_expires_at=now + lease, updated_at=now)
                .returning(d.c.id, d.c.notice_id, d.c.outlet_id, d.c.message_id, d.c.attempts, d.c.schedule_start)
            ).all()
        return [Claim(r.id, r.notice_id, r.outlet_id, r.message_id, r.attempts + 1, r.schedule_start) for r in rows]

    def _one_probe_per_open_breaker(
        self, conn: Connection, candidates: Sequence[Any], lease: timedelta, now: datetime
    ) -> list[Any]:
        """An outlet whose breaker cooled down gets one delivery, the probe; the breaker stays shut to
        everyone else until the probe is recorded (or its lease runs out)."""
        h = outlet_health
        half_open = set(conn.execute(
            sa.select(h.c.outlet_id).where(h.c.outlet_id.in_({r.outlet_id for r in candidates}),
                                           h.c.open_until.is_not(None), h.c.open_until <= now)
        ).scalars())
        if not half_open:
            return list(candidates)
        kept, probing = [], set()
        for row in candidates:
            if row.outlet_id in half_open:
                if row.outlet_id in probing:
                    continue
                probing.add(row.outlet_id)
            kept.append(row)
        conn.execute(h.update().where(h.c.outlet_id.in_(probing)).values(open_until=now + lease))
        return kept

    def _within_rate_limits(
        self, conn: Connection, candidates: Sequence[Any], limited: set[str],
        rate_limits: Mapping[str, Sequence[RateLimit]], now: datetime,
    ) -> list[Any]:
        d, a = deliveries, attempts
        in_flight = dict(conn.execute(
            sa.select(d.c.outlet_id, sa.func.count()).where(
                d.c.outlet_id.in_(limited), d.c.status == "pending", d.c.lease_expires_at > now
            ).group_by(d.c.outlet_id)
        ).all())
        allowed: dict[str, int] = {}
        frees_at: dict[str, datetime] = {}
        for window in {rl.seconds for o in limited for rl in rate_limits[o]}:
            since = now - timedelta(seconds=window)
            sent = {row.outlet_id: row for row in conn.execute(
                sa.select(a.c.outlet_id, sa.func.count().label("n"), sa.func.min(a.c.started_at).label("oldest"))
                .where(a.c.outlet_id.in_(limited), a.c.started_at > since)
                .group_by(a.c.outlet_id)
            )}
            for outlet_id in limited:
                for rl in rate_limits[outlet_id]:
                    if rl.seconds != window:
                        continue
                    row = sent.get(outlet_id)
                    room = rl.count - (row.n if row else 0) - in_flight.get(outlet_id, 0)
                    allowed[outlet_id] = min(allowed.get(outlet_id, room), room)
                    if room <= 0:
                        free = (row.oldest + timedelta(seconds=window)) if row else now + timedelta(seconds=1)
                        frees_at[outlet_id] = max(frees_at.get(outlet_id, free), free)
        kept, taken = [], dict.fromkeys(limited, 0)
        for row in candidates:
            if row.outlet_id in limited:
                if taken[row.outlet_id] >= allowed[row.outlet_id]:
                    frees_at.setdefault(row.outlet_id, now + timedelta(seconds=1))
                    continue
                taken[row.outlet_id] += 1
            kept.append(row)
        for outlet_id, free in frees_at.items():
            if taken[outlet_id] == 0:  # out of room: wait for the window instead of clogging the queue's head
                conn.execute(
                    d.update().where(
                        d.c.outlet_id == outlet_id, d.c.status == "pending", d.c.next_attempt_at <= now,
                        sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now),
                    ).values(next_attempt_at=free)
                )
        return kept

    def record_attempts(
        self, records: Sequence[AttemptRecord], now: datetime | None = None, policy: HealthPolicy | None = None
    ) -> None:
        """Write a batch of attempts, move their deliveries on and update their outlets' health (raising
        operator alerts), in one transaction."""
        if not records:
            return
        now = now or utcnow()
        policy = policy or HealthPolicy()
        status = {"delivered": "delivered", "retry": "pending", "failed": "failed"}
        with self._tx() as conn:
            conn.execute(attempts.insert(), [
                {"delivery_id": r.delivery_id, "outlet_id": r.outlet_id, "number": r.attempt, "trigger": r.trigger,
                 "started_at": r.started_at, "latency_ms": r.latency_ms, "outcome": r.outcome,
                 "http_status": r.http_status, "error": r.error, "response": r.response}
                for r in records
            ])
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == sa.bindparam("b_id"), deliveries.c.status == "pending",
                       deliveries.c.lease_owner == self.owner)
                .values(
                    status=sa.bindparam("b_status"), attempts=sa.bindparam("b_attempts"),
                    next_attempt_at=sa.bindparam("b_next"), lease_owner=None, lease_expires_at=None,
                    http_status=sa.bindparam("b_http"), error=sa.bindparam("b_error"),
                    delivered_at=sa.bindparam("b_delivered"), updated_at=now,
                ),
                [
                    {"b_id": r.delivery_id, "b_status": status[r.outcome], "b_attempts": r.attempt,
                     "b_next": r.next_attempt_at if r.outcome == "retry" else None,
                     "b_http": r.http_status, "b_error": r.error,
                     "b_delivered": r.started_at if r.outcome == "delivered" else None}
                    for r in records
                ],
            )
            self._update_health(conn, records, now, policy)

    def renew_leases(self, delivery_ids: Collection[int], lease: timedelta, now: datetime | None = None) -> set[int]:
        """Extend this owner's unexpired leases on these deliveries (claims that waited before their send);
        returns the ids renewed. A lease that ran out is not renewed: someone may have claimed it since."""
        now = now or utcnow()
        d = deliveries
        with self._tx() as conn:
            return set(conn.execute(
                d.update()
                .where(d.c.id.in_(list(delivery_ids)), d.c.lease_owner == self.owner, d.c.status == "pending",
                       d.c.lease_expires_at > now)
                .values(lease_expires_at=now + lease)
                .returning(d.c.id)
            ).scalars())

    def release_claims(self) -> int:
        """Give back this owner's unfinished claims (graceful shutdown)."""
        with self._tx() as conn:
            released = conn.execute(
                deliveries.update()
                .where(deliveries.c.lease_owner == self.owner, deliveries.c.status == "pending")
                .values(lease_owner=None, lease_expires_at=None)
            ).rowcount
            if released:
                self._notify(conn)
            return released

    def _notify(self, conn: Connection) -> None:
        """Wake idle workers at once (PostgreSQL NOTIFY, sent on commit); elsewhere they poll."""
        if self.postgres:
            conn.execute(sa.text(f"NOTIFY {WORK_CHANNEL}"))

    def lead(self) -> bool:
        """Whether this process runs the cluster-wide jobs (inbox, embargoes, alerts, pruning).

        On PostgreSQL the leader holds a session advisory lock on a connection of its own: if
        it dies, the lock goes with its connection and the next process to ask takes over.
        SQLite is one process on one machine: it always leads.
        """
        if not self.postgres:
            return True
        if self._leader is not None:
            try:
                self._leader.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:  # the connection, and with it the lock, is gone
                self._leader.close()
                self._leader = None
        # autocommit: the leader's connection never sits idle in a transaction (that would hold back VACUUM)
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        won = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar_one()
        if won:
            self._leader = conn
        else:
            conn.close()
        return bool(won)

    def listen_dsn(self) -> str | None:
        """A libpq connection string for LISTEN, on PostgreSQL."""
        if not self.postgres:
            return None
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def _update_health(
        self, conn: Connection, records: Sequence[AttemptRecord], now: datetime, policy: HealthPolicy
    ) -> None:
        h = outlet_health
        outlet_ids = sorted({r.outlet_id for r in records})
        # every outlet gets its row first, so two workers recording the same new outlet cannot collide
        _insert_new(conn, h, [{"outlet_id": o} for o in outlet_ids], "outlet_id")
        before = {row.outlet_id: Health(**row._mapping) for row in conn.execute(
            sa.select(*_HEALTH_COLUMNS).where(h.c.outlet_id.in_(outlet_ids)).with_for_update()
        )}
        after = dict(before)
        events: list[HealthEvent] = []
        alerts_out: list[dict[str, Any]] = []
        for r in records:
            current = after[r.outlet_id]
            reason = (r.error or "paused") if r.pause_outlet else None
            after[r.outlet_id], raised = after_attempt(current, r.outcome == "delivered", now, policy, reason)
            events += raised
            if r.exhausted:
                streak = after[r.outlet_id].failing_since or now
                alerts_out.append(_alert(
                    f"exhausted:{r.outlet_id}:{streak.isoformat()}", "exhausted",
                    f"outlet {r.outlet_id}: retries exhausted, delivery failed ({r.error}). "
                    f"See `debunkbot log --outlet {r.outlet_id} --status failed`; requeue with "
                    f"`debunkbot retry --outlet {r.outlet_id}`", now))
        alerts_out += [_alert(f"{e.kind}:{e.outlet_id}:{e.at.isoformat()}", e.kind, e.text, now) for e in events]
        updates = [vars(health) for oid, health in after.items() if before[oid] != health]
        if updates:
            conn.execute(
                h.update().where(h.c.outlet_id == sa.bindparam("b_outlet_id")).values(
                    {c.name: sa.bindparam(f"b_{c.name}") for c in _HEALTH_COLUMNS if c.name != "outlet_id"}),
                [{f"b_{k}": v for k, v in row.items()} for row in updates],
            )
        _insert_new(conn, alerts, alerts_out, "key")

    # -- outlet health --------------------------------------------------------------------------

    def outlet_health(self) -> dict[str, Health]:
        """Every outlet that has been tried, by id; an outlet without a row is ok and untried."""
        with self.engine.connect() as conn:
            return {row.outlet_id: Health(**row._mapping) for row in conn.execute(sa.select(*_HEALTH_COLUMNS))}

    def resume_outlet(self, outlet_id: str, now: datetime | None = None) -> int | None:
        """Resume a paused outlet (and close its breaker). Returns its held deliveries, now due;
        None when the outlet was not paused."""
        now = now or utcnow()
        h, d = outlet_health, deliveries
        with self._tx() as conn:
            row = conn.execute(sa.select(*_HEALTH_COLUMNS).where(h.c.outlet_id == outlet_id)).first()
            if row is None or (row.paused_at is None and row.open_until is None):
                return None
            values = vars(resumed(Health(**row._mapping)))
            conn.execute(h.update().where(h.c.outlet_id == outlet_id).values(values))
            conn.execute(
                d.update().where(d.c.outlet_id == outlet_id, d.c.status == "pending", d.c.next_attempt_at > now)
                .values(next_attempt_at=now, updated_at=now)
            )
            return conn.execute(
                sa.select(sa.func.count()).where(d.c.outlet_id == outlet_id, d.c.status == "pending")
            ).scalar_one()

    # -- replay ---------------------------------------------------------------------------------

    def requeue(
        self, ref: str | None = None, outlet_id: str | None = None, since: datetime | None = None,
        status: str = "failed", dry_run: bool = False, now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Put matching deliveries back in the queue, due now, each with a fresh retry schedule; their
        next try is logged with trigger ``manual``. Returns what was (or, dry run, would be) requeued."""
        now = now or utcnow()
        d, n = deliveries, notices
        query = (
            sa.select(d.c.id, n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), d.c.attempts,
                      d.c.http_status, d.c.error, d.c.updated_at)
            .select_from(d.join(n, n.c.id == d.c.notice_id))
            .where(d.c.status == status)
            .order_by(d.c.notice_id, d.c.id)
        )
        query = _of(query, ref, outlet_id)
        if since:
            query = query.where(d.c.updated_at >= since)
        with self._tx() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
            if rows and not dry_run:
                conn.execute(
                    d.update().where(d.c.id.in_([r["id"] for r in rows]), d.c.status == status)
                    .values(status="pending", next_attempt_at=now, schedule_start=d.c.attempts,
                            lease_owner=None, lease_expires_at=None, updated_at=now)
                )
        return rows

    # -- operator alerts ------------------------------------------------------------------------

    def flag_late_urgent(self, after: timedelta, now: datetime | None = None) -> int:
        """Raise an alert (once per notice) for each urgent notice released more than ``after`` ago that
        some outlet still does not have. Returns the alerts raised."""
        now = now or utcnow()
        d, n = deliveries, notices
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(n.c.ref, sa.func.count().label("missing"))
                .select_from(n.join(d, d.c.notice_id == n.c.id))
                .where(n.c.urgency == "urgent", n.c.released_at <= now - after, d.c.status != "delivered",
                       ~sa.exists().where(alerts.c.key == sa.literal("urgent-late:") + n.c.ref))
                .group_by(n.c.ref)
            ).all()
            late = [_alert(f"urgent-late:{r.ref}", "urgent-late",
                           f"urgent notice {r.ref} is not delivered everywhere {after.total_seconds() / 60:g} "
                           f"minutes after release: {r.missing} outlet(s) without it. See `debunkbot status {r.ref}`",
                           now) for r in rows]
            _insert_new(conn, alerts, late, "key")
        return len(late)

    def unsent_alerts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(alerts.c.id, alerts.c.kind, alerts.c.text, alerts.c.created_at)
                .where(alerts.c.sent_at.is_(None)).order_by(alerts.c.id))]

    def last_alert_sent_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(alerts.c.sent_at))).scalar_one_or_none()

    def mark_alerts_sent(self, ids: Sequence[int], now: datetime | None = None) -> None:
        with self._tx() as conn:
            conn.execute(alerts.update().where(alerts.c.id.in_(list(ids))).values(sent_at=now or utcnow()))

    # -- retention ------------------------------------------------------------------------------

    def prune_attempts(self, older_than: datetime) -> int:
        """Delete attempts started before ``older_than``. Notices and deliveries (their outcome, attempt
        count, last status and error) are kept."""
        with self._tx() as conn:
            return conn.execute(attempts.delete().where(attempts.c.started_at < older_than)).rowcount

    def notices_by_id(self, notice_ids: Iterable[int]) -> dict[int, tuple[Notice, datetime]]:
        """Notices with the time they were released (their publication time)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(notices.c.id, notices.c.payload, notices.c.released_at, notices.c.submitted_at)
                .where(notices.c.id.in_(set(notice_ids)))
            )
            return {row.id: (Notice.from_stored(row.payload), row.released_at or row.submitted_at) for row in rows}

    def next_due_at(self, skip_outlets: Collection[str] = ()) -> datetime | None:
        """When the earliest pending delivery (retry or released) comes due; None when nothing is pending."""
        with self.engine.connect() as conn:
            # a delivery leased by another process is due when its lease runs out, if it is not recorded before
            due = sa.case(
                (deliveries.c.lease_expires_at > deliveries.c.next_attempt_at, deliveries.c.lease_expires_at),
                else_=deliveries.c.next_attempt_at,
            )
            return conn.execute(
                sa.select(sa.func.min(due)).where(
                    deliveries.c.status == "pending",
                    *([deliveries.c.outlet_id.not_in(list(skip_outlets))] if skip_outlets else []),
                    deliveries.c.outlet_id.not_in(
                        sa.select(outlet_health.c.outlet_id).where(outlet_health.c.paused_at.is_not(None))
                    ),
                )
            ).scalar_one_or_none()

    def next_release_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(notices.c.publish_at)).where(notices.c.released_at.is_(None))
            ).scalar_one_or_none()

    # -- feeds (outlets that fetch) -------------------------------------------------------------

    def feed_entries(self, outlet_id: str, limit: int = 50) -> list[tuple[int, str, Notice, datetime]]:
        """An outlet's released notices, newest first: (delivery id, delivery status, notice, published at)."""
        d, n = deliveries, notices
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d.c.id, d.c.status, n.c.payload, n.c.released_at)
                .select_from(d.join(n, n.c.id == d.c.notice_id))
                .where(d.c.outlet_id == outlet_id, d.c.status.in_(("pending", "delivered")), n.c.released_at.is_not(None))
                .order_by(n.c.released_at.desc(), n.c.id.desc())
                .limit(limit)
            ).all()
        return [(r.id, r.status, Notice.from_stored(r.payload), r.released_at) for r in rows]

    def record_fetch(self, outlet_id: str, delivery_ids: Sequence[int], latency_ms: float = 0.0,
                     now: datetime | None = None) -> int:
        """A feed fetch was answered: its pending deliveries are delivered, the fetch recorded as their attempt."""
        now = now or utcnow()
        d = deliveries
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(d.c.id, d.c.attempts).where(d.c.id.in_(list(delivery_ids)), d.c.outlet_id == outlet_id,
                                                      d.c.status == "pending")
            ).all()
            if not rows:
                return 0
            conn.execute(attempts.insert(), [
                {"delivery_id": r.id, "outlet_id": outlet_id, "number": r.attempts + 1, "trigger": "fetch",
                 "started_at": now, "latency_ms": latency_ms, "outcome": "delivered", "http_status": 200,
                 "error": None, "response": None} for r in rows
            ])
            conn.execute(
                d.update().where(d.c.id.in_([r.id for r in rows]), d.c.status == "pending")
                .values(status="delivered", attempts=d.c.attempts + 1, next_attempt_at=None, http_status=200,
                        error=None, delivered_at=now, updated_at=now)
            )
        return len(rows)

    # -- the delivery log -----------------------------------------------------------------------

    def notice(self, ref: str) -> tuple[int, Notice] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(notices.c.id, notices.c.payload).where(notices.c.ref == ref)).first()
        return (row.id, Notice.from_stored(row.payload)) if row else None

    def delivery_log(
        self, ref: str | None = None, outlet_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """One row per delivery, oldest notice first."""
        d, n = deliveries, notices
        query = (
            sa.select(
                n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), d.c.tier, d.c.status, d.c.attempts,
                d.c.http_status, d.c.error, d.c.delivered_at, d.c.next_attempt_at, d.c.message_id,
            )
            .select_from(d.join(n, n.c.id == d.c.notice_id))
            .order_by(d.c.notice_id, d.c.id)
        )
        query = _of(query, ref, outlet_id)
        if status:
            query = query.where(d.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def attempt_log(self, ref: str | None = None, outlet_id: str | None = None) -> list[dict[str, Any]]:
        """Every HTTP try, in order."""
        a, d, n = attempts, deliveries, notices
        query = (
            sa.select(
                n.c.ref.label("notice"), d.c.outlet_id.label("outlet"), a.c.number.label("attempt"), a.c.trigger,
                a.c.started_at, a.c.latency_ms, a.c.outcome, a.c.http_status, a.c.error, a.c.response,
            )
            .select_from(a.join(d, d.c.id == a.c.delivery_id).join(n, n.c.id == d.c.notice_id))
            .order_by(a.c.id)
        )
        query = _of(query, ref, outlet_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def paused_outlets(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(outlet_health.c.outlet_id, outlet_health.c.paused_reason)
                .where(outlet_health.c.paused_at.is_not(None))
            )
            return {row.outlet_id: row.paused_reason or "" for row in rows}

    def deliveries_by_outlet(self) -> dict[str, dict[str, Any]]:
        """outlet id -> its tier and its deliveries counted by status."""
        d = deliveries
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(
                sa.select(d.c.outlet_id, d.c.tier, d.c.status, sa.func.count().label("n"))
                .group_by(d.c.outlet_id, d.c.tier, d.c.status)
            ):
                out.setdefault(row.outlet_id, {"tier": row.tier})[row.status] = row.n
        return out

    def counts(self, ref: str | None = None) -> dict[str, int]:
        """Deliveries by status, for one notice or all."""
        query = sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
        if ref:
            query = query.join(notices, notices.c.id == deliveries.c.notice_id).where(notices.c.ref == ref)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(query)}


_HEALTH_COLUMNS = [outlet_health.c[name] for name in Health.__dataclass_fields__]


def _held_outlets(now: datetime) -> sa.Select[Any]:
    """Outlets that get no sends now: paused, or with the circuit breaker open."""
    h = outlet_health
    return sa.select(h.c.outlet_id).where(sa.or_(h.c.paused_at.is_not(None), h.c.open_until > now))


def _of(query: sa.Select[Any], ref: str | None, outlet_id: str | None) -> sa.Select[Any]:
    """A delivery-log query narrowed to one notice and/or one outlet (it joins notices and deliveries)."""
    if ref:
        query = query.where(notices.c.ref == ref)
    if outlet_id:
        query = query.where(deliveries.c.outlet_id == outlet_id)
    return query


def _alert(key: str, kind: str, text: str, now: datetime) -> dict[str, Any]:
    return {"key": key[:200], "kind": kind, "text": text, "created_at": now, "sent_at": None}


def _insert_new(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str) -> None:
    """Insert rows whose ``key`` is not there yet, and skip the rest, even when another worker inserts the
    same key at the same moment (INSERT … ON CONFLICT DO NOTHING, on SQLite and PostgreSQL)."""
    rows = list({r[key]: r for r in rows}.values())
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).on_conflict_do_nothing(index_elements=[key]), rows)


def make_engine(url: str, busy_timeout: float = 30.0) -> Engine:
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the lock up front, so two writers queue instead of failing mid-transaction.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def dumps(row: dict[str, Any]) -> str:
    """A delivery-log row as one JSON line."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}, ensure_ascii=False
    )
