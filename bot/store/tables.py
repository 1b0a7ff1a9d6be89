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
    sa.Column("expires_at", UTCDateTime, nullable=True),  # after it, its unsent deliveries are cancelled
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime, nullable=True),
    sa.Column("source", sa.String(500), nullable=False),
    # the current version (payload and content_hash are its); earlier ones are in notice_versions
    sa.Column("version", sa.Integer, nullable=False, default=1, server_default="1"),
    # retracted (撤回): its unsent deliveries are cancelled, every outlet that had it gets the retraction
    sa.Column("retracted_at", UTCDateTime, nullable=True),
    sa.Column("retracted_by", sa.String(100), nullable=True),
    sa.Column("retraction_reason", sa.Text, nullable=True),
)

# Every version of every notice (1 is the original, 2 and on its corrections, 更正): kept so an outlet that
# received an earlier one is told what changed, and for the history.
notice_versions = sa.Table(
    "notice_versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("notices.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),  # who submitted or corrected it
    sa.Column("correction_note", sa.Text, nullable=True),  # why it was corrected (2 and on)
    sa.UniqueConstraint("notice_id", "version"),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("notices.id"), nullable=False),
    sa.Column("outlet_id", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    # held (embargoed) -> pending -> delivered | failed | cancelled (cancel_reason says why: "expired", "retracted");
    # a correction or retraction puts a delivered one back to pending (see bot/store/lifecycle.py)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("cancel_reason", sa.String(200), nullable=True),
    # the claim's lane: 0 urgent, 1 normal; urgent deliveries are claimed before any normal one
    sa.Column("lane", sa.SmallInteger, nullable=False, default=1, server_default="1"),
    sa.Column("expires_at", UTCDateTime, nullable=True),  # the notice's, copied: the claim never hands it out later
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
    # the notice version this delivery carries (sends next, or sent last), and the latest the outlet received
    sa.Column("version", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("sent_version", sa.Integer, nullable=True),
    # what it carries: notice (an ordinary post) | correction (更正, to an outlet with sent_version) | retraction
    sa.Column("carries", sa.String(16), nullable=False, default="notice", server_default="notice"),
    sa.Column("origin", sa.String(16), nullable=False, default="submit", server_default="submit"),  # | backfill
    sa.UniqueConstraint("notice_id", "outlet_id"),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    # the claim takes each outlet's oldest due deliveries, outlet by outlet, urgent lane first
    sa.Index("ix_deliveries_outlet_due", "outlet_id", "status", "lane", "next_attempt_at"),
    # expiry finds the unsent deliveries of expired notices
    sa.Index("ix_deliveries_expiry", "status", "expires_at"),
    # the claim counts leases in flight: without this it reads every pending row (slow with a backlog)
    sa.Index("ix_deliveries_leased", "status", "lease_expires_at"),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False, index=True),
    sa.Column("outlet_id", sa.String(64), nullable=False),  # copied from the delivery: rate limits count by outlet
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # scheduled | manual | fetch | backfill
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | retry | failed
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("platform_code", sa.Text, nullable=True),  # the platform's own answer code (errcode, code, error_code)
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=True),  # the notice version sent
    sa.Column("carries", sa.String(16), nullable=True),  # notice | correction | retraction
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
    # not in the outlet matrix since a reload: its pending deliveries are held until a reload brings it back
    sa.Column("removed_at", UTCDateTime, nullable=True),
)

# Each reload of the outlet matrix (SIGHUP, POST /api/v1/matrix:reload): its id is the matrix generation every
# process follows, reloading its own outlets.yaml when it sees a newer one. ``changes``: the outlet ids added,
# removed and changed, as JSON; never a URL or a secret.
matrix_reloads = sa.Table(
    "matrix_reloads", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("reloaded_at", UTCDateTime, nullable=False),
    sa.Column("reloaded_by", sa.String(200), nullable=False),
    sa.Column("changes", sa.Text, nullable=False),
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

# Attempt latency as histogram buckets per channel, for /metrics: added to in the transaction that records the
# attempts, so every worker's attempts count once, and pruning old attempts never takes a count back. A row
# counts the attempts whose latency fell in its bucket alone (not cumulative).
attempt_latency = sa.Table(
    "attempt_latency", metadata,
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("le", sa.String(16), primary_key=True),  # the bucket's upper bound in seconds: "0.25", …, "+Inf"
    sa.Column("attempts", sa.BigInteger, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),  # their latencies added up
)

# Store calls that failed (locked, busy, unreachable, full), counted by the process that saw them and added
# here once the store answers again: the cluster's total, for /metrics.
store_errors = sa.Table(
    "store_errors", metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # locked | unavailable | disk_full
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("last_at", UTCDateTime, nullable=False),  # when the last of them was added
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

# Receipts (回执): what an outlet did with one version of a notice after it was delivered, one row per
# delivery x version, made when the first of these happens. ``published_at``: the outlet confirmed it
# republished (its receipt link, page or POST), ``published_url`` where (optional); ``delivered_at``: when that
# version reached the outlet, copied at confirmation (the report's time to publish). ``reminded_at``: the one
# reminder (提醒) halfway through the notice's publish_within window was claimed (set in the claiming
# transaction, so no second process sends it); ``escalated_at``: the outlet was listed in the operators' alert
# at the window's end. Retracted and expired notices get neither.
receipts = sa.Table(
    "receipts", metadata,
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.Column("published_url", sa.Text, nullable=True),
    sa.Column("published_via", sa.String(16), nullable=True),  # page | post
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("reminded_at", UTCDateTime, nullable=True),
    sa.Column("reminder_error", sa.Text, nullable=True),  # why the reminder could not be sent (it is not resent)
    sa.Column("escalated_at", UTCDateTime, nullable=True),
    sa.Index("ix_receipts_published", "published_at"),
)

# Review before release (先审后发, DEBUNKBOT_REVIEW_STAGES > 0): each notice, correction or retraction waits here as
# a draft until its stages are signed (or an operator releases an urgent one); only then is it stored in
# ``notices`` with its deliveries (bot/store/review.py). ``round`` goes up when a send-back or an edit voids the
# sign-offs: only sign-offs of the current round count.
reviews = sa.Table(
    "reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ref", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # notice | correction | retraction
    sa.Column("state", sa.String(16), nullable=False),  # draft | returned | released
    sa.Column("stages", sa.SmallInteger, nullable=False),  # sign-offs it needs (the setting when it was submitted)
    sa.Column("round", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("payload", sa.Text, nullable=True),  # the notice (its canonical JSON); a retraction: none
    sa.Column("reason", sa.Text, nullable=True),  # a retraction's reason; a correction's note
    sa.Column("content_hash", sa.String(64), nullable=False),  # SHA-256 of what the reviewers read
    sa.Column("authors", sa.Text, nullable=False),  # JSON list: who submitted or edited it (they sign no stage)
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("waiting_since", UTCDateTime, nullable=False),  # since its last sign-off, send-back or edit
    sa.Column("released_at", UTCDateTime, nullable=True),
    sa.Column("released_by", sa.String(100), nullable=True),
    sa.Column("urgent_reason", sa.Text, nullable=True),  # set when an operator released it early (紧急发布)
    sa.Index("ix_reviews_ref", "ref", "state"),
    sa.Index("ix_reviews_waiting", "state", "waiting_since"),
)

# Every sign-off (sign), send-back (return) and release of a review, kept for good (the 审批表), beside its
# audit row written in the same transaction.
review_decisions = sa.Table(
    "review_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("review_id", sa.Integer, sa.ForeignKey("reviews.id"), nullable=False, index=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("stage", sa.SmallInteger, nullable=False),  # 1..3; a release: the stages signed before it
    sa.Column("decision", sa.String(16), nullable=False),  # sign | return | release | urgent-release
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=False),  # what they saw
    sa.UniqueConstraint("review_id", "round", "stage", "decision"),
)
