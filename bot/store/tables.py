"""The schema: one set of tables every part of the store shares (Alembic migrations follow it)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


notices = sa.Table(
    "notices", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ref", sa.String(64), nullable=False, unique=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("urgency", sa.String(16), nullable=False),
    sa.Column("publish_at", UTCDateTime, nullable=True),
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime, nullable=True),
    sa.Column("source", sa.String(500), nullable=False),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("notices.id"), nullable=False),
    sa.Column("outlet_id", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    # held (embargoed) -> pending -> delivered | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # the attempt count when the current retry schedule began: 0, or where a manual retry restarted it
    sa.Column("schedule_start", sa.Integer, nullable=False, default=0, server_default="0"),
    # what a channel keeps between tries of this delivery (JSON; wechat_mp: its draft's media_id, a publish_id);
    # never a secret
    sa.Column("channel_state", sa.Text, nullable=True),
    sa.UniqueConstraint("notice_id", "outlet_id"),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    # the claim takes each outlet's oldest due deliveries, outlet by outlet
    sa.Index("ix_deliveries_outlet_due", "outlet_id", "status", "next_attempt_at"),
    # the claim counts leases in flight: without this it reads every pending row (slow with a backlog)
    sa.Index("ix_deliveries_leased", "status", "lease_expires_at"),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False, index=True),
    sa.Column("outlet_id", sa.String(64), nullable=False),  # copied from the delivery: rate limits count by outlet
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # scheduled | manual | fetch
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | retry | failed
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("platform_code", sa.Text, nullable=True),  # the platform's own answer code (errcode, code, error_code)
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    sa.Index("ix_attempts_outlet_time", "outlet_id", "started_at"),
    sa.Index("ix_attempts_started", "started_at"),  # pruning
)

# Each outlet's health, shared by every worker and kept across restarts. A row appears with the outlet's
# first delivery. The circuit breaker opens (``open_until``) after repeated failures; a paused outlet (410, or
# failing for the whole auto-pause window) has its deliveries held until an operator resumes it; an
# outlet whose rate limit is used up waits until ``rate_limited_until``.
outlet_health = sa.Table(
    "outlet_health", metadata,
    sa.Column("outlet_id", sa.String(64), primary_key=True),
    sa.Column("paused_at", UTCDateTime, nullable=True),
    sa.Column("paused_reason", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False, default="ok", server_default="ok"),  # ok | degraded | paused
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("failing_since", UTCDateTime, nullable=True),  # first failure of the current run of failures
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
    sa.Column("open_until", UTCDateTime, nullable=True),  # breaker open: no sends before then, then one probe
    sa.Column("rate_limited_until", UTCDateTime, nullable=True),  # its rate limit is used up until then
)

# Operator alerts: an outbox, deduplicated by key, written in the transaction that saw the event.
# ``sent_at`` is set once every operator channel has taken the alert; until then ``alert_sends`` says
# which channels have it, so a failing channel is retried alone.
alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),  # exhausted | paused | recovered | urgent-late
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Index("ix_alerts_unsent", "sent_at"),
)

alert_sends = sa.Table(
    "alert_sends", metadata,
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), primary_key=True),
    sa.Column("operator_id", sa.String(64), primary_key=True),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Index("ix_alert_sends_operator", "operator_id", "sent_at"),
)

# Bearer tokens for the HTTP API: the SHA-256 of the token only (tokens are 32 random bytes, so a fast hash is
# right), never the token. A revoked token stays listed, with when.
api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),  # who holds it: a person or a system
    sa.Column("role", sa.String(16), nullable=False),  # viewer | editor | operator | admin
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
)

# Who changed what, when and from where: written in the transaction of the change, by the API and the CLI.
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),  # a token's name, or the local user for the CLI
    sa.Column("role", sa.String(16), nullable=False),  # the token's role; "local" for the CLI
    sa.Column("action", sa.String(40), nullable=False),  # notice.submit, deliveries.retry, outlet.pause, …
    sa.Column("subject", sa.String(100), nullable=True),  # a notice ref, an outlet id, a token id
    sa.Column("source", sa.String(200), nullable=False),  # the client's address, or cli@host
    sa.Column("detail", sa.Text, nullable=False, default="{}", server_default="{}"),  # JSON
    sa.Index("ix_audit_at", "at"),
    sa.Index("ix_audit_subject", "subject"),
)
