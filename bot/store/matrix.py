"""The outlet matrix as the store knows it: the generation every process follows, and which outlets a reload
took out (their pending deliveries are held, "removed from matrix", until a reload brings them back).

    >>> generation = store.matrix.reloaded(["city-cqrb", "dist-yuzhong"], by=Actor("张三", "operator", "10.0.0.5"),
    ...                                    changes={"added": ["dist-yuzhong"], "removed": [], "changed": []})  # doctest: +SKIP
    >>> store.matrix.generation()                                        # doctest: +SKIP
    7
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.store.audit import Actor, record
from bot.store.engine import Db
from bot.store.tables import matrix_reloads, outlet_health

h = outlet_health


class MatrixRecord:
    def __init__(self, db: Db) -> None:
        self.db = db

    def generation(self) -> int:
        """The newest reload's number; 0 before the first reload. A cheap look every process takes often."""
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.max(matrix_reloads.c.id))).scalar_one_or_none() or 0)

    def reloaded(self, outlet_ids: Collection[str], by: Actor, changes: Mapping[str, Sequence[str]]) -> int:
        """Record a reload to a matrix of ``outlet_ids``, in one transaction: the next generation, ``adopt``'s
        marks and the audit row of who asked. Returns the generation every process now follows."""
        with self.db.tx() as conn:
            now = self.db.now(conn)
            generation = int(conn.execute(matrix_reloads.insert().values(
                reloaded_at=now, reloaded_by=f"{by.name} ({by.source})"[:200],
                changes=json.dumps(dict(changes), ensure_ascii=False),
            )).inserted_primary_key[0])
            record(conn, by, "matrix.reload", None, now, generation=generation, **changes)
            if self._mark(conn, set(outlet_ids), now):
                self.db.notify(conn)  # deliveries of an outlet that came back are due again
        return generation

    def adopt(self, outlet_ids: Collection[str]) -> None:
        """The matrix has exactly ``outlet_ids`` (a daemon starting): an outlet the store knows and the matrix
        lacks is removed, one that is in it again is back."""
        with self.db.tx() as conn:
            if self._mark(conn, set(outlet_ids), self.db.now(conn)):
                self.db.notify(conn)

    def removed(self) -> dict[str, datetime]:
        """outlet id -> when a reload took it out of the matrix."""
        with self.db.read() as conn:
            return dict(conn.execute(  # type: ignore[arg-type]
                sa.select(h.c.outlet_id, h.c.removed_at).where(h.c.removed_at.is_not(None))).all())

    def history(self, limit: int = 20) -> list[dict[str, object]]:
        """The newest reloads first: generation, when, by whom, what changed."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(matrix_reloads).order_by(matrix_reloads.c.id.desc()).limit(limit)).all()
        return [{"generation": r.id, "reloaded_at": r.reloaded_at, "reloaded_by": r.reloaded_by,
                 **json.loads(r.changes)} for r in rows]

    @staticmethod
    def _mark(conn: Connection, present: set[str], now: datetime) -> int:
        """Every outlet with deliveries has a health row: mark those not ``present`` removed, clear the mark of
        those present. Returns how many came back."""
        rows = conn.execute(sa.select(h.c.outlet_id, h.c.removed_at)).all()
        gone = [r.outlet_id for r in rows if r.outlet_id not in present and r.removed_at is None]
        back = [r.outlet_id for r in rows if r.outlet_id in present and r.removed_at is not None]
        for ids, value in ((gone, now), (back, None)):
            for start in range(0, len(ids), 500):  # SQLite caps the parameters of one statement
                conn.execute(h.update().where(h.c.outlet_id.in_(ids[start:start + 500])).values(removed_at=value))
        return len(back)
