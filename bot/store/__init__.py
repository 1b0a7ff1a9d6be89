"""The central store: notices, their deliveries (one per notice x outlet), every attempt, outlet health and
operator alerts, in one SQLAlchemy engine and one schema (``tables``), SQLite by default (WAL, one file),
PostgreSQL for scale-out. Every call is synchronous and short; the dispatcher makes them off the event loop.

``Store`` opens the engine and exposes the parts:

- ``store.queue``: notices in, claims under a lease, attempts recorded, embargoes released, requeues;
- ``store.lifecycle``: corrections (versions), retractions, backfill and a notice's history;
- ``store.health``: each outlet's breaker and pause, shared by every worker;
- ``store.outbox``: operator alerts, taken by each operator channel on its own;
- ``store.log``: the read-only delivery log (pages, filters, per-tier summaries, feeds);
- ``store.metrics``: the figures /metrics shows; ``store.errors``: this process's store errors, until saved;
- ``store.cluster``: the leader lock, the LISTEN dsn, SQLite's ``data_version`` look;
- ``store.matrix``: the outlet matrix's generation (reloads), and the outlets a reload took out.
- ``store.access``: the HTTP API's tokens and roles (hashes only);
- ``store.audit``: who changed what; each change's row is written in its transaction (``Actor``);
- ``store.receipts``: receipts (回执): confirmations, the one reminder and one escalation, the report.
- ``store.review``: review before release (先审后发): drafts, sign-offs, send-backs, releases.

    >>> store = Store.open("sqlite:///var/debunkbot.sqlite3")              # doctest: +SKIP
    >>> store.queue.add_notices([(notice, outlets)], source="cli")       # doctest: +SKIP
    >>> store.log.counts("cq-2026-1127-001")                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine

from bot.store.access import Access, Caller, Role
from bot.store.audit import Actor, AuditLog, AuditPage
from bot.store.cluster import Cluster
from bot.store.engine import (
    STORE_FAULTS,
    WORK_CHANNEL,
    Db,
    clean_text,
    describe_fault,
    is_disk_full,
    make_engine,
    utcnow,
)
from bot.store.health import OutletHealth
from bot.store.lifecycle import RETRACTED, Lifecycle, NotCorrectable, webhook_id
from bot.store.log import DeliveryLog, Edition, FanOut, Page, dumps
from bot.store.matrix import MatrixRecord
from bot.store.metrics import Figures, Metrics, StoreErrors
from bot.store.outbox import Outbox
from bot.store.queue import Added, AttemptRecord, Claim, Queue, RefConflict, new_message_id
from bot.store.receipts import Confirmed, Published, ReceiptRefused, Receipts, Reminder, ReportRow, Windows
from bot.store.review import Review, ReviewConflict, ReviewRefused, ReviewState
from bot.store.tables import (
    UTCDateTime,
    alert_sends,
    alerts,
    api_tokens,
    attempts,
    audit,
    deliveries,
    matrix_reloads,
    metadata,
    notices,
    outlet_health,
)

__all__ = [
    "RETRACTED", "STORE_FAULTS", "WORK_CHANNEL", "Access", "Actor", "Added", "AttemptRecord", "AuditLog", "AuditPage", "Caller",
    "Claim", "Cluster", "DeliveryLog", "Edition", "FanOut", "Figures", "Lifecycle", "MatrixRecord", "Metrics", "NotCorrectable", "Outbox", "OutletHealth", "Page", "Queue",
    "Confirmed", "Published", "ReceiptRefused", "Receipts", "Reminder", "ReportRow", "Windows",
    "RefConflict", "Review", "ReviewConflict", "ReviewRefused", "ReviewState",
    "Role", "Store", "StoreErrors", "UTCDateTime", "alert_sends", "alerts", "api_tokens", "attempts",
    "audit", "clean_text", "deliveries", "describe_fault", "dumps", "is_disk_full", "make_engine", "matrix_reloads",
    "metadata", "new_message_id", "notices", "outlet_health", "utcnow", "webhook_id",
]


class Store:
    """The engine and the parts that share it."""

    def __init__(self, engine: Engine, owner: str | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = Db(engine, owner, clock)
        self.engine = engine
        self.postgres = self.db.postgres
        self.health = OutletHealth(self.db)
        self.lifecycle = Lifecycle(self.db)
        self.queue = Queue(self.db, self.health, self.lifecycle)
        self.outbox = Outbox(self.db)
        self.log = DeliveryLog(self.db)
        self.cluster = Cluster(self.db)
        self.matrix = MatrixRecord(self.db)
        self.metrics = Metrics(self.db)
        self.errors = StoreErrors(self.db)
        self.access = Access(self.db)
        self.audit = AuditLog(self.db)
        self.receipts = Receipts(self.db)
        self.review = Review(self.db, self.queue, self.lifecycle)

    @property
    def owner(self) -> str:
        """Who this process's leases name (host-pid-random)."""
        return self.db.owner

    @owner.setter
    def owner(self, value: str) -> None:
        self.db.owner = value

    @classmethod
    def open(cls, url: str, busy_timeout: float = 30.0, clock: Callable[[], datetime] = utcnow) -> Store:
        """Open the store; an empty one is created, an outdated one refused (SchemaOutdated).

        ``busy_timeout``: seconds a SQLite call waits for a lock before it fails (and the caller backs off).
        ``clock``: this process's clock (tests inject a skewed one).
        """
        from bot.schema import ensure_current

        engine = make_engine(url, busy_timeout)
        ensure_current(engine)
        return cls(engine, clock=clock)

    def close(self) -> None:
        self.cluster.close()
        self.engine.dispose()
