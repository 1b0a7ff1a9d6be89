"""The figures /metrics shows, read from the store, so one server's scrape shows the whole cluster.

Gauges are read from the store's state at scrape time. The two counters are kept in the store by the
processes that count: attempt latencies are added to ``attempt_latency`` in the transaction that records the
attempts (one statement per batch), store errors to ``store_errors`` by the process that saw them, once the
store answers again (``StoreErrors.save``).

    >>> figures = store.metrics.figures(urgent_deadline=timedelta(minutes=10))   # doctest: +SKIP
    >>> figures.latency["webhook"]["0.25"]                                        # doctest: +SKIP
    (41, 3.92)
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.store.engine import STORE_FAULTS, Db, is_disk_full, upsert
from bot.store.log import _hold, _state
from bot.store.outbox import late_urgent
from bot.store.tables import attempt_latency, deliveries, notices, outlet_health, store_errors

d, n, h, lat = deliveries, notices, outlet_health, attempt_latency

# Upper bounds (seconds) of the latency buckets: a send ends by DEBUNKBOT_HTTP_TIMEOUT (15 s by default)
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
LABELS = (*(f"{b:g}" for b in BUCKETS), "+Inf")


def bucket_of(seconds: float) -> str:
    """The label of the bucket a latency falls in: ``bucket_of(0.3) == "0.5"``."""
    return LABELS[bisect.bisect_left(BUCKETS, seconds)]


def add_latencies(conn: Connection, latencies: Iterable[tuple[str, float]]) -> None:
    """Add (channel, latency in ms) to the latency buckets, in the caller's transaction: one statement for the
    batch, a row per bucket it touches. The caller makes it its last statement (the rows stay locked for the
    moment to the commit only), and rows are written in key order, so workers adding at once never deadlock."""
    counts: Counter[tuple[str, str]] = Counter()
    sums: Counter[tuple[str, str]] = Counter()
    for channel, ms in latencies:
        key = (channel or "unknown", bucket_of(ms / 1000))
        counts[key] += 1
        sums[key] += ms / 1000
    rows = [{"channel": c, "le": le, "attempts": counts[c, le], "seconds": sums[c, le]} for c, le in sorted(counts)]
    _add(conn, lat, rows, ("channel", "le"), ("attempts", "seconds"))


def _add(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str],
         summed: Sequence[str], replaced: Sequence[str] = ()) -> None:
    """INSERT … ON CONFLICT DO UPDATE: counters added to, on SQLite and PostgreSQL."""
    if not rows:
        return
    conn.execute(_adding(conn.dialect.name, table, tuple(key), tuple(summed), tuple(replaced)), list(rows))


@functools.cache
def _adding(dialect: str, table: sa.Table, key: tuple[str, ...], summed: tuple[str, ...],
            replaced: tuple[str, ...]) -> Any:
    """``_add``'s statement, built once per backend and table (each record's counters use it)."""
    insert = upsert(dialect, table)
    return insert.on_conflict_do_update(
        index_elements=list(key),
        set_={**{c: table.c[c] + insert.excluded[c] for c in summed}, **{c: insert.excluded[c] for c in replaced}},
    )


def kind_of(exc: BaseException) -> str:
    """``disk_full``, ``locked`` (a lock held too long, a deadlock: the call may succeed at once when tried
    again) or ``unavailable`` (the store is down or unreachable)."""
    if isinstance(exc, Exception) and is_disk_full(exc):
        return "disk_full"
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in ("55P03", "40P01", "40001"):
        return "locked"
    text = str(orig).lower()
    return "locked" if "locked" in text or "busy" in text else "unavailable"


class StoreErrors:
    """This process's store errors, counted where they happen (every failed call on the engine, whichever
    part made it) and added to the store's ``store_errors`` by ``save()``, which the daemon calls every tick
    and the server at every scrape. A save that fails keeps the count for the next one, and is not counted."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.unsaved: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._saving = threading.local()
        sa.event.listen(db.engine, "handle_error", self._failed)

    def _failed(self, context: sa.engine.ExceptionContext) -> None:
        exc = context.sqlalchemy_exception
        if context.is_pre_ping or not isinstance(exc, STORE_FAULTS) or getattr(self._saving, "on", False):
            return
        with self._lock:
            self.unsaved[kind_of(exc)] += 1

    def save(self) -> int:
        """Add what this process counted to the store; returns the errors added (0 when there were none: no
        store call is made). Raises the store's fault when it is still unavailable; the count is kept."""
        with self._lock:
            batch, self.unsaved = self.unsaved, Counter()
        if not batch:
            return 0
        self._saving.on = True
        try:
            with self.db.tx() as conn:
                now = self.db.now(conn)
                _add(conn, store_errors, [{"kind": k, "errors": v, "last_at": now} for k, v in sorted(batch.items())],
                     ("kind",), ("errors",), ("last_at",))
        except BaseException:
            with self._lock:
                self.unsaved.update(batch)
            raise
        finally:
            self._saving.on = False
        return sum(batch.values())


@dataclass
class Figures:
    """What the store holds, at one moment. Per outlet: the server maps outlets to channel and tier with its
    matrix."""

    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)  # (outlet, state) -> count
    queued: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)  # outlet -> pending, oldest release
    paused: int = 0
    breakers_open: int = 0
    late_urgent: int = 0
    latency: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)  # channel -> le -> (n, seconds)
    store_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    now: datetime | None = None


class Metrics:
    def __init__(self, db: Db) -> None:
        self.db = db

    def figures(self, urgent_deadline: timedelta) -> Figures:
        """Every figure in one read: a handful of grouped queries, none of them over the attempts."""
        out = Figures()
        with self.db.read() as conn:
            now = out.now = self.db.now(conn)
            # Settled deliveries, the bulk, are counted from an index alone (ix_deliveries_outlet_due): by outlet
            # and status, their tier not read (the server takes it from the matrix). Reading each row's tier
            # made a scrape of 200,000 deliveries take a second on SQLite.
            # (No WHERE on the status: with one, SQLite reads the rows through the other index.)
            for row in conn.execute(sa.select(d.c.outlet_id, d.c.status, sa.func.count().label("n"))
                                    .group_by(d.c.outlet_id, d.c.status)):
                if row.status in ("delivered", "failed", "cancelled"):
                    out.deliveries[row.outlet_id, row.status] = row.n
            state = _state(_hold(now)[0])  # the others as the delivery log shows them: pending, or held and why
            for row in conn.execute(
                sa.select(d.c.outlet_id, state.label("state"), sa.func.count().label("n"))
                .select_from(d.outerjoin(h, h.c.outlet_id == d.c.outlet_id))
                .where(d.c.status.in_(("pending", "held"))).group_by(d.c.outlet_id, state)
            ):
                out.deliveries[row.outlet_id, row.state] = out.deliveries.get((row.outlet_id, row.state), 0) + row.n
            for row in conn.execute(
                sa.select(d.c.outlet_id, sa.func.count().label("n"), sa.func.min(n.c.released_at).label("oldest"))
                .select_from(d.join(n, n.c.id == d.c.notice_id)).where(d.c.status == "pending")
                .group_by(d.c.outlet_id)
            ):
                out.queued[row.outlet_id] = (row.n, row.oldest)
            out.paused, out.breakers_open = conn.execute(sa.select(
                sa.func.count().filter(h.c.paused_at.is_not(None)),
                sa.func.count().filter(h.c.paused_at.is_(None), h.c.open_until > now),
            )).one()
            out.late_urgent = conn.execute(
                sa.select(sa.func.count()).select_from(late_urgent(now, urgent_deadline).subquery())).scalar_one()
            for row in conn.execute(sa.select(lat.c.channel, lat.c.le, sa.func.sum(lat.c.attempts).label("n"),
                                              sa.func.sum(lat.c.seconds).label("s")).group_by(lat.c.channel, lat.c.le)):
                out.latency.setdefault(row.channel, {})[row.le] = (int(row.n), float(row.s))
            out.store_errors = {row.kind: int(row.errors) for row in conn.execute(sa.select(store_errors))}
        return out
