"""Schema migrations: the same Alembic history on SQLite and PostgreSQL, outdated stores refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.schema import SchemaOutdated, head
from bot.store import Store, make_engine, metadata


def test_a_fresh_store_is_created_at_the_newest_revision_matching_the_code(database_url: str) -> None:
    store = Store.open(database_url)
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head()
        # the migrations build exactly the tables bot/store.py describes
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.close()


def test_an_outdated_store_is_refused_until_db_upgrade(database_url: str) -> None:
    Store.open(database_url).close()
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaOutdated, match=r"revision 0000, this debunkbot needs .*debunkbot db upgrade"):
        Store.open(database_url)

    env = os.environ | {"DEBUNKBOT_DATABASE_URL": database_url}
    refused = subprocess.run([sys.executable, "-m", "bot", "log"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "db upgrade" in refused.stderr
    # a store with tables but no history (made by hand or by an old build) is refused too
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
    with pytest.raises(SchemaOutdated, match="revision none"):
        Store.open(database_url)
    engine.dispose()


def test_db_upgrade_creates_an_empty_store_on_either_backend(database_url: str) -> None:
    env = os.environ | {"DEBUNKBOT_DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-m", "bot", "db", "upgrade"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"schema at {head()}" in done.stdout
    engine = make_engine(database_url)
    assert {"notices", "deliveries", "attempts"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()
    again = subprocess.run([sys.executable, "-m", "bot", "db", "upgrade"], env=env, capture_output=True, text=True)
    assert "already current" in again.stdout


def test_a_store_at_0001_with_pending_deliveries_upgrades_and_they_are_claimed(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from alembic import command

    from bot.schema import _config, upgrade

    engine = make_engine(database_url)
    with engine.connect() as conn:
        command.upgrade(_config(conn), "0001")
        conn.commit()
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO notices (id, ref, content_hash, payload, title, urgency, submitted_at, "
                             "released_at, source) VALUES (1, 'r', 'h', '{}', 't', 'normal', :now, :now, 'old')"),
                     {"now": now})
        conn.execute(sa.text("INSERT INTO deliveries (notice_id, outlet_id, tier, status, message_id, attempts, "
                             "next_attempt_at, updated_at, schedule_start) "
                             "VALUES (1, 'o1', 'city', 'pending', 'msg_1', 0, :now, :now, 0)"), {"now": now})
    assert upgrade(engine) == ("0001", head())
    engine.dispose()
    store = Store.open(database_url)
    (claim,) = store.queue.claim(10, 2, timedelta(seconds=30))  # its outlet got its health row: the claim sees it
    assert claim.outlet_id == "o1"
    store.close()
