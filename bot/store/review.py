"""Review before release (先审后发): a notice, correction or retraction waits as a draft until its stages are signed.

With ``DEBUNKBOT_REVIEW_STAGES`` = N > 0 (``Review.stages``), what an editor submits is kept here, not in
``notices``: nothing is delivered, nothing is even scheduled. Reviewers (the ``reviewer`` role, or operator and
admin) sign stage 1, 2, … N in order (初审, 复审, 终审 for N = 3); each stage by a different person, none by an
author (who submitted or edited it). The N-th sign-off releases it in the same transaction: it is stored with a
delivery for every outlet it concerns (intake's store code and the matrix's targeting), and its embargo
(``publish_at``) counts from then: released after its publish_at, it goes at once.

- a send-back (``return_``) needs a comment; the draft goes back to its authors and its sign-offs stop counting;
- an edit (the same ref submitted again with other content while it is a draft) voids the sign-offs too;
- an operator may release an ``urgency: urgent`` one after fewer stages (at least one), with a reason (紧急发布);
- every sign-off, send-back and release is a ``review_decisions`` row and an audit row, written in the
  transaction of the decision, with the SHA-256 of the content the person saw.

A round counts the sign-offs: a send-back or an edit starts a new round, and only the current round's count.

    >>> store.review.stages = 3                                                      # doctest: +SKIP
    >>> store.review.submit([notice], "api:张三", Actor("张三", "editor", "::1"))       # doctest: +SKIP
    >>> store.review.sign("cq-1", 1, Actor("李四", "reviewer", "::1"), "语言无误", matrix.concerned_by)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bot.model import Notice, Urgency
from bot.store.access import Role
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text
from bot.store.lifecycle import Lifecycle, NotCorrectable
from bot.store.outbox import alert, raise_alerts
from bot.store.queue import Added, Queue, RefConflict
from bot.store.tables import alerts, notice_versions, notices, review_decisions, reviews

if TYPE_CHECKING:
    from bot.outlets import Outlet

log = logging.getLogger("debunkbot.review")
r, rd, n = reviews, review_decisions, notices
OPEN = ("draft", "returned")
NOTICE, CORRECTION, RETRACTION = "notice", "correction", "retraction"
SIGN, RETURN, RELEASE, URGENT_RELEASE = "sign", "return", "release", "urgent-release"
Concerned = Callable[[Notice], Sequence["Outlet"]]  # the outlets a notice concerns: ``matrix.concerned_by``


class ReviewRefused(PermissionError):
    """A decision this person may not make (403): the author, a second stage, a role too low."""


class ReviewConflict(ValueError):
    """A decision that does not fit the review's state (409): a stage out of order, nothing waiting, changed
    content."""


@dataclass(frozen=True)
class Decision:
    round: int
    stage: int
    decision: str  # sign | return | release | urgent-release
    actor: str
    role: str
    at: datetime
    comment: str | None
    content_hash: str
    counts: bool  # a sign-off of the current round (not voided by a send-back or an edit)


@dataclass(frozen=True)
class ReviewState:
    """One review: what waits (or was released), who wrote it, and every decision on it."""

    id: int
    ref: str
    kind: str
    state: str  # draft | returned | released
    stages: int
    round: int
    notice: Notice | None  # a retraction: the notice as stored
    reason: str | None
    content_hash: str
    authors: tuple[str, ...]
    source: str
    created_at: datetime
    waiting_since: datetime
    released_at: datetime | None
    released_by: str | None
    urgent_reason: str | None
    decisions: tuple[Decision, ...] = field(default=())

    @property
    def signed(self) -> list[Decision]:
        """The sign-offs that count, stage by stage."""
        return sorted((d for d in self.decisions if d.counts and d.decision == SIGN), key=lambda d: d.stage)

    @property
    def waiting_for(self) -> int | None:
        """The stage it waits for (1..stages); None once released."""
        return None if self.state == "released" else len(self.signed) + 1

    @property
    def urgent(self) -> bool:
        return self.notice is not None and self.notice.urgency == Urgency.urgent


def retraction_hash(ref: str, reason: str, notice_hash: str) -> str:
    """What a reviewer of a retraction reads: the notice (its hash) and the reason."""
    return hashlib.sha256(json.dumps([ref, reason, notice_hash], ensure_ascii=False).encode()).hexdigest()


class Review:
    def __init__(self, db: Db, queue: Queue, lifecycle: Lifecycle, stages: int = 0) -> None:
        self.db = db
        self.queue = queue
        self.lifecycle = lifecycle
        self.stages = stages  # DEBUNKBOT_REVIEW_STAGES; 0: no review, a submitted notice is approved

    # -- drafts in ------------------------------------------------------------------------------------

    def submit(self, notices_: Sequence[Notice], source: str, actor: Actor | None, now: datetime | None = None
               ) -> list[Added]:
        """Keep notices (or corrections: ``correct: true``) as drafts, all or none. The same ref submitted again
        while a draft: identical, nothing changes; other content, an edit (its sign-offs void, audited
        ``review.edit``). A ref already released: identical is a no-op, other content needs ``correct: true``
        (RefConflict) and becomes a correction draft."""
        results: list[Added] = []
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            for notice in notices_:
                digest = notice.content_hash()
                stored = conn.execute(sa.select(n.c.content_hash, n.c.retracted_at).where(n.c.ref == notice.ref)
                                      ).first()
                kind = CORRECTION if stored is not None else NOTICE
                if stored is not None and stored.content_hash == digest:
                    results.append(Added(notice.ref, created=False, deliveries=0))
                    continue
                if stored is not None and not notice.correct:
                    raise RefConflict(notice.ref)
                if stored is not None and stored.retracted_at is not None:
                    raise NotCorrectable(notice.ref, "it was retracted; submit a new notice under a new ref")
                if stored is None and notice.correct:
                    open_ = self._open(conn, notice.ref)
                    if open_ is None or open_.kind != NOTICE:
                        raise NotCorrectable(notice.ref, "no notice is stored under it; submit it without "
                                                         "correct: true")
                    notice = notice.model_copy(update={"correct": False, "correction_note": None})
                    digest = notice.content_hash()
                open_ = self._open(conn, notice.ref)
                if open_ is not None and open_.kind == RETRACTION:
                    raise ReviewConflict(f"ref {notice.ref!r} has a retraction waiting for review; it cannot be "
                                         "corrected until that is released or withdrawn")
                if open_ is not None:
                    results.append(self._edit(conn, open_, notice, digest, actor, source, now))
                    continue
                conn.execute(r.insert().values(
                    ref=notice.ref, kind=kind, state="draft", stages=self.stages, round=1,
                    payload=notice.canonical_json(), reason=clean_text(notice.correction_note), content_hash=digest,
                    authors=_names([_who(actor, source)]),
                    source=source[:500], created_at=now, waiting_since=now))
                record(conn, actor, "notice.submit" if kind == NOTICE else "notice.correct", notice.ref, now,
                       draft=True, stages=self.stages, content_hash=digest, source=source, title=notice.title,
                       urgency=notice.urgency.value)
                results.append(Added(notice.ref, created=True, deliveries=0, draft=True))
        return results

    def _edit(self, conn: sa.Connection, open_: Any, notice: Notice, digest: str, actor: Actor | None, source: str,
              now: datetime) -> Added:
        if open_.content_hash == digest:
            return Added(notice.ref, created=False, deliveries=0, draft=True)
        signed = conn.execute(sa.select(sa.func.count()).select_from(rd).where(
            rd.c.review_id == open_.id, rd.c.round == open_.round, rd.c.decision == SIGN)).scalar_one()
        authors = _names([*json.loads(open_.authors), _who(actor, source)])
        voids = signed > 0 or open_.state == "returned"
        conn.execute(r.update().where(r.c.id == open_.id).values(
            payload=notice.canonical_json(), content_hash=digest, authors=authors, state="draft",
            reason=clean_text(notice.correction_note) if open_.kind == CORRECTION else open_.reason,
            round=open_.round + 1 if voids else open_.round, waiting_since=now))
        record(conn, actor, "review.edit", notice.ref, now, before=open_.content_hash, content_hash=digest,
               voided=signed, round=open_.round + 1 if voids else open_.round)
        return Added(notice.ref, created=True, deliveries=0, draft=True)

    def request_retraction(self, ref: str, reason: str, actor: Actor, now: datetime | None = None) -> bool:
        """Keep a retraction of a released notice as a draft for review; a draft notice never released is
        withdrawn at once (nothing was sent). Returns True when a review now waits. LookupError: unknown ref."""
        reason = reason.strip()
        if not reason:
            raise ValueError("a retraction needs a reason")
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            stored = conn.execute(sa.select(n.c.content_hash, n.c.retracted_at).where(n.c.ref == ref)).first()
            open_ = self._open(conn, ref)
            if stored is None:
                if open_ is None:
                    raise LookupError(f"no notice with ref {ref!r}")
                conn.execute(r.update().where(r.c.id == open_.id).values(state="withdrawn", waiting_since=now))
                record(conn, actor, "review.withdraw", ref, now, reason=reason, content_hash=open_.content_hash)
                return False
            if stored.retracted_at is not None:
                return False
            if open_ is not None:
                raise ReviewConflict(f"ref {ref!r} already has a {open_.kind} waiting for review; send it back "
                                     "or release it first")
            digest = retraction_hash(ref, reason, stored.content_hash)
            conn.execute(r.insert().values(
                ref=ref, kind=RETRACTION, state="draft", stages=self.stages, round=1, payload=None,
                reason=clean_text(reason), content_hash=digest, authors=_names([actor.name]), source="retract",
                created_at=now, waiting_since=now))
            record(conn, actor, "notice.retract", ref, now, draft=True, reason=reason, content_hash=digest)
        return True

    # -- decisions ------------------------------------------------------------------------------------

    def sign(self, ref: str, stage: int, actor: Actor, comment: str | None, concerned: Concerned,
             seen: str | None = None, now: datetime | None = None) -> ReviewState:
        """Sign ``stage`` of the draft ``ref`` as ``actor``; the last stage releases it (deliveries made for
        ``concerned(notice)``). ``seen``: the content hash the reviewer read (a changed draft: ReviewConflict).
        ReviewRefused: the role is too low, the actor wrote it or signed another stage; ReviewConflict: the
        stage is not the one it waits for; LookupError: nothing of ``ref`` waits."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            row = self._waiting(conn, ref)
            _may_review(actor, row)
            signed = self._signed(conn, row)
            if stage != len(signed) + 1:
                raise ReviewConflict(f"stage {stage} is out of order: {ref} waits for stage {len(signed) + 1} of "
                                     f"{row.stages}; nothing was recorded")
            mine = [s for s in signed if s.actor == actor.name]
            if mine:
                raise ReviewRefused(f"{actor.name} signed stage {mine[0].stage} of {ref} already; each stage is "
                                    "signed by a different person; nothing was recorded")
            _saw(row, seen)
            self._decide(conn, row, stage, SIGN, actor, comment, now)
            conn.execute(r.update().where(r.c.id == row.id).values(state="draft", waiting_since=now))
            if stage >= row.stages:
                self._release(conn, row, actor, concerned, now, urgent_reason=None)
        return self.get(ref) or _gone(ref)

    def return_(self, ref: str, actor: Actor, comment: str, stage: int | None = None, seen: str | None = None,
                now: datetime | None = None) -> ReviewState:
        """Send the draft back to its authors with ``comment`` (required): its sign-offs stop counting."""
        comment = (comment or "").strip()
        if not comment:
            raise ValueError("a send-back needs a comment saying what to change")
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            row = self._waiting(conn, ref)
            _may_review(actor, row)
            waiting = len(self._signed(conn, row)) + 1
            if stage is not None and stage != waiting:
                raise ReviewConflict(f"stage {stage} is out of order: {ref} waits for stage {waiting} of "
                                     f"{row.stages}; nothing was recorded")
            _saw(row, seen)
            self._decide(conn, row, waiting, RETURN, actor, comment, now)
            conn.execute(r.update().where(r.c.id == row.id).values(state="returned", round=row.round + 1,
                                                                   waiting_since=now))
        return self.get(ref) or _gone(ref)

    def release(self, ref: str, actor: Actor, reason: str, concerned: Concerned, now: datetime | None = None
                ) -> ReviewState:
        """The urgent path (紧急发布): an operator releases an ``urgency: urgent`` draft after fewer stages than it
        needs (at least one signed), with ``reason``; the release is marked urgent wherever it shows."""
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("an urgent release needs a reason (紧急发布的理由)")
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            row = self._waiting(conn, ref)
            if _role(actor) < Role.operator:
                raise ReviewRefused(f"an urgent release needs the role operator or higher; {actor.name} has "
                                    f"{actor.role}; nothing was released")
            if actor.name in json.loads(row.authors):
                raise ReviewRefused(f"{actor.name} wrote {ref}; an author does not release it; nothing was released")
            state = self._state(conn, row)
            if not state.urgent:
                raise ReviewConflict(f"{ref} is not urgency: urgent; only urgent notices may be released before "
                                     f"their {row.stages} stage(s) are signed; nothing was released")
            if not state.signed:
                raise ReviewConflict(f"{ref} has no stage signed yet; an urgent release needs at least stage 1 "
                                     "signed; nothing was released")
            if row.state == "returned":
                raise ReviewConflict(f"{ref} was sent back; nothing was released")
            self._release(conn, row, actor, concerned, now, urgent_reason=reason)
        return self.get(ref) or _gone(ref)

    # -- inside the transaction -----------------------------------------------------------------------

    def _decide(self, conn: sa.Connection, row: Any, stage: int, decision: str, actor: Actor, comment: str | None,
                now: datetime) -> None:
        comment = clean_text((comment or "").strip()) or None
        conn.execute(rd.insert().values(review_id=row.id, round=row.round, stage=stage, decision=decision,
                                        actor=clean_text(actor.name[:100]), role=actor.role[:16], at=now,
                                        comment=comment, content_hash=row.content_hash))
        record(conn, actor, {SIGN: "review.sign", RETURN: "review.return"}.get(decision, "notice.release"), row.ref,
               now, kind=row.kind, stage=stage, round=row.round, comment=comment, content_hash=row.content_hash)

    def _release(self, conn: sa.Connection, row: Any, actor: Actor, concerned: Concerned, now: datetime,
                 urgent_reason: str | None) -> None:
        signed = len(self._signed(conn, row))
        comment = urgent_reason
        self._decide(conn, row, signed, URGENT_RELEASE if urgent_reason else RELEASE, actor, comment, now)
        author = json.loads(row.authors)[0]
        by = Actor(author, "author", row.source[:200])
        if row.kind == RETRACTION:
            self.lifecycle.retract_in(conn, row.ref, row.reason, by, now)
        else:
            notice = Notice.from_stored(row.payload)
            if row.kind == CORRECTION:
                notice = notice.model_copy(update={"correct": True, "correction_note": row.reason})
            self.queue.add_in(conn, [(notice, concerned(notice))], row.source, now, None)
            if row.kind == NOTICE:  # the author wrote it, when it was submitted; it was released now
                notice_id = conn.execute(sa.select(n.c.id).where(n.c.ref == row.ref)).scalar_one()
                conn.execute(n.update().where(n.c.id == notice_id).values(submitted_at=row.created_at))
                conn.execute(notice_versions.update().where(notice_versions.c.notice_id == notice_id,
                                                            notice_versions.c.version == 1)
                             .values(created_by=clean_text(author[:100])))
            else:
                version = conn.execute(sa.select(n.c.id, n.c.version).where(n.c.ref == row.ref)).one()
                conn.execute(notice_versions.update().where(notice_versions.c.notice_id == version.id,
                                                            notice_versions.c.version == version.version)
                             .values(created_by=clean_text(author[:100])))
        conn.execute(r.update().where(r.c.id == row.id).values(
            state="released", released_at=now, released_by=clean_text(actor.name[:100]),
            urgent_reason=clean_text(urgent_reason) if urgent_reason else None))
        self.db.notify(conn)
        if urgent_reason:
            log.warning("urgent release (紧急发布) of %s %s by %s after %d of %d stage(s): %s", row.kind, row.ref,
                        actor.name, signed, row.stages, urgent_reason)
        else:
            log.info("released %s %s after its %d review stage(s)", row.kind, row.ref, row.stages)

    def _open(self, conn: sa.Connection, ref: str) -> Any:
        return conn.execute(sa.select(r).where(r.c.ref == ref, r.c.state.in_(OPEN)).with_for_update()).first()

    def _waiting(self, conn: sa.Connection, ref: str) -> Any:
        row = self._open(conn, ref)
        if row is None:
            raise LookupError(f"nothing of ref {ref!r} waits for review")
        return row

    def _signed(self, conn: sa.Connection, row: Any) -> list[Any]:
        return list(conn.execute(sa.select(rd).where(rd.c.review_id == row.id, rd.c.round == row.round,
                                                     rd.c.decision == SIGN).order_by(rd.c.stage)))

    def _state(self, conn: sa.Connection, row: Any) -> ReviewState:
        decisions = conn.execute(sa.select(rd).where(rd.c.review_id == row.id).order_by(rd.c.id)).all()
        notice = Notice.from_stored(row.payload) if row.payload else None
        if notice is None:
            payload = conn.execute(sa.select(n.c.payload).where(n.c.ref == row.ref)).scalar_one_or_none()
            notice = Notice.from_stored(payload) if payload else None
        return ReviewState(
            id=row.id, ref=row.ref, kind=row.kind, state=row.state, stages=row.stages, round=row.round, notice=notice,
            reason=row.reason, content_hash=row.content_hash, authors=tuple(json.loads(row.authors)),
            source=row.source, created_at=row.created_at, waiting_since=row.waiting_since,
            released_at=row.released_at, released_by=row.released_by, urgent_reason=row.urgent_reason,
            decisions=tuple(Decision(d.round, d.stage, d.decision, d.actor, d.role, d.at, d.comment, d.content_hash,
                                     counts=d.round == row.round) for d in decisions))

    # -- reading --------------------------------------------------------------------------------------

    def get(self, ref: str) -> ReviewState | None:
        """The review of ``ref`` that waits, else its latest one; None when it never had one."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(r).where(r.c.ref == ref).order_by(
                r.c.state.in_(OPEN).desc(), r.c.id.desc()).limit(1)).first()
            return None if row is None else self._state(conn, row)

    def all_of(self, ref: str) -> list[ReviewState]:
        """Every review of ``ref``, oldest first: the notice's, then its corrections' and retraction's."""
        with self.db.read() as conn:
            return [self._state(conn, row) for row in conn.execute(
                sa.select(r).where(r.c.ref == ref).order_by(r.c.id))]

    def urgent_releases(self, refs: Collection[str]) -> dict[str, str]:
        """ref -> the reason of its latest urgent release (紧急发布: released by an operator before every stage
        was signed), for those of these refs that had one."""
        if not refs:
            return {}
        with self.db.read() as conn:
            return {row.ref: row.urgent_reason for row in conn.execute(
                sa.select(r.c.ref, r.c.urgent_reason).where(r.c.ref.in_(list(refs)), r.c.state == "released",
                                                            r.c.urgent_reason.is_not(None)).order_by(r.c.id))}

    def waiting(self, limit: int = 200) -> list[ReviewState]:
        """Every draft and sent-back review, the longest waiting first."""
        with self.db.read() as conn:
            return [self._state(conn, row) for row in conn.execute(
                sa.select(r).where(r.c.state.in_(OPEN)).order_by(r.c.waiting_since, r.c.id).limit(limit))]

    def flag_waiting(self, after: timedelta, now: datetime | None = None) -> int:
        """Raise an operator alert (once per review and round) for each draft waiting for its next stage longer
        than ``after``. Returns the alerts raised."""
        with self.db.tx() as conn:
            now = now or self.db.now(conn)
            key = sa.literal("review-waiting:") + sa.cast(r.c.id, sa.String) + sa.literal(":") + sa.cast(
                r.c.round, sa.String)
            rows = conn.execute(sa.select(r.c.id, r.c.ref, r.c.kind, r.c.round, r.c.waiting_since).where(
                r.c.state == "draft", r.c.waiting_since <= now - after,
                ~sa.exists().where(alerts.c.key == key))).all()
            raised = [alert(f"review-waiting:{w.id}:{w.round}", "review-waiting",
                            f"{w.kind} {w.ref} has waited for review since {w.waiting_since:%Y-%m-%d %H:%M} UTC "
                            f"(over {after.total_seconds() / 60:g} minutes). See `debunkbot review show {w.ref}`",
                            now) for w in rows]
            raise_alerts(conn, raised)
        return len(raised)

    def flagged(self, after: timedelta, now: datetime) -> set[int]:
        """The ids of drafts waiting longer than ``after`` (what the queue page marks)."""
        with self.db.read() as conn:
            return set(conn.execute(sa.select(r.c.id).where(r.c.state == "draft",
                                                           r.c.waiting_since <= now - after)).scalars())


def _who(actor: Actor | None, source: str) -> str:
    return (actor.name if actor else source)[:100]


def _names(names: Sequence[str]) -> str:
    return json.dumps(list(dict.fromkeys(names)), ensure_ascii=False)


def _role(actor: Actor) -> Role:
    try:
        return Role[actor.role]
    except KeyError:
        return Role.viewer  # "local", "author": no review role unless configured (DEBUNKBOT_LOCAL_ROLES)


def _may_review(actor: Actor, row: Any) -> None:
    if _role(actor) < Role.reviewer:
        raise ReviewRefused(f"reviewing needs the role reviewer or higher; {actor.name} has {actor.role}; nothing "
                            "was recorded")
    if actor.name in json.loads(row.authors):
        raise ReviewRefused(f"{actor.name} wrote or edited {row.ref}; an author signs no stage of it; nothing was "
                            "recorded")


def _saw(row: Any, seen: str | None) -> None:
    if seen is not None and seen != row.content_hash:
        raise ReviewConflict(f"{row.ref} changed since you read it (you read {seen[:12]}…, it is now "
                             f"{row.content_hash[:12]}…); read it again; nothing was recorded")


def _gone(ref: str) -> ReviewState:
    raise LookupError(f"no review of ref {ref!r}")
