"""The store: atomic intake, leases, per-outlet limits, embargo release."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from bot.model import Notice
from bot.outlets import Outlet
from bot.store import AttemptRecord, RefConflict, Store

OUTLETS = [Outlet(id=f"o{i}", name=f"站点{i}", tier="district", channel="webhook", url="https://x.example/",
                  secret_env="S") for i in range(5)]
LEASE = timedelta(seconds=30)


def test_a_notice_and_its_deliveries_are_stored_together_or_not_at_all(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.add_notices([(make_notice(ref="kept"), OUTLETS)], source="t")
    with pytest.raises(RefConflict):
        store.add_notices([(make_notice(ref="new"), OUTLETS), (make_notice(ref="kept", title="改了"), OUTLETS)], source="t")
    assert store.notice("new") is None
    assert len(store.delivery_log()) == 5


def test_each_delivery_has_its_own_stable_message_id(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.add_notices([(make_notice(), OUTLETS)], source="t")
    ids = [r["message_id"] for r in store.delivery_log()]
    assert len(set(ids)) == 5 and all(i.startswith("msg_") for i in ids)


def test_a_claim_respects_the_per_outlet_limit_across_notices(store: Store, make_notice: Callable[..., Notice]) -> None:
    for n in range(4):
        store.add_notices([(make_notice(ref=f"n{n}", title=f"第{n}条"), OUTLETS[:2])], source="t")
    first = store.claim_due(100, per_outlet=2, lease=LEASE)
    assert sorted(c.outlet_id for c in first) == ["o0", "o0", "o1", "o1"]
    # in flight already counts against the limit
    assert store.claim_due(100, per_outlet=2, lease=LEASE) == []
    assert len(store.claim_due(100, per_outlet=3, lease=LEASE)) == 2


def test_an_expired_lease_is_claimed_again_after_a_crash(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.add_notices([(make_notice(), OUTLETS[:1])], source="t")
    now = datetime.now(UTC)
    (claim,) = store.claim_due(10, 2, LEASE, now=now)
    assert store.claim_due(10, 2, LEASE, now=now + timedelta(seconds=29)) == []
    crashed_owner = store.owner
    store.owner = "another-bot"
    (again,) = store.claim_due(10, 2, LEASE, now=now + timedelta(seconds=31))
    assert again.delivery_id == claim.delivery_id and again.message_id == claim.message_id
    # the crashed owner's late answer does not overwrite the new owner's claim
    store.owner = crashed_owner
    store.record_attempts([AttemptRecord(claim.delivery_id, claim.outlet_id, 1, now, 5.0, "failed", 400, "HTTP 400")])
    assert store.delivery_log()[0]["status"] == "pending"
    assert len(store.attempt_log()) == 1


def test_recorded_attempts_move_deliveries_on(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.add_notices([(make_notice(), OUTLETS[:3])], source="t")
    now = datetime.now(UTC)
    a, b, c = store.claim_due(10, 2, LEASE, now=now)
    store.record_attempts([
        AttemptRecord(a.delivery_id, a.outlet_id, 1, now, 12.5, "delivered", 200),
        AttemptRecord(b.delivery_id, b.outlet_id, 1, now, 30.0, "retry", 503, "HTTP 503", next_attempt_at=now + timedelta(hours=1)),
        AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 1.0, "failed", 404, "HTTP 404"),
    ])
    rows = {r["outlet"]: r for r in store.delivery_log()}
    assert rows["o0"]["status"] == "delivered" and rows["o0"]["delivered_at"] is not None
    assert rows["o1"]["status"] == "pending" and rows["o1"]["next_attempt_at"] == now + timedelta(hours=1)
    assert rows["o2"]["status"] == "failed" and rows["o2"]["error"] == "HTTP 404"
    assert store.claim_due(10, 2, LEASE, now=now + timedelta(minutes=59)) == []
    assert [c.attempt for c in store.claim_due(10, 2, LEASE, now=now + timedelta(hours=1))] == [2]


def test_an_embargoed_notice_is_held_until_its_publish_time(store: Store, make_notice: Callable[..., Notice]) -> None:
    now = datetime.now(UTC)
    notice = make_notice(publish_at=(now + timedelta(hours=2)).isoformat())
    store.add_notices([(notice, OUTLETS[:2])], source="t", now=now)
    assert {r["status"] for r in store.delivery_log()} == {"held"}
    assert store.claim_due(10, 2, LEASE, now=now + timedelta(hours=3)) == []
    assert store.release_due(now=now + timedelta(hours=1)) == 0
    assert store.release_due(now=now + timedelta(hours=2, seconds=1)) == 2
    assert len(store.claim_due(10, 2, LEASE, now=now + timedelta(hours=2, seconds=1))) == 2


def test_given_back_claims_are_claimable_at_once(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.add_notices([(make_notice(), OUTLETS[:2])], source="t")
    assert len(store.claim_due(10, 2, LEASE)) == 2
    assert store.release_claims() == 2
    assert len(store.claim_due(10, 2, LEASE)) == 2


def test_a_rate_limited_outlet_gets_no_more_than_its_window_allows_and_waits_for_it(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    from channels import RateLimit

    robot = OUTLETS[0]
    limits = {robot.id: (RateLimit.parse("20/min"),)}
    store.add_notices([(make_notice(ref=f"n{i}", title=f"第{i}条"), [robot]) for i in range(30)], source="t")
    now = datetime.now(UTC)
    sent = 0
    for second in range(0, 60, 1):  # a busy minute, claiming and answering as fast as we can
        at = now + timedelta(seconds=second)
        claims = store.claim_due(100, per_outlet=5, lease=LEASE, now=at, rate_limits=limits)
        store.record_attempts([AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, at, 1.0, "delivered", 200)
                               for c in claims], now=at)
        sent += len(claims)
    assert sent == 20
    # the other ten wait for the window, and go out when it frees
    waiting = {r["next_attempt_at"] for r in store.delivery_log(status="pending")}
    assert len(store.delivery_log(status="pending")) == 10
    assert min(waiting) >= now + timedelta(seconds=60)
    later = now + timedelta(seconds=61)
    assert len(store.claim_due(100, per_outlet=20, lease=LEASE, now=later, rate_limits=limits)) == 10


def test_rate_limits_parse_the_way_operators_write_them() -> None:
    import pytest as _pytest

    from channels import RateLimit

    assert RateLimit.parse("20/min") == RateLimit(20, 60)
    assert RateLimit.parse("5/s") == RateLimit(5, 1)
    assert RateLimit.parse("100 / 10min") == RateLimit(100, 600)
    with _pytest.raises(ValueError, match="should look like"):
        RateLimit.parse("fast")


def test_a_write_from_another_process_is_seen_by_the_next_look(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    if store.postgres:
        pytest.skip("SQLite's data_version; PostgreSQL wakes workers by LISTEN/NOTIFY (tests/test_dispatch.py)")
    assert store.changed_since_last_look() is False  # the first look only takes the baseline
    assert store.changed_since_last_look() is False
    other = Store.open(str(store.engine.url))  # another process's connection
    try:
        other.add_notices([(make_notice(), OUTLETS)], source="t")
    finally:
        other.close()
    assert store.changed_since_last_look() is True
    assert store.changed_since_last_look() is False


def test_requeue_makes_failed_deliveries_due_with_a_fresh_schedule_and_a_dry_run_changes_nothing(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.add_notices([(make_notice(), OUTLETS[:3])], source="t")
    now = datetime.now(UTC)
    claims = store.claim_due(10, 2, LEASE, now=now)
    store.record_attempts([AttemptRecord(c.delivery_id, c.outlet_id, 1, now, 5.0,
                                         "delivered" if c.outlet_id == "o0" else "failed", 500, "HTTP 500")
                           for c in claims])
    would = store.requeue(outlet_id="o1", dry_run=True)
    assert [r["outlet"] for r in would] == ["o1"] and store.counts() == {"delivered": 1, "failed": 2}
    assert {r["outlet"] for r in store.requeue()} == {"o1", "o2"}
    assert store.counts() == {"delivered": 1, "pending": 2}
    again = store.claim_due(10, 2, LEASE)
    assert {(c.attempt, c.schedule_start, c.trigger) for c in again} == {(2, 1, "manual")}
    assert store.requeue() == []  # nothing failed any more


def test_requeue_since_takes_only_deliveries_that_failed_after_that_time(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    early = datetime.now(UTC) - timedelta(hours=3)
    store.add_notices([(make_notice(), OUTLETS[:2])], source="t", now=early)
    (c0, c1) = store.claim_due(10, 2, LEASE, now=early)
    store.record_attempts([AttemptRecord(c0.delivery_id, "o0", 1, early, 5.0, "failed", 400, "HTTP 400")], now=early)
    store.record_attempts([AttemptRecord(c1.delivery_id, "o1", 1, early, 5.0, "failed", 400, "HTTP 400")])
    assert [r["outlet"] for r in store.requeue(since=early + timedelta(hours=1))] == ["o1"]


def test_pruning_deletes_old_attempts_and_keeps_notices_and_delivery_outcomes(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    old = datetime.now(UTC) - timedelta(days=100)
    store.add_notices([(make_notice(), OUTLETS[:1])], source="t", now=old)
    (claim,) = store.claim_due(10, 2, LEASE, now=old)
    store.record_attempts([AttemptRecord(claim.delivery_id, "o0", 1, old, 5.0, "delivered", 200)], now=old)
    assert store.prune_attempts(datetime.now(UTC) - timedelta(days=90)) == 1
    assert store.attempt_log() == []
    (row,) = store.delivery_log()
    assert (row["status"], row["attempts"], row["http_status"]) == ("delivered", 1, 200)
    assert store.notice("cq-test-001") is not None


def test_alerts_are_raised_once_per_key(store: Store, make_notice: Callable[..., Notice]) -> None:
    store.add_notices([(make_notice(urgency="urgent"), OUTLETS[:2])], source="t")
    later = datetime.now(UTC) + timedelta(minutes=11)
    assert store.flag_late_urgent(timedelta(minutes=10), now=later) == 1
    assert store.flag_late_urgent(timedelta(minutes=10), now=later) == 0  # raised already
    (alert,) = store.unsent_alerts()
    assert alert["kind"] == "urgent-late" and "2 outlet(s) without it" in alert["text"]
    store.mark_alerts_sent([alert["id"]])
    assert store.unsent_alerts() == []
    assert store.flag_late_urgent(timedelta(minutes=10), now=later) == 0
