"""Cluster coordination: who leads the cluster-wide jobs, and how a process hears of others' writes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.store.engine import Db

LEADER_LOCK = 0x6465_6273  # pg advisory lock key ("debs")


class Cluster:
    def __init__(self, db: Db) -> None:
        self.db = db
        self._leader: Connection | None = None
        self._watch: Any = None  # the connection changed_since_last_look keeps (SQLite)
        self._seen_version: int | None = None

    def lead(self) -> bool:
        """Whether this process runs the cluster-wide jobs (inbox, embargoes, alerts, pruning).

        On PostgreSQL the leader holds a session advisory lock on a connection of its own: if
        it dies, the lock goes with its connection and the next process to ask takes over.
        SQLite is one process on one machine: it always leads.
        """
        if not self.db.postgres:
            return True
        if self._leader is not None:
            try:
                self._leader.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:  # the connection, and with it the lock, is gone
                self._leader.close()
                self._leader = None
        # autocommit: the leader's connection never sits idle in a transaction (that would hold back VACUUM)
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        won = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar_one()
        if won:
            self._leader = conn
        else:
            conn.close()
        return bool(won)

    def listen_dsn(self) -> str | None:
        """A libpq connection string for LISTEN, on PostgreSQL."""
        if not self.db.postgres:
            return None
        return self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def changed_since_last_look(self) -> bool:
        """Whether another connection may have committed since the previous call; False on the first.

        The dispatcher's cheap wake-up for work written by other processes (``debunkbot submit``).
        SQLite: ``PRAGMA data_version`` on a connection kept for this, microseconds per look; it also
        changes on this process's own writes, which costs the dispatcher an empty claim at most.
        Other databases: always False, and the poll every scan_interval stands (PostgreSQL: LISTEN/NOTIFY).
        """
        if self.db.engine.dialect.name != "sqlite":
            return False
        if self._watch is None:
            self._watch = self.db.engine.raw_connection()
        cursor = self._watch.cursor()
        try:
            version = cursor.execute("PRAGMA data_version").fetchone()[0]
        finally:
            cursor.close()
        changed = self._seen_version is not None and version != self._seen_version
        self._seen_version = version
        return changed

    def close(self) -> None:
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
