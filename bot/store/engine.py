"""What every part of the store shares: the engine, transactions, the clock, and the driver's faults.

The only module that knows the backend's dialect quirks (SQLite's BEGIN IMMEDIATE, PostgreSQL's
clock and NOTIFY); the parts write portable SQLAlchemy Core against ``bot.store.tables``.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# What the database raises when it is locked, busy, unreachable or full. The dispatcher backs off on
# these; intake refuses the submission. Nothing of the failed transaction was kept.
STORE_FAULTS: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)

T = TypeVar("T")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
WORK_CHANNEL = "debunkbot_work"  # pg NOTIFY channel: new deliveries are due


SKEW_TOLERANCE = timedelta(milliseconds=500)  # far inside the lease margin (2 s)


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


def utcnow() -> datetime:
    return datetime.now(UTC)


class Db:
    """One engine, shared by the store's parts.

    ``clock`` is this process's clock. On PostgreSQL the times that decide who may send (leases, rate
    windows, breakers, embargoes) come from the database's ``clock_timestamp()``, so machines whose
    clocks disagree still agree on them; times this process measured (an attempt's start, its next
    try) are moved onto the database's clock by the difference seen at the same moment, when that
    difference is ``SKEW_TOLERANCE`` or more (below it, the round trip's noise). SQLite is one machine:
    its clock is the process's.
    """

    def __init__(self, engine: Engine, owner: str | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.postgres = engine.dialect.name == "postgresql"
        self.clock = clock
        self._prepared: dict[Hashable, Any] = {}
        self.skew = timedelta(0)  # the database's clock minus ours, as last seen
        database = None if self.postgres else engine.url.database
        self.writers = f"{database}-writers" if database and database != ":memory:" else None

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, so writers queue rather than fail, and each in its
        turn: ``_writer_turn``)."""
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with self._writer_turn(), conn.begin():
                yield conn

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, the writers of every process and thread queue for the write lock on a lock file beside the
        store (its file name and ``-writers``; flock): each is woken the moment the one before it commits.

        SQLite's own wait for its lock (the busy timeout) sleeps 1, 2, 5 … 100 ms between looks, so a writer that
        came second could look for its turn for more than a second while the first process committed one
        transaction after another (a send-only process of `run --processes 2` waited 1.5 s for one claim). SQLite's
        lock still guards the store, and its busy timeout still bounds a wait behind a writer that does not queue
        here (another program); where the lock file cannot be opened, writers wait that way alone."""
        turn = None
        if self.writers is not None:
            with suppress(OSError):
                turn = os.open(self.writers, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if turn is None:
            yield
            return
        try:
            fcntl.flock(turn, fcntl.LOCK_EX)  # released when closed, after the commit
            yield
        finally:
            os.close(turn)

    def read(self) -> Connection:
        return self.engine.connect()

    def now(self, conn: Connection) -> datetime:
        """The store's time now: the database's clock on PostgreSQL, this process's on SQLite."""
        mine = self.clock()
        if not self.postgres:
            return mine
        theirs: datetime = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        skew = theirs - mine
        self.skew = skew if abs(skew) >= SKEW_TOLERANCE else timedelta(0)
        return theirs.astimezone(UTC)

    def to_store_time(self, when: datetime | None) -> datetime | None:
        """A time this process measured, on the store's clock."""
        return None if when is None else when + self.skew

    def prepared(self, key: Hashable, build: Callable[[], T]) -> T:
        """A statement this store runs again and again, built once by ``build``, its values bound by name at each
        execution: SQLAlchemy takes longer to build and key a large statement (a claim, a record) than SQLite takes
        to run it, and it did so inside the write transaction every other writer waits for."""
        if key not in self._prepared:
            self._prepared[key] = build()
        return self._prepared[key]

    def among(self, column: Any, values: Collection[str] | Collection[int]) -> Any:
        """``column IN values``. On SQLite the values go as one JSON array (``json_each``), not one parameter
        each: a claim names every outlet of the matrix, and a thousand parameters were a third of its CPU (a
        list of parameters is also compiled again for each length). Unique: one statement may hold several."""
        return self._among(column, sa.bindparam("among", self.among_value(values), unique=True,
                                                expanding=self.postgres, type_=None if self.postgres else sa.Text))

    def among_param(self, column: Any, name: str) -> Any:
        """``among`` for a statement built once: its values are bound at execution, as ``name``: ``among_value``."""
        return self._among(column, sa.bindparam(name, expanding=self.postgres,
                                                type_=None if self.postgres else sa.Text))

    def among_value(self, values: Collection[str] | Collection[int]) -> Any:
        return list(values) if self.postgres else json.dumps(list(values))

    def _among(self, column: Any, values: Any) -> Any:
        if self.postgres:
            return column.in_(values)
        return column.in_(sa.select(sa.func.json_each(values).table_valued("value").c.value))

    def notify(self, conn: Connection) -> None:
        """Wake idle workers at once (PostgreSQL NOTIFY, sent on commit); elsewhere they poll."""
        if self.postgres:
            conn.execute(sa.text(f"NOTIFY {WORK_CHANNEL}"))


def insert_new(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str | Sequence[str]) -> None:
    """Insert rows whose ``key`` is not there yet, and skip the rest, even when another worker inserts the
    same key at the same moment (INSERT … ON CONFLICT DO NOTHING, on SQLite and PostgreSQL)."""
    keys = [key] if isinstance(key, str) else list(key)
    rows = list({tuple(r[k] for k in keys): r for r in rows}.values())
    if not rows:
        return
    conn.execute(_inserting_new(conn.dialect.name, table, tuple(keys)), rows)


@functools.cache
def _inserting_new(dialect: str, table: sa.Table, keys: tuple[str, ...]) -> Any:
    return upsert(dialect, table).on_conflict_do_nothing(index_elements=list(keys))


def upsert(dialect: str, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT, in the ``dialect`` of the backend (only that one is imported:
    PostgreSQL's costs a SQLite process 23 ms)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def clean_text(text: str | None) -> str | None:
    """Text any backend stores: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8) become U+FFFD."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


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
