"""Who may use the HTTP API: bearer tokens with a role, stored as hashes only.

Roles are ordered; each can do what the ones below it can:

- ``viewer``: read;
- ``editor``: submit and preview notices;
- ``reviewer``: sign a review stage of a notice or send it back (先审后发, ``bot.store.review``);
- ``operator``: retry deliveries, pause and resume outlets, reload the matrix, read the audit trail;
- ``admin``: manage tokens.

A token is 32 random bytes (``dbk_`` and their URL-safe base64), shown once when it is made; the store keeps
its SHA-256 only (a fast hash is right for a random secret that long: nothing to guess, nothing to stretch).

    >>> token, row = store.access.create("张三", Role.editor, actor=Actor.local())   # doctest: +SKIP
    >>> store.access.authenticate(token).role                                      # doctest: +SKIP
    <Role.editor: 20>
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from bot.roles import Role
from bot.store.audit import Actor, record
from bot.store.engine import Db, clean_text
from bot.store.tables import api_tokens

t = api_tokens
PREFIX = "dbk_"
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token: reads stay reads


@dataclass(frozen=True)
class Caller:
    """Who is calling the API, as its token says."""

    token_id: int
    name: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Access:
    def __init__(self, db: Db) -> None:
        self.db = db

    def create(self, name: str, role: Role, actor: Actor | None = None) -> tuple[str, dict[str, Any]]:
        """A new token for ``name`` with ``role``: (the token, to show once; its row, without it)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("a token's name is 1 to 100 characters: who holds it")
        token = PREFIX + secrets.token_urlsafe(32)
        with self.db.tx() as conn:
            now = self.db.now(conn)
            token_id = conn.execute(t.insert().values(
                name=clean_text(name), role=role.name, token_hash=hash_token(token), created_at=now,
            )).inserted_primary_key[0]
            record(conn, actor, "token.create", str(token_id), now, name=name, role=role.name)
        return token, self.get(token_id) or {}

    def get(self, token_id: int) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_SHOWN).where(t.c.id == token_id)).first()
        return dict(row._mapping) if row else None

    def all(self) -> list[dict[str, Any]]:
        """Every token ever made, revoked ones too: id, name, role, created_at, revoked_at, last_used_at."""
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.select(*_SHOWN).order_by(t.c.id))]

    def revoke(self, token_id: int, actor: Actor | None = None) -> dict[str, Any] | None:
        """Revoke a token: it is refused from now on. None when there is no such token or it was revoked."""
        with self.db.tx() as conn:
            now = self.db.now(conn)
            row = conn.execute(sa.select(t.c.name, t.c.role).where(t.c.id == token_id, t.c.revoked_at.is_(None))
                               ).first()
            if row is None:
                return None
            conn.execute(t.update().where(t.c.id == token_id).values(revoked_at=now))
            record(conn, actor, "token.revoke", str(token_id), now, name=row.name, role=row.role)
        return self.get(token_id)

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token names; None when it is unknown or revoked."""
        if not token.startswith(PREFIX):
            return None
        digest = hash_token(token)
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.c.id, t.c.name, t.c.role, t.c.last_used_at)
                               .where(t.c.token_hash == digest, t.c.revoked_at.is_(None))).first()
            now = self.db.now(conn)
        if row is None:
            return None
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
            with self.db.tx() as conn:
                conn.execute(t.update().where(t.c.id == row.id).values(last_used_at=now))
        return Caller(row.id, row.name, Role[row.role])


_SHOWN = (t.c.id, t.c.name, t.c.role, t.c.created_at, t.c.revoked_at, t.c.last_used_at)


