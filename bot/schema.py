"""Schema migrations (Alembic), the same on SQLite and PostgreSQL.

A fresh, empty store is created at the newest revision when the bot first opens it. A store
at an older revision is refused until an operator runs ``debunkbot db upgrade``, so no process
ever runs against tables it does not understand.

    >>> upgrade(engine)                         # doctest: +SKIP
    >>> ensure_current(engine)                  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x6465_6275  # pg advisory lock key: one process migrates at a time


class SchemaOutdated(RuntimeError):
    """The store's schema is older (or newer) than this debunkbot's."""


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migrating(conn: Connection) -> Iterator[None]:
    """One process looks at and migrates the schema at a time (PostgreSQL: an advisory lock; two processes
    started together on an empty store then neither sees the other's half-made schema)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        conn.commit()
    try:
        yield
    finally:
        if conn.dialect.name == "postgresql":
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            conn.commit()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the store to the newest revision; returns (before, after)."""
    with engine.connect() as conn, _migrating(conn):
        from alembic import command

        before = current(conn)
        command.upgrade(_config(conn), "head")
        conn.commit()
        return before, head()


def ensure_current(engine: Engine) -> None:
    """Create an empty store; refuse one whose schema is not this version's."""
    if _is_current(engine):
        return  # the common case, without importing alembic (a tenth of a second: the CLI's read commands)
    from alembic import command

    with engine.connect() as conn, _migrating(conn):
        revision = current(conn)
        tables = set(sa.inspect(conn).get_table_names())
        if revision is None and not tables - {"alembic_version"}:
            command.upgrade(_config(conn), "head")
            conn.commit()
            return
    wanted = head()
    if revision != wanted:
        url = engine.url.render_as_string(hide_password=True)
        raise SchemaOutdated(
            f"the store at {url} has schema revision {revision or 'none'}, this debunkbot needs {wanted}: "
            "run `debunkbot db upgrade` (back the database up first)"
        )


_REVISION = re.compile(r"""^(down_)?revision\b[^=\n]*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


@cache
def _head_of_files() -> str | None:
    """The newest revision, read from the migration files' ``revision``/``down_revision`` lines (no alembic);
    None when they do not name exactly one head (then alembic decides)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, revision in _REVISION.findall(path.read_text(encoding="utf-8")):
            (parents if down else revisions).add(revision)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _is_current(engine: Engine) -> bool:
    """Whether the store's recorded revision is this version's head, with one query."""
    wanted = _head_of_files()
    if wanted is None:
        return False
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return False
        stored = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return stored == [wanted]
