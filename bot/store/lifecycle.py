"""A notice's life after it is stored: corrections (更正: versions), retractions (撤回), backfill and history.

A delivery carries one version of its notice (``version``) and knows the latest the outlet received
(``sent_version``); what it sends next follows from those and the notice's retraction (``carries``):

- not yet received: the latest version, as an ordinary post (``notice``);
- received an older version: a ``correction`` to the latest;
- the notice is retracted: the ``retraction`` if the outlet received anything, else nothing (cancelled).

A correction or retraction only moves rows the store holds; a send in flight is settled when its result is
recorded (``settle``): a v1 that was delivered while v2 arrived is followed by the correction, and a claim
always carries the row's version, so no outlet is sent v1 after v2.

    >>> store.lifecycle.retract("cq-1", "核实有误", actor)        # doctest: +SKIP
    >>> store.lifecycle.history("cq-1")                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bot.model import Change, Notice, Urgency, differences
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text, insert_new
from bot.store.tables import attempts, deliveries, notice_versions, notices, outlet_health

if TYPE_CHECKING:
    from bot.outlets import Outlet

d, n, v = deliveries, notices, notice_versions
RETRACTED = "retracted"  # the cancel_reason of a delivery whose notice was retracted before it was sent
NOTICE, CORRECTION, RETRACTION = "notice", "correction", "retraction"


def webhook_id(message_id: str, version: int, carries: str) -> str:
    """The webhook-id of what a delivery carries: its message id for version 1, one per later version, one for
    the retraction; stable for each version x outlet, so a receiver dedupes retries and tells versions apart.

    >>> webhook_id("msg_ab", 1, "notice"), webhook_id("msg_ab", 2, "correction"), webhook_id("msg_ab", 2, "retraction")
    ('msg_ab', 'msg_ab.v2', 'msg_ab.retracted')
    """
    if carries == RETRACTION:
        return f"{message_id}.retracted"
    return message_id if version == 1 else f"{message_id}.v{version}"


def carries(retracted: bool, version: int, sent_version: int | None) -> str:
    """What a delivery sends next (see the module's docstring)."""
    if retracted:
        return RETRACTION
    return CORRECTION if sent_version is not None and sent_version < version else NOTICE


@dataclass(frozen=True)
class Settled:
    """A recorded try's effect on its delivery: its status, the version the outlet now has, what it carries."""

    status: str
    sent_version: int | None
    carries: str
    again: bool = False  # due again now, on a fresh schedule: the outlet needs a newer version or the retraction
    cancel_reason: str | None = None


def settle(outcome_status: str, tried_version: int, tried_carries: str, version: int, sent_version: int | None,
           retracted: bool) -> Settled:
    """What a delivery becomes once a try of ``tried_version`` (carrying ``tried_carries``) ended with
    ``outcome_status`` (delivered | pending | failed | cancelled), while the row now carries ``version`` and the
    notice may have been retracted since the claim.

    >>> settle("delivered", 1, "notice", 2, None, False)
    Settled(status='pending', sent_version=1, carries='correction', again=True, cancel_reason=None)
    """
    if outcome_status == "delivered" and tried_carries != RETRACTION:
        sent_version = max(sent_version or 0, tried_version)
    now_carries = carries(retracted, version, sent_version)
    if retracted and sent_version is None:  # it never reached the outlet: nothing to take back
        return Settled("cancelled", None, NOTICE, cancel_reason=RETRACTED)
    if outcome_status == "delivered":
        if tried_carries == RETRACTION:
            return Settled("delivered", sent_version, RETRACTION)
        if now_carries != NOTICE:  # a correction or the retraction came while this was in flight
            return Settled("pending", sent_version, now_carries, again=True)
        return Settled("delivered", sent_version, NOTICE)
    # a failed try of an older message does not hold back a correction or retraction the outlet needs; a post the
    # outlet never got stays failed, as any failed delivery does, and an operator's retry sends the latest version
    if outcome_status == "failed" and now_carries != NOTICE and (version > tried_version or now_carries != tried_carries):
        return Settled("pending", sent_version, now_carries, again=True)
    return Settled(outcome_status, sent_version, now_carries)


class Lifecycle:
    def __init__(self, db: Db) -> None:
        self.db = db

    # -- corrections (called by Queue.add_notices, in its transaction) -------------------------------

    def correct_in(self, conn: sa.Connection, existing: Any, notice: Notice, outlets: Sequence[Outlet],
                   now: datetime, actor: Actor | None, source: str) -> tuple[int, int]:
        """Store ``notice`` as the next version of the stored one (``existing``: its notices row); returns
        (version, deliveries that will carry it). Outlets the new version concerns and the old did not get it
        as an ordinary post."""
        if existing.retracted_at is not None:
            raise NotCorrectable(notice.ref, "it was retracted; submit a new notice under a new ref")
        note = notice.correction_note
        assert note  # the model requires it with correct: true
        version = existing.version + 1
        old = Notice.from_stored(existing.payload)
        changed = [field for field, _, _ in differences(old, notice)]
        by = actor.name if actor else source
        conn.execute(v.insert().values(notice_id=existing.id, version=version, content_hash=notice.content_hash(),
                                       payload=notice.canonical_json(), created_at=now, created_by=clean_text(by[:100]),
                                       correction_note=note))
        conn.execute(n.update().where(n.c.id == existing.id).values(
            version=version, content_hash=notice.content_hash(), payload=notice.canonical_json(), title=notice.title,
            urgency=notice.urgency.value, expires_at=notice.expires_at))
        if existing.released_at is None:  # still embargoed: the correction's publish_at holds (none: at once)
            publish_at = notice.publish_at or now
            conn.execute(n.update().where(n.c.id == existing.id).values(publish_at=publish_at))
            conn.execute(d.update().where(d.c.notice_id == existing.id, d.c.status == "held")
                         .values(next_attempt_at=publish_at))
        from bot.store.queue import NORMAL_LANE, URGENT_LANE  # the queue uses this module: imported on use

        conn.execute(d.update().where(d.c.notice_id == existing.id, d.c.origin != "backfill").values(
            lane=URGENT_LANE if notice.urgency == Urgency.urgent else NORMAL_LANE))
        # pending and held ones (in flight too: ``settle`` follows up), and those that failed: the latest only
        conn.execute(d.update().where(d.c.notice_id == existing.id, d.c.sent_version.is_(None))
                     .values(version=version, expires_at=notice.expires_at))
        # those that received an earlier version: the correction, due now, on a fresh schedule (a send in flight
        # keeps its lease and is settled when recorded)
        conn.execute(d.update().where(d.c.notice_id == existing.id, d.c.sent_version.is_not(None))
                     .values(version=version, carries=CORRECTION, expires_at=notice.expires_at))
        conn.execute(d.update().where(d.c.notice_id == existing.id, d.c.sent_version.is_not(None),
                                      d.c.status.in_(("delivered", "failed")))
                     .values(status="pending", next_attempt_at=now, schedule_start=d.c.attempts, updated_at=now,
                             delivered_at=None, http_status=None, error=None))
        have = set(conn.execute(sa.select(d.c.outlet_id).where(d.c.notice_id == existing.id)).scalars())
        new = [o for o in outlets if o.id not in have]
        if new:
            add_deliveries(conn, existing.id, new, version, now, held=existing.released_at is None,
                           notice=notice)
        count = conn.execute(sa.select(sa.func.count()).select_from(d).where(
            d.c.notice_id == existing.id, d.c.status.in_(("pending", "held")))).scalar_one()
        record(conn, actor, "notice.correct", notice.ref, now, version=version, correction_note=note,
               changed=changed, deliveries=count, source=source)
        return version, count

    # -- retractions ----------------------------------------------------------------------------------

    def retract(self, ref: str, reason: str, actor: Actor | None, now: datetime | None = None) -> dict[str, int]:
        """Retract a notice: its deliveries not yet received are cancelled (reason "retracted"); every outlet that
        received a version gets the retraction. Returns {"cancelled": n, "retractions": n}. Retracting it again
        changes nothing (and is not audited); an unknown ref raises LookupError."""
        reason = reason.strip()
        if not reason:
            raise ValueError("a retraction needs a reason")
        with self.db.tx() as conn:
            done = self.retract_in(conn, ref, reason, actor, now or self.db.now(conn))
            self.db.notify(conn)
        return done

    def retract_in(self, conn: sa.Connection, ref: str, reason: str, actor: Actor | None, now: datetime
                   ) -> dict[str, int]:
        """``retract`` in the caller's transaction (the review releases a retraction with it); no notify."""
        row = conn.execute(sa.select(n.c.id, n.c.retracted_at).where(n.c.ref == ref).with_for_update()).first()
        if row is None:
            raise LookupError(f"no notice with ref {ref!r}")
        if row.retracted_at is not None:
            return {"cancelled": 0, "retractions": 0}
        conn.execute(n.update().where(n.c.id == row.id).values(
            retracted_at=now, retraction_reason=clean_text(reason),
            retracted_by=clean_text((actor.name if actor else "daemon")[:100])))
        live = sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now)
        cancelled = conn.execute(d.update().where(
            d.c.notice_id == row.id, d.c.sent_version.is_(None), d.c.status.in_(("pending", "held", "failed")),
            live).values(status="cancelled", cancel_reason=RETRACTED, next_attempt_at=None, lease_owner=None,
                         lease_expires_at=None, updated_at=now)).rowcount
        conn.execute(d.update().where(d.c.notice_id == row.id, d.c.sent_version.is_not(None))
                     .values(carries=RETRACTION))
        retractions = conn.execute(d.update().where(
            d.c.notice_id == row.id, d.c.sent_version.is_not(None),
            sa.or_(d.c.status.in_(("delivered", "failed", "cancelled")), live))
            .values(status="pending", next_attempt_at=now, schedule_start=d.c.attempts, lease_owner=None,
                    lease_expires_at=None, delivered_at=None, http_status=None, error=None, cancel_reason=None,
                    expires_at=None, updated_at=now)).rowcount
        record(conn, actor, "notice.retract", ref, now, reason=reason, cancelled=cancelled,
               retractions=retractions)
        return {"cancelled": cancelled, "retractions": retractions}

    # -- backfill -------------------------------------------------------------------------------------

    def backfill(self, outlet: Outlet, since: datetime, concerned: Any, actor: Actor | None,
                 now: datetime | None = None, dry_run: bool = False) -> list[str]:
        """Give ``outlet`` the live notices released since ``since`` it has no delivery of (not retracted, not
        expired; their latest version), oldest first: the claim takes them in that order, within the outlet's
        rate limit, and their tries are logged with trigger ``backfill``. ``concerned(notice, outlet)``: whether
        the outlet's targeting takes the notice. Returns the refs (would be) added."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            rows = conn.execute(
                sa.select(n.c.id, n.c.ref, n.c.payload, n.c.version).where(
                    n.c.released_at.is_not(None), n.c.released_at >= since, n.c.retracted_at.is_(None),
                    sa.or_(n.c.expires_at.is_(None), n.c.expires_at > now),
                    ~sa.exists().where(d.c.notice_id == n.c.id, d.c.outlet_id == outlet.id))
                .order_by(n.c.released_at, n.c.id)).all()
            chosen = [r for r in rows if concerned(Notice.from_stored(r.payload), outlet)]
            if chosen and not dry_run:
                insert_new(conn, outlet_health, [{"outlet_id": outlet.id}], "outlet_id")
                for r in chosen:  # one at a time, so ids (the claim's tie-break) follow release order
                    add_deliveries(conn, r.id, [outlet], r.version, now, held=False,
                                   notice=Notice.from_stored(r.payload), origin="backfill")
                record(conn, actor, "outlet.backfill", outlet.id, now, since=since, notices=len(chosen))
                self.db.notify(conn)
        return [r.ref for r in chosen]

    # -- reading --------------------------------------------------------------------------------------

    def history(self, ref: str) -> dict[str, Any] | None:
        """A notice's versions (each with its differences from the one before), its retraction, and each outlet's
        timeline (every try: when, which version, what it carried, how it ended). None for an unknown ref."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(n).where(n.c.ref == ref)).first()
            if row is None:
                return None
            versions = conn.execute(sa.select(v).where(v.c.notice_id == row.id).order_by(v.c.version)).all()
            rows = conn.execute(
                sa.select(d.c.id, d.c.outlet_id, d.c.status, d.c.version, d.c.sent_version, d.c.carries, d.c.origin,
                          d.c.cancel_reason, attempts.c.number, attempts.c.started_at, attempts.c.outcome,
                          attempts.c.trigger, attempts.c.version.label("tried_version"),
                          attempts.c.carries.label("tried_carries"), attempts.c.error)
                .select_from(d.outerjoin(attempts, attempts.c.delivery_id == d.c.id))
                .where(d.c.notice_id == row.id).order_by(d.c.outlet_id, attempts.c.started_at, attempts.c.id)).all()
        shown: list[dict[str, Any]] = []
        previous: Notice | None = None
        for ver in versions:
            notice = Notice.from_stored(ver.payload)
            shown.append({"version": ver.version, "at": ver.created_at, "by": ver.created_by,
                          "correction_note": ver.correction_note,
                          "changes": [{"field": f, "before": a, "after": b}
                                      for f, a, b in (differences(previous, notice) if previous else [])]})
            previous = notice
        outlets: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = outlets.setdefault(r.outlet_id, {
                "outlet": r.outlet_id, "status": r.status, "version": r.version, "received_version": r.sent_version,
                "carries": r.carries, "origin": r.origin, "cancel_reason": r.cancel_reason, "attempts": []})
            if r.number is not None:
                entry["attempts"].append({"number": r.number, "at": r.started_at, "version": r.tried_version,
                                          "carries": r.tried_carries, "trigger": r.trigger, "outcome": r.outcome,
                                          "error": r.error})
        retraction = None if row.retracted_at is None else {
            "at": row.retracted_at, "by": row.retracted_by, "reason": row.retraction_reason}
        return {"ref": ref, "version": row.version, "versions": shown, "retraction": retraction,
                "outlets": list(outlets.values())}

    def state(self, ref: str) -> dict[str, Any] | None:
        """A notice's version and its retraction (at, by, reason; None when it stands), without the history."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(n.c.version, n.c.retracted_at, n.c.retracted_by, n.c.retraction_reason)
                               .where(n.c.ref == ref)).first()
        if row is None:
            return None
        return {"version": row.version, "retraction": None if row.retracted_at is None else {
            "at": row.retracted_at, "by": row.retracted_by, "reason": row.retraction_reason}}

    def changes_for(self, conn: sa.Connection, keys: set[tuple[int, int, str, int | None, str]]
                    ) -> dict[tuple[int, int, str, int | None, str], Change]:
        """The Change each (notice id, version, carries, sent_version, message_id) of a claim carries (ordinary
        posts have none)."""
        wanted = [k for k in keys if k[2] != NOTICE]
        if not wanted:
            return {}
        ids = {k[0] for k in wanted}
        notes = {(r.notice_id, r.version): r for r in conn.execute(
            sa.select(v.c.notice_id, v.c.version, v.c.payload, v.c.correction_note, v.c.created_at)
            .where(v.c.notice_id.in_(ids)))}
        retractions = {r.id: r for r in conn.execute(
            sa.select(n.c.id, n.c.retracted_at, n.c.retraction_reason).where(n.c.id.in_(ids)))}
        found: dict[tuple[int, int, str, int | None, str], Change] = {}
        for key in wanted:
            notice_id, version, kind, sent, message_id = key
            before = webhook_id(message_id, sent, NOTICE) if sent else None
            if kind == RETRACTION:
                r = retractions[notice_id]
                found[key] = Change(kind=RETRACTION, version=version, previous_version=sent,
                                    previous_message_id=before, note=r.retraction_reason or "",
                                    at=r.retracted_at)
            else:
                now_v, was_v = notes[(notice_id, version)], notes.get((notice_id, sent or 0))
                changed: tuple[str, ...] = ()
                if was_v is not None:
                    changed = tuple(f for f, _, _ in differences(Notice.from_stored(was_v.payload),
                                                                 Notice.from_stored(now_v.payload)))
                found[key] = Change(kind=CORRECTION, version=version, previous_version=sent,
                                    previous_message_id=before, note=now_v.correction_note or "", changed=changed,
                                    at=now_v.created_at)
        return found


class NotCorrectable(ValueError):
    """A correction the store cannot take: the ref is unknown, or the notice was retracted."""

    def __init__(self, ref: str, why: str) -> None:
        super().__init__(f"ref {ref!r} cannot be corrected: {why}")
        self.ref = ref


def add_deliveries(conn: sa.Connection, notice_id: int, outlets: Sequence[Outlet], version: int, now: datetime,
                   held: bool, notice: Notice, origin: str = "submit") -> None:
    """A delivery of ``version`` for each outlet (and a health row for outlets without one)."""
    from bot.store.queue import NORMAL_LANE, URGENT_LANE, new_message_id  # the queue uses this module

    insert_new(conn, outlet_health, [{"outlet_id": o.id} for o in outlets], "outlet_id")
    lane = URGENT_LANE if notice.urgency == Urgency.urgent and origin != "backfill" else NORMAL_LANE
    conn.execute(d.insert(), [
        {"notice_id": notice_id, "outlet_id": o.id, "tier": o.tier.value, "status": "held" if held else "pending",
         "message_id": new_message_id(), "attempts": 0, "next_attempt_at": notice.publish_at if held else now,
         "updated_at": now, "lane": lane, "expires_at": notice.expires_at, "version": version, "origin": origin}
        for o in outlets])
