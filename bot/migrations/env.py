"""Alembic environment: the schema is bot.store.metadata; the connection comes from bot.schema."""

from __future__ import annotations

from alembic import context

from bot.store import UTCDateTime, metadata


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Migrations spell UTCDateTime as the column type it is in the database."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
