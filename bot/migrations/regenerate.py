"""Write a migration for what changed in bot/store/tables.py (a developer's tool).

    .venv/bin/python -m bot.migrations.regenerate "add outlet health" 0004

Compares the tables against a scratch SQLite store at the current head and writes
bot/migrations/versions/<rev>_<message>.py. Read it before committing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from bot.schema import _config


def main(message: str, rev_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'scratch.sqlite3'}")
        with engine.connect() as conn:
            command.upgrade(_config(conn), "head")
            conn.commit()
            command.revision(_config(conn), message=message, autogenerate=True, rev_id=rev_id)
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
