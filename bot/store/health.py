"""Outlet health in the store: the breaker and pauses every worker shares (the rules are bot.health's)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.health import Health, HealthEvent, HealthPolicy, after_attempt, resumed
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text, insert_new
from bot.store.outbox import alert, raise_alerts
from bot.store.tables import UTCDateTime, deliveries, outlet_health

if TYPE_CHECKING:
    from bot.store.queue import AttemptRecord

h, d = outlet_health, deliveries
COLUMNS = [h.c[name] for name in Health.__dataclass_fields__]
FIELDS = [name for name in Health.__dataclass_fields__ if name != "outlet_id"]


class OutletHealth:
    def __init__(self, db: Db) -> None:
        self.db = db

    def all(self) -> dict[str, Health]:
        """Every outlet that has been tried, by id; an outlet without a row is ok and untried."""
        with self.db.read() as conn:
            return {row.outlet_id: Health(**row._mapping) for row in conn.execute(sa.select(*COLUMNS))}

    def paused(self) -> dict[str, str]:
        """Paused outlets and why."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(h.c.outlet_id, h.c.paused_reason).where(h.c.paused_at.is_not(None)))
            return {row.outlet_id: row.paused_reason or "" for row in rows}

    def resume(self, outlet_id: str, now: datetime | None = None, actor: Actor | None = None) -> int | None:
        """Resume a paused outlet (and close its breaker), audited as ``actor``'s. Returns its held
        deliveries, now due; None when the outlet was not paused (nothing changed)."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            row = conn.execute(sa.select(*COLUMNS).where(h.c.outlet_id == outlet_id)).first()
            if row is None or (row.paused_at is None and row.open_until is None):
                return None
            conn.execute(h.update().where(h.c.outlet_id == outlet_id).values(vars(resumed(Health(**row._mapping)))))
            conn.execute(
                d.update().where(d.c.outlet_id == outlet_id, d.c.status == "pending", d.c.next_attempt_at > now)
                .values(next_attempt_at=now, updated_at=now)
            )
            self.db.notify(conn)
            due: int = conn.execute(
                sa.select(sa.func.count()).where(d.c.outlet_id == outlet_id, d.c.status == "pending")
            ).scalar_one()
            record(conn, actor, "outlet.resume", outlet_id, now, due=due, was_paused_because=row.paused_reason,
                   breaker_was_open_until=row.open_until)
            return due

    def pause(self, outlet_id: str, reason: str, now: datetime | None = None, actor: Actor | None = None) -> int | None:
        """Pause an outlet by hand, audited as ``actor``'s: its deliveries are held (never dropped) until it is
        resumed. Returns its deliveries now held; None when it was already paused (nothing changed)."""
        reason = (clean_text(reason.strip()) or "")[:500] or "paused by an operator"
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            insert_new(conn, h, [{"outlet_id": outlet_id}], "outlet_id")
            paused = conn.execute(
                h.update().where(h.c.outlet_id == outlet_id, h.c.paused_at.is_(None))
                .values(paused_at=now, paused_reason=reason, status="paused", open_until=None)
            ).rowcount
            if not paused:
                return None
            held: int = conn.execute(
                sa.select(sa.func.count()).where(d.c.outlet_id == outlet_id, d.c.status == "pending")
            ).scalar_one()
            record(conn, actor, "outlet.pause", outlet_id, now, reason=reason, held=held)
            return held

    def after_attempts(
        self, conn: Connection, records: Sequence[AttemptRecord], now: datetime, policy: HealthPolicy
    ) -> None:
        """Apply the attempts' outcomes to their outlets' health, raising alerts, in the caller's transaction."""
        # the bulk of a fan-out: outlets whose tries were all delivered and whose row is clean (ok, no failures,
        # breaker shut, not paused) move last_success_at alone and raise nothing, in one statement
        delivered = {r.outlet_id for r in records} - {r.outlet_id for r in records if r.outcome != "delivered"}
        if delivered:
            clean = self.db.prepared("clean delivered outlets", lambda: (
                h.update().where(self.db.among_param(h.c.outlet_id, "h_outlets"), h.c.status == "ok",
                                 h.c.consecutive_failures == 0, h.c.failing_since.is_(None), h.c.open_until.is_(None),
                                 h.c.paused_at.is_(None))
                .values(last_success_at=sa.bindparam("h_now", type_=UTCDateTime)).returning(h.c.outlet_id)))
            done = set(conn.execute(clean, {"h_outlets": self.db.among_value(sorted(delivered)), "h_now": now})
                       .scalars())
            records = [r for r in records if r.outlet_id not in done]
            if not records:
                return
        outlet_ids = sorted({r.outlet_id for r in records})
        # every outlet gets its row first, so two workers recording the same new outlet cannot collide
        insert_new(conn, h, [{"outlet_id": o} for o in outlet_ids], "outlet_id")
        before = {row.outlet_id: Health(*row) for row in conn.execute(  # COLUMNS are in Health's order
            sa.select(*COLUMNS).where(h.c.outlet_id.in_(outlet_ids)).with_for_update()
        )}
        after = dict(before)
        events: list[HealthEvent] = []
        raised: list[dict[str, Any]] = []
        for r in records:
            reason = (r.error or "paused") if r.pause_outlet else None
            after[r.outlet_id], new = after_attempt(after[r.outlet_id], r.outcome == "delivered", now, policy, reason)
            events += new
            if r.exhausted:
                streak = after[r.outlet_id].failing_since or now
                raised.append(alert(
                    f"exhausted:{r.outlet_id}:{streak.isoformat()}", "exhausted",
                    f"outlet {r.outlet_id}: retries exhausted, delivery failed ({r.error}). "
                    f"See `debunkbot log --outlet {r.outlet_id} --status failed`; requeue with "
                    f"`debunkbot retry --outlet {r.outlet_id}`", now))
        raised += [alert(f"{e.kind}:{e.outlet_id}:{e.at.isoformat()}", e.kind, e.text, now) for e in events]
        # only the columns that changed, outlets alike in one statement: a delivery to a healthy outlet moves
        # last_success_at alone (the rows are this transaction's, locked above: the rest is as read)
        changed: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for oid, health in after.items():
            was = before[oid]
            if was != health:
                names = tuple(n for n in FIELDS if getattr(was, n) != getattr(health, n))
                changed.setdefault(names, []).append(
                    {"b_outlet_id": oid} | {f"b_{n}": getattr(health, n) for n in names})
        for names, rows in changed.items():
            conn.execute(h.update().where(h.c.outlet_id == sa.bindparam("b_outlet_id")).values(
                {n: sa.bindparam(f"b_{n}") for n in names}), rows)
        raise_alerts(conn, raised)
