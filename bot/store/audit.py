"""The audit trail: who changed what, which notice or outlet, when and from where.

Every state-changing call the API or the CLI makes passes an ``Actor``; the store part making the change
writes the audit row with ``record`` in the same transaction, so a change is never without its row and a
refused change leaves none.

    >>> actor = Actor("张三", "editor", "203.0.113.7")                       # doctest: +SKIP
    >>> store.queue.add_notices([(notice, outlets)], source="api", actor=actor)  # doctest: +SKIP
    >>> store.audit.page(action="notice.submit").rows                       # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.store.engine import Db, clean_text
from bot.store.tables import audit

LOCAL = "local"  # the role written for the CLI: whoever has the shell has the store


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a token's holder and role, and where the call came from (an address, cli@host)."""

    name: str
    role: str
    source: str

    @classmethod
    def local(cls) -> Actor:
        """The person at this machine's shell, as the CLI's changes are audited."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container's uid with no name
            user = f"uid {os.getuid()}"
        return cls(user, LOCAL, f"cli@{socket.gethostname()}")

    @classmethod
    def inbox(cls) -> Actor:
        """The daemon taking files from the drop folder (each row's detail names the file)."""
        return cls("inbox", LOCAL, f"inbox@{socket.gethostname()}")


def record(conn: Connection, actor: Actor | None, action: str, subject: str | None, now: datetime,
           **detail: Any) -> None:
    """Write one audit row in the caller's transaction (nothing when there is no actor: the daemon's own work)."""
    if actor is None:
        return
    conn.execute(audit.insert(), {  # values as parameters: no statement built per row
        "at": now, "actor": clean_text(actor.name[:100]), "role": actor.role, "action": action,
        "subject": None if subject is None else clean_text(subject[:100]), "source": clean_text(actor.source[:200]),
        "detail": json.dumps(detail, ensure_ascii=False, default=str)})


@dataclass(frozen=True)
class AuditPage:
    rows: list[dict[str, Any]]
    next: int | None  # pass as ``after`` for the next page; None: this was the last


class AuditLog:
    def __init__(self, db: Db) -> None:
        self.db = db

    def write(self, actor: Actor, action: str, subject: str | None = None, **detail: Any) -> None:
        """Audit a change made outside the store (a matrix reload), in a transaction of its own; a change to the
        store writes its row with ``record`` in its own transaction instead."""
        with self.db.tx() as conn:
            record(conn, actor, action, subject, self.db.now(conn), **detail)

    def page(self, actor: str | None = None, action: str | None = None, subject: str | None = None,
             since: datetime | None = None, after: int | None = None, limit: int | None = 100) -> AuditPage:
        """Audit rows, oldest first, ``limit`` at a time from the cursor ``after``; ``detail`` decoded."""
        query = sa.select(audit).order_by(audit.c.id)
        for column, value in ((audit.c.actor, actor), (audit.c.action, action), (audit.c.subject, subject)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if after is not None:
            query = query.where(audit.c.id > after)
        if limit is not None:
            query = query.limit(limit + 1)
        with self.db.read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        more = limit is not None and len(rows) > limit
        rows = rows[:limit] if more else rows
        for row in rows:
            row["detail"] = json.loads(row["detail"] or "{}")
        return AuditPage(rows, rows[-1]["id"] if more else None)
